"""Write phantom cases as an nnU-Net v2 raw dataset folder, images as NIfTI files or DICOM series."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from organseg.atomic import atomic_folder, write_json
from organseg.config_checks import MIXED
from organseg.errors import InputError
from organseg.io import Volume, write_label, write_volume
from organseg.labels import FLARE22
from organseg.phantom.case import FIELDS_OF_VIEW, UPPER_ABDOMEN, generate_case
from organseg.phantom.implants import ARTEFACTS, NO_ARTEFACTS
from organseg.phantom.orientations import ORIENTATIONS, orient
from organseg.phantom.tones import APPEARANCES, PHASES, PORTAL_VENOUS, REALISTIC
from organseg.progress import progress_bar

# split: (image folder, label folder or None, case name pattern); the order fixes each split's seed key.
SPLITS = {
    "train": ("imagesTr", "labelsTr", "phantom_{:03d}"),
    "unlabeled": ("imagesUnlabeled", None, "phantom_u{:03d}"),
    "test": ("imagesTs", "labelsTs", "phantom_t{:03d}"),
    "partial": ("imagesTr", "labelsTr", "phantom_p{:03d}"),
}
# A partially labeled case annotates this many organs, drawn at random (FLARE 2023's
# partially labeled scans mostly carry one to a few organs).
PARTIAL_ORGANS = (1, 4)


def case_seed(seed: int, split: str, index: int) -> int:
    """The seed of case `index` (from 1) of `split`: independent of how many cases the other splits have."""
    key = list(SPLITS).index(split)
    return int(np.random.SeedSequence(seed, spawn_key=(key, index)).generate_state(1, np.uint64)[0])


def write_dataset(
    out: Path,
    labeled: int,
    unlabeled: int,
    test: int,
    seed: int,
    shape: tuple[int, int, int] | None = None,
    dicom: str | None = None,
    partial: int = 0,
    phase: str = PORTAL_VENOUS,
    field_of_view: str = UPPER_ABDOMEN,
    appearance: str = REALISTIC,
    artefacts: str = NO_ARTEFACTS,
) -> Path:
    """Write an nnU-Net v2 raw dataset; returns the folder.

    The folder appears complete or not at all: cases are written to a hidden folder beside
    `out`, which is renamed when everything is written.

    Args:
        out: folder to create; it may exist only if empty.
        labeled, unlabeled, test: number of cases in imagesTr/labelsTr, imagesUnlabeled, imagesTs/labelsTs.
        seed: non-negative; the same seed gives byte-identical cases.
        shape: voxels per case (see generate_case); None for small, varied sizes.
        dicom: None for NIfTI images; else write each image as a DICOM series folder
            (imagesTr/phantom_001/...) in this orientation (organseg.phantom.orientations),
            or "mixed" for the orientations in turn, case by case; label maps stay NIfTI,
            on the series' grid.
        partial: number of further labeled cases (phantom_p001, ...) that each annotate a
            random 1-4 of the organs (`partial_annotation`): the others are erased from their
            label maps and dataset.json's `partial_labels` lists what each annotates.
        phase: the contrast phase of every case (organseg.phantom.tones.PHASES), or "mixed"
            for one drawn per case (`case_look`); other than the portal-venous default,
            dataset.json's `contrast_phases` names each case's.
        field_of_view: that of every case (organseg.phantom.case.FIELDS_OF_VIEW), or
            "mixed" for one drawn per case; other than the upper-abdomen default,
            dataset.json's `fields_of_view` names each case's.
        appearance: "realistic", "random" (every tissue's intensity drawn at random, see
            organseg.phantom.tones) or "mixed"; other than realistic, dataset.json's
            `appearances` names each case's.
        artefacts: "none", "metal" (implants and their streaks: organseg.phantom.implants, .streaks) or
            "mixed"; other than none, dataset.json's `artefacts` names each case's.
    """
    out = Path(out)
    counts = {"train": labeled, "unlabeled": unlabeled, "test": test, "partial": partial}
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: already exists and is not empty; choose a new folder or empty this one")
    if dicom is not None and dicom not in (*ORIENTATIONS, "mixed"):
        raise InputError(f"unknown DICOM orientation {dicom!r}; choose one of {', '.join(ORIENTATIONS)} or mixed")
    looks = {"phase": phase, "field_of_view": field_of_view, "appearance": appearance, "artefacts": artefacts}
    for look, value in looks.items():
        if value not in (*LOOKS[look].choices, MIXED):
            choices = ", ".join(LOOKS[look].choices)
            raise InputError(f"unknown {LOOKS[look].what} {value!r}; choose one of {choices} or {MIXED}")
    if seed < 0 or min(counts.values()) < 0:
        raise InputError(f"seed and case counts must be >= 0, got seed {seed}, counts {counts}")
    with atomic_folder(out) as staging:
        _write_cases(staging, counts, seed, shape, dicom, looks)
        _write_dataset_json(staging, counts, seed, looks)
    return out


def _write_cases(root: Path, counts: dict[str, int], seed: int, shape, dicom: str | None, looks: dict) -> None:
    if dicom:
        from organseg.dicom.ct_series import write_ct_series  # pydicom: only for DICOM phantoms
    jobs = [(split, index) for split, count in counts.items() for index in range(1, count + 1)]
    for split, count in counts.items():
        for folder in SPLITS[split][:2]:
            if folder and count:
                (root / folder).mkdir(exist_ok=True)
    for split, index in progress_bar(jobs, desc="phantom cases", unit="case"):
        images, labels, pattern = SPLITS[split]
        name = pattern.format(index)
        case_looks = {key: case_look(seed, split, index, key, value) for key, value in looks.items()}
        image, label_map = generate_case(case_seed(seed, split, index), shape, **case_looks)
        if split == "partial":
            kept = partial_annotation(seed, index)
            label_map = Volume(np.where(np.isin(label_map.array, kept), label_map.array, 0), label_map.geometry)
        if dicom:
            orientation = ORIENTATIONS[(index - 1) % len(ORIENTATIONS)] if dicom == "mixed" else dicom
            image, label_map = orient(image, orientation), orient(label_map, orientation)
            uid_seed = f"organseg phantom {seed} {split} {index}"
            write_ct_series(image, root / images / name, uid_seed, name, reverse_files=orientation == "axial-reversed")
        else:
            write_volume(image, root / images / f"{name}_0000.nii.gz")
        if labels:
            write_label(label_map.array, label_map.geometry, root / labels / f"{name}.nii.gz")


class Look(NamedTuple):
    """What a case may look like beside its anatomy, keyed in LOOKS by generate_case's argument."""

    what: str  # its name in messages
    choices: tuple[str, ...]
    default: str
    entry: str  # the dataset.json entry naming each case's, when not the default
    seed_key: int  # of the draw for "mixed"


LOOKS = {
    "phase": Look("contrast phase", PHASES, PORTAL_VENOUS, "contrast_phases", 2),
    "field_of_view": Look("field of view", tuple(FIELDS_OF_VIEW), UPPER_ABDOMEN, "fields_of_view", 3),
    "appearance": Look("appearance", APPEARANCES, REALISTIC, "appearances", 4),
    "artefacts": Look("artefacts", ARTEFACTS, NO_ARTEFACTS, "artefacts", 5),
}


def case_look(seed: int, split: str, index: int, look: str, value: str) -> str:
    """Case `index` of `split`'s `look` (a key of LOOKS): `value`, or for "mixed" a choice drawn for the case."""
    if value != MIXED:
        return value
    choices, key = LOOKS[look].choices, LOOKS[look].seed_key
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(list(SPLITS).index(split), index, key)))
    return choices[int(rng.integers(len(choices)))]


def partial_annotation(seed: int, index: int) -> tuple[int, ...]:
    """The FLARE22 label ids that partially labeled case `index` (from 1) of a dataset of `seed` annotates."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(list(SPLITS).index("partial"), index, 1)))
    count = int(rng.integers(PARTIAL_ORGANS[0], PARTIAL_ORGANS[1] + 1))
    return tuple(sorted(int(label) for label in rng.choice(FLARE22.ids, size=count, replace=False)))


def _write_dataset_json(root: Path, counts: dict[str, int], seed: int, looks: dict) -> None:
    meta = {
        "name": "organseg_phantom",
        "description": f"Synthetic abdominal CT phantoms with the 13 FLARE22 organs (organseg, seed {seed})",
        "channel_names": {"0": "CT"},
        "labels": FLARE22.to_json(),
        "numTraining": counts["train"] + counts["partial"],
        "file_ending": ".nii.gz",
        "numUnlabeled": counts["unlabeled"],
        "numTest": counts["test"],
    }
    if counts["partial"]:
        meta["partial_labels"] = {
            SPLITS["partial"][2].format(index): [FLARE22.name(label) for label in partial_annotation(seed, index)]
            for index in range(1, counts["partial"] + 1)
        }
    for look, value in looks.items():
        if value != LOOKS[look].default:
            meta[LOOKS[look].entry] = {
                SPLITS[split][2].format(index): case_look(seed, split, index, look, value)
                for split, count in counts.items()
                for index in range(1, count + 1)
            }
    write_json(root / "dataset.json", meta)
