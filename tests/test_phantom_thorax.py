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


def test_a_thorax_abdomen_field_shows_the_lungs_to_their_apices_and_no_organ_there_but_aorta_and_esophagus():
    for seed in range(3):
        image, labels = generate_case(seed, SHAPE, reorient=False, drop_organs=False, field_of_view="thorax-abdomen")
        array, labels, step = image.array, labels.array, image.geometry.spacing_mm[2]
        kidneys = np.mean(_heights_mm(labels, step, ID["right kidney"]))
        top = (SHAPE[2] - 1) * step
        assert top - kidneys > 280, seed  # up to the lung apices, twelve vertebrae above the kidneys' hila
        upper = array[:, :, -SHAPE[2] // 10 :]
        body = upper > -950
        assert (upper[body] < -700).mean() > 0.35, seed  # lung fills the upper chest
        chest = labels[:, :, int((kidneys + 230) / step) :]  # above the heart's top
        assert set(np.unique(chest)) == {0, ID["aorta"], ID["esophagus"]}, seed
        assert _heights_mm(labels, step, ID["esophagus"]).max() == top  # on through the thoracic inlet
        aorta = _heights_mm(labels, step, ID["aorta"])
        assert aorta.max() - kidneys > 250, seed  # up to the arch
        components, count = cc3d.connected_components(labels == ID["aorta"], return_N=True)
        assert np.bincount(components.ravel())[1:].max() > 0.98 * len(aorta), seed  # one vessel, arch and all


def test_the_upper_abdomen_of_a_seed_stays_as_it_was_and_thorax_fields_mix(tmp_path) -> None:
    plain, plain_labels = generate_case(4, (64, 64, 40), reorient=False)
    again, again_labels = generate_case(4, (64, 64, 40), reorient=False)
    assert np.array_equal(plain.array, again.array) and np.array_equal(plain_labels.array, again_labels.array)
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
    assert (
        main(["phantom", str(tmp_path / "b"), "--labeled", "1", "--fov", "thorax-abdomen", "--shape", "32", "32", "40"])
        == 0
    )
