"""Thorax-abdomen fields of view: the chest above the abdomen in phantoms."""

from __future__ import annotations

import json

import cc3d
import numpy as np

from organseg.cli import main
from organseg.labels import FLARE22
from organseg.phantom import generate_case, write_dataset

ID = {name: label for label, name in FLARE22.names}
SHAPE = (72, 72, 120)


def _heights_mm(labels: np.ndarray, spacing_z: float, label: int) -> np.ndarray:
    return np.argwhere(labels == label)[:, 2] * spacing_z


def _lung_share(section: np.ndarray) -> float:
    body = section > -950
    return float((section[body] < -700).mean())


def test_a_thorax_abdomen_field_shows_the_lungs_to_their_apices_and_no_organ_there_but_aorta_and_esophagus():
    for seed in range(3):
        image, labels = generate_case(seed, SHAPE, reorient=False, drop_organs=False, field_of_view="thorax-abdomen")
        array, labels, step = image.array, labels.array, image.geometry.spacing_mm[2]
        kidneys = np.mean(_heights_mm(labels, step, ID["right kidney"]))
        top = (SHAPE[2] - 1) * step
        assert top - kidneys > 280, seed  # up to the lung apices, twelve vertebrae above the kidneys' hila
        lung_share = [_lung_share(array[:, :, k]) for k in (SHAPE[2] - 3, int((kidneys + 200) / step))]
        assert 0.05 < lung_share[0] < 0.7 * lung_share[1], (seed, lung_share)  # apices narrower than the chest below
        chest = labels[:, :, int((kidneys + 230) / step) :]  # above the heart's top
        assert set(np.unique(chest)) == {0, ID["aorta"], ID["esophagus"]}, seed
        assert _heights_mm(labels, step, ID["esophagus"]).max() == top  # on through the thoracic inlet
        aorta = _heights_mm(labels, step, ID["aorta"])
        assert aorta.max() - kidneys > 250, seed  # up to the arch
        components, count = cc3d.connected_components(labels == ID["aorta"], return_N=True)
        assert np.bincount(components.ravel())[1:].max() > 0.98 * len(aorta), seed  # one vessel, arch and all


def test_the_great_vessels_run_in_front_of_the_spine_and_the_trachea() -> None:
    image, labels = generate_case(0, SHAPE, reorient=False, drop_organs=False, field_of_view="thorax-abdomen")
    array, labels, step = image.array, labels.array, image.geometry.spacing_mm
    kidneys = np.mean(_heights_mm(labels, step[2], ID["right kidney"]))
    chest = slice(int((kidneys + 240) / step[2]), int((kidneys + 270) / step[2]))  # below the arch, above the heart
    aorta = np.argwhere(labels[:, :, chest] == ID["aorta"])
    midline = array[SHAPE[0] // 2 - 3 : SHAPE[0] // 2 + 3, :, chest]
    inside = np.flatnonzero((midline > -500).any(axis=(0, 2)))  # front to back of the body
    airway = np.argwhere(midline < -980)
    airway = airway[(airway[:, 1] > inside.min()) & (airway[:, 1] < inside.max())]  # the trachea
    assert len(aorta) and len(airway)
    front, back = aorta[:, 1].min() * step[1], aorta[:, 1].max() * step[1]
    trachea = np.median(airway[:, 1]) * step[1]
    assert front < trachea - 15 and back > trachea + 15, (front, trachea, back)  # ascending and descending aorta
    # The superior vena cava: an unlabeled vessel right of the ascending aorta, at the vein's intensity.
    ascending = aorta[aorta[:, 1] * step[1] < trachea]
    right_of_it = np.zeros(labels[:, :, chest].shape, bool)  # and within 60 mm of the midline, off the ribs
    right_of_it[int(SHAPE[0] / 2 - 60 / step[0]) : int(ascending[:, 0].min())] = True
    vein = (labels[:, :, chest] == 0) & (array[:, :, chest] > 100) & (array[:, :, chest] < 220) & right_of_it
    assert vein[:, : SHAPE[1] // 2].sum() * np.prod(step) > 2000  # mm3, in front


def test_the_chest_leaves_the_abdomen_of_a_seed_as_it_was_and_mixes_in(tmp_path) -> None:
    # The chest draws from a stream of its own: the organs below it keep their shape.
    thorax, thorax_labels = generate_case(4, SHAPE, reorient=False, drop_organs=False, field_of_view="thorax-abdomen")
    upper, upper_labels = generate_case(4, SHAPE, reorient=False, drop_organs=False)
    for organ in ("liver", "spleen", "right kidney", "left kidney", "pancreas"):
        volumes = [
            (lab.array == ID[organ]).sum() * np.prod(img.geometry.spacing_mm)
            for img, lab in ((thorax, thorax_labels), (upper, upper_labels))
        ]
        assert abs(volumes[0] / volumes[1] - 1) < 0.15, (organ, volumes)
    root = write_dataset(
        tmp_path / "a", labeled=9, unlabeled=0, test=0, seed=1, field_of_view="mixed", shape=(32, 32, 24)
    )
    fields = json.loads((root / "dataset.json").read_text())["fields_of_view"]
    assert "thorax-abdomen" in fields.values()
    arguments = [
        "phantom",
        str(tmp_path / "b"),
        "--labeled",
        "1",
        "--fov",
        "thorax-abdomen",
        "--shape",
        "32",
        "32",
        "40",
    ]
    assert main(arguments) == 0
