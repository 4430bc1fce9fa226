"""Overfit sanity on real CT: a small model trained on ts_abdomen alone must find its liver again.

If this fails, something between reading, reorienting, normalising, cropping, training
and pasting back is broken, whatever the phantom tests say.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from organseg.config import resolve_config
from organseg.dataset import discover_dataset
from organseg.io import read_image, read_label
from organseg.metrics import dice_per_class
from organseg.open_model import open_segmenter
from organseg.runs import run_training

OVERFIT = [
    "validation_cases=0",
    "augment.enabled=false",
    "crop.margin_mm=30",
    "stage1_target=foreground",
    "stage1.grid=[32,32,32]",
    "stage1.epochs=40",
    "stage1.batch_size=1",
    "stage1.learning_rate=0.01",
    "stage1.lr_halving_epochs=30",
    "stage1.val_every=20",
    "stage2.grid=[64,64,64]",
    "stage2.net.widths=[8,16,32,64]",
    "stage2.epochs=150",
    "stage2.batch_size=1",
    "stage2.learning_rate=0.01",
    "stage2.lr_halving_epochs=100",
    "stage2.val_every=50",
]


def test_model_trained_on_one_real_case_segments_its_liver(real_data: Path, tmp_path: Path) -> None:
    images, labels = tmp_path / "imagesTr", tmp_path / "labelsTr"
    images.mkdir()
    labels.mkdir()
    shutil.copy(real_data / "ts_abdomen" / "image.nii.gz", images / "abdomen_0000.nii.gz")
    shutil.copy(real_data / "ts_abdomen" / "label_flare13.nii.gz", labels / "abdomen.nii.gz")
    config = resolve_config("tiny", overrides=OVERFIT)
    run_training(discover_dataset(None, images=images, labels=labels), tmp_path / "run", config)

    image = read_image(images / "abdomen_0000.nii.gz")
    truth = read_label(labels / "abdomen.nii.gz").array
    prediction = open_segmenter(tmp_path / "run", device="cpu").predict(image).array
    dice = dice_per_class(prediction, truth, [1, 3])
    assert dice[1] >= 0.9, dice  # liver
    # The spleen too. The left kidney, a tenth of the liver's size, is learnt in some runs of
    # these 150 steps and not in others (float rounding alone decides), so it is not asserted.
    assert dice[3] >= 0.8, dice
