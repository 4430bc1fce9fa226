"""Phantoms that join a dataset's labeled cases in training (`synthetic.phantoms`).

A team with few real labeled scans, or none, trains on them together with generated
phantoms of every contrast phase and field of view (organseg.phantom): the phantoms
teach the organs' shapes and places, the real cases the look of the team's scanners.
Every batch takes `synthetic.share` of its samples from the phantoms (organseg.batches),
so neither kind crowds the other out however many there are of each.

The phantoms are written once, atomically, to a folder of the run (nnU-Net layout, with
`settings.json` saying what made them) and reused while those settings stay the same.
Their label maps carry the dataset's label ids, organs matched by name (any spelling
organseg.labels reads): a phantom organ the dataset does not list is background there,
as in the dataset's own label maps; a dataset organ no phantom draws is declared
unannotated in the phantoms (partial labels), so they never teach it as background.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from organseg.atomic import atomic_folder, write_json
from organseg.config import Config
from organseg.dataset import Case
from organseg.errors import InputError
from organseg.io import read_label, write_label
from organseg.labels import FLARE22, LabelSet, organ_code
from organseg.phantom import write_dataset

# Case ids of the phantoms: apart from any case id of the dataset's.
PREFIX = "synthetic_"
# Keeps the phantoms' seeds apart from those of a phantom dataset of the same seed.
SEED_KEY = 7
SETTINGS = "settings.json"


def synthetic_cases(folder: Path, config: Config, label_set: LabelSet) -> list[Case]:
    """The run's phantoms as labeled cases, written to `folder` unless already there; [] for none."""
    if config.synthetic.phantoms == 0:
        return []
    annotated = phantom_annotated(label_set)
    if annotated == ():
        names = ", ".join(name for _, name in label_set.names)
        raise InputError(
            f"synthetic.phantoms: the phantoms draw none of this dataset's organs ({names}); "
            "they only draw the 13 FLARE22 organs, so set synthetic.phantoms=0"
        )
    folder = Path(folder)
    settings = _settings(config, label_set)
    if not _is_current(folder, settings):
        _write(folder, settings, label_set)
    return [
        Case(f"{PREFIX}{label.name.removesuffix('.nii.gz')}", _image_of(label), label, annotated)
        for label in sorted((folder / "labelsTr").glob("*.nii.gz"))
    ]


def phantom_seed(config: Config) -> int:
    """The seed of a run's phantoms: fixed by the run's seed, unlike any phantom dataset's."""
    return int(np.random.SeedSequence(config.seed, spawn_key=(SEED_KEY,)).generate_state(1)[0] % 2**31)


def label_lookup(label_set: LabelSet) -> np.ndarray:
    """(256,) table from FLARE22 ids (the phantoms') to `label_set`'s ids; 0 for organs it does not list."""
    table = np.zeros(256, dtype=np.uint16)
    ids = {_organ_key(name): label for label, name in label_set.names}
    for label, name in FLARE22.names:
        table[label] = ids.get(_organ_key(name), 0)
    return table


def phantom_annotated(label_set: LabelSet) -> tuple[int, ...] | None:
    """The ids of `label_set` the phantoms annotate; None when they annotate all of them."""
    drawn = set(label_lookup(label_set).tolist()) - {0}
    return None if drawn >= set(label_set.ids) else tuple(sorted(drawn))


def _organ_key(name: str):
    code = organ_code(name)
    return (code.value, code.laterality) if code else name.strip().lower()


def _settings(config: Config, label_set: LabelSet) -> dict:
    synthetic = config.synthetic
    return {
        "phantoms": synthetic.phantoms,
        "seed": phantom_seed(config),
        "phase": synthetic.phase,
        "field_of_view": synthetic.field_of_view,
        "appearance": synthetic.appearance,
        "artefacts": synthetic.artefacts,
        "labels": label_set.to_json(),
        "version": 3,  # raised whenever the generator draws the phantoms of a seed differently
    }


def _is_current(folder: Path, settings: dict) -> bool:
    path = folder / SETTINGS
    return path.is_file() and json.loads(path.read_text()) == settings


def _write(folder: Path, settings: dict, label_set: LabelSet) -> None:
    """The phantoms with the dataset's label ids; the folder appears whole or not at all."""
    if folder.exists():  # made with other settings: made anew
        shutil.rmtree(folder)
    with atomic_folder(folder) as staging:
        data = write_dataset(
            staging / "data",
            labeled=settings["phantoms"],
            unlabeled=0,
            test=0,
            seed=settings["seed"],
            phase=settings["phase"],
            field_of_view=settings["field_of_view"],
            appearance=settings["appearance"],
            artefacts=settings["artefacts"],
        )
        table = label_lookup(label_set)
        (staging / "labelsTr").mkdir()
        for path in sorted((data / "labelsTr").glob("*.nii.gz")):
            label = read_label(path)
            write_label(table[label.array], label.geometry, staging / "labelsTr" / path.name)
        (data / "imagesTr").rename(staging / "imagesTr")
        (data / "dataset.json").rename(staging / "phantoms.json")  # each phantom's phase and field of view
        shutil.rmtree(data)
        write_json(staging / SETTINGS, settings)


def _image_of(label: Path) -> Path:
    return label.parent.parent / "imagesTr" / label.name.replace(".nii.gz", "_0000.nii.gz")
