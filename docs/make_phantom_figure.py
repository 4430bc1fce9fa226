"""Draw docs/phantom.png: the first labeled case of `organseg phantom OUT --labeled 1 --seed 0`.

Run from the repository root: python docs/make_phantom_figure.py
"""

import tempfile
from pathlib import Path

from organseg.io import read_image, read_label
from organseg.phantom import write_dataset
from organseg.pictures import save_overlay_png

with tempfile.TemporaryDirectory() as folder:
    root = write_dataset(Path(folder) / "phantom", labeled=1, unlabeled=0, test=0, seed=0)
    image = read_image(root / "imagesTr" / "phantom_001_0000.nii.gz")
    labels = read_label(root / "labelsTr" / "phantom_001.nii.gz")
    size = "x".join(str(n) for n in image.geometry.shape)
    spacing = "x".join(f"{s:.1f}" for s in image.geometry.spacing_mm)
    title = f"organseg phantom --seed 0, phantom_001: {size} voxels of {spacing} mm (header axis order)"
    save_overlay_png(image, labels, Path(__file__).parent / "phantom.png", title=title)
