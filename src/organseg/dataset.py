"""Finding a dataset's cases, and checking all of them before any work starts.

Layouts: nnU-Net v2 raw (`dataset.json`, `imagesTr/{case}_0000{ending}`, `labelsTr/{case}{ending}`,
optional `imagesTs/`, `labelsTs/`, `imagesUnlabeled/`; names follow nnU-Net strictly), and explicit
folders that override those defaults or work without a root (a FLARE22 download: image names may
or may not end in `_0000`; a subfolder of DICOM files is one case named after the folder).

A labeled case may annotate only some organs (`partial_labels` in dataset.json, or a JSON
file of the same mapping in explicit-folder mode: {case id: [organ names]}); a case not
listed annotates every organ.

`discover_dataset` only lists files. What it finds wrong (bad names, duplicates, orphan labels)
travels in `Dataset.problems`, so `organseg.dataset_checks.check_dataset` reports it together with
what reading every file finds: the user sees every problem in one pass.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from organseg.errors import InputError
from organseg.io import IMAGE_SUFFIXES, image_stem, is_image_path
from organseg.labels import FLARE22, LabelSet, read_dataset_labels

DEFAULT_FILE_ENDING = ".nii.gz"
# nnU-Net's channel suffix: `case_0000` is channel 0 of `case`.
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Case:
    """One scan: its image file (or DICOM series folder) and its label map, if any."""

    case_id: str
    image: Path
    label: Path | None
    annotated: tuple[int, ...] | None = None  # label ids its label map annotates; None: all of them


@dataclass(frozen=True)
class Dataset:
    """The cases of a dataset, as found on disk (nothing read yet)."""

    root: Path | None
    label_set: LabelSet
    labeled: tuple[Case, ...]  # the training set; label is None where the label map is missing
    unlabeled: tuple[Case, ...]
    test: tuple[Case, ...]  # test cases, with label when labelsTs has one
    # Where training images and labels are expected. check_dataset checks these folders,
    # since whether they are needed depends on its `require_labels`.
    images_folder: Path | None = None
    labels_folder: Path | None = None
    problems: tuple[str, ...] = ()  # found while listing files; check_dataset reports them
    warnings: tuple[str, ...] = ()


@dataclass
class _Notes:
    """What listing the files found wrong; check_dataset reports it with everything else."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def discover_dataset(
    root: Path | None,
    *,
    images: Path | None = None,
    labels: Path | None = None,
    unlabeled: list[Path] | None = None,
    test_images: Path | None = None,
    test_labels: Path | None = None,
    dataset_json: Path | None = None,
    partial_labels: Path | None = None,
) -> Dataset:
    """List a dataset's cases: an nnU-Net v2 raw folder `root`, explicit folders, or both.

    Explicit folders replace the root's defaults; `partial_labels`, a JSON file of
    {case id: [organ names]}, replaces dataset.json's `partial_labels`. Raises InputError only when nothing can be
    listed (no root and no folders, a missing root without folders, a malformed dataset.json).
    """
    notes = _Notes()
    root = _check_root(root, (images, labels, *(unlabeled or []), test_images, test_labels, dataset_json), notes)
    label_set, ending = _read_metadata(root, dataset_json, notes)
    finder = _Finder(ending, notes)
    train, train_labels = _pick(images, root, "imagesTr"), _pick(labels, root, "labelsTr")
    seen: dict[str, Path] = {}  # case ids must be unique across training and unlabeled images
    labeled = finder.pair(finder.images(*train, seen, named=False), finder.labels(*train_labels), train[0])
    declared = _read_partial_labels(root, dataset_json, partial_labels, label_set, notes)
    labeled = _with_annotations(labeled, declared, notes)
    unlabeled_cases = []
    for folder, strict in [(Path(path), False) for path in unlabeled or []] or _default(root, "imagesUnlabeled"):
        found = finder.images(folder, strict, seen, named=not strict)
        unlabeled_cases += [Case(case_id, path, None) for case_id, path in found.items()]
    test = _discover_test(finder, _pick(test_images, root, "imagesTs"), _pick(test_labels, root, "labelsTs"))
    extras = tuple(notes.problems), tuple(notes.warnings)
    return Dataset(root, label_set, labeled, tuple(unlabeled_cases), test, train[0], train_labels[0], *extras)


def _check_root(root: Path | None, folders: tuple, notes: _Notes) -> Path | None:
    """The dataset folder, if usable; InputError when there is nothing at all to list."""
    if root is not None and Path(root).is_dir():
        return Path(root)
    if all(folder is None for folder in folders):
        if root is None:
            raise InputError("no dataset given: give a dataset folder (nnU-Net v2 raw layout) or --images FOLDER")
        raise InputError(f"{root}: dataset folder not found; check the path")
    if root is not None:
        notes.problems.append(f"{root}: dataset folder not found; check the path, or give only the folder options")
    return None


def _read_metadata(root: Path | None, dataset_json: Path | None, notes: _Notes) -> tuple[LabelSet, str]:
    """The label set and file ending from dataset.json, or the FLARE22 labels without one."""
    path = Path(dataset_json) if dataset_json is not None else (root / "dataset.json" if root else None)
    if path is None or (dataset_json is None and not path.is_file()):
        notes.warnings.append("no dataset.json: using the 13 FLARE22 organ labels; give --dataset-json for others")
        return FLARE22, DEFAULT_FILE_ENDING
    label_set = read_dataset_labels(path)  # raises InputError for a missing or malformed file
    meta = json.loads(path.read_text())
    ending = meta.get("file_ending", DEFAULT_FILE_ENDING)
    if not isinstance(ending, str) or ending.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"{path}: file_ending {ending!r} is not one organseg reads; use one of {IMAGE_SUFFIXES}")
    channels = meta.get("channel_names", {})
    if isinstance(channels, dict) and len(channels) > 1:
        notes.problems.append(
            f"{path}: declares {len(channels)} image channels; multi-channel datasets are not supported "
            "(organseg reads one CT channel, _0000): keep only channel 0"
        )
    return label_set, ending


def _read_partial_labels(
    root: Path | None, dataset_json: Path | None, explicit: Path | None, label_set: LabelSet, notes: _Notes
) -> tuple[Path | None, dict[str, tuple[int, ...]]]:
    """(source, {case id: annotated label ids}) from the explicit file, else dataset.json's `partial_labels`."""
    if explicit is not None:
        path, key = Path(explicit), None
    else:
        path, key = (
            (Path(dataset_json) if dataset_json else (root / "dataset.json" if root else None)),
            "partial_labels",
        )
    if path is None or not path.is_file():
        if explicit is not None:
            raise InputError(f"{explicit}: partial-labels file not found; check the path")
        return None, {}
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error}); fix the file") from None
    mapping = content if key is None else (content.get(key, {}) if isinstance(content, dict) else {})
    if not isinstance(mapping, dict):
        raise InputError(f"{path}: partial labels must map case ids to lists of organ names")
    ids = {name: label for label, name in label_set.names}
    declared = {}
    for case_id, names in mapping.items():
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise InputError(f"{path}: partial labels of '{case_id}' must be a list of organ names")
        unknown = [name for name in names if name not in ids]
        if unknown:
            notes.problems.append(f"{path}: case '{case_id}' annotates {unknown}, not in the dataset's labels")
        declared[str(case_id)] = tuple(sorted(ids[name] for name in names if name in ids))
    return path, declared


def _with_annotations(
    cases: tuple[Case, ...], declared: tuple[Path | None, dict[str, tuple[int, ...]]], notes: _Notes
) -> tuple[Case, ...]:
    path, annotated = declared
    known = {case.case_id for case in cases}
    for case_id in sorted(set(annotated) - known):
        notes.problems.append(f"{path}: partial labels for '{case_id}', which is no labeled case; fix the case id")
    return tuple(
        Case(case.case_id, case.image, case.label, annotated.get(case.case_id)) if case.case_id in annotated else case
        for case in cases
    )


def _pick(explicit: Path | None, root: Path | None, name: str) -> tuple[Path | None, bool]:
    """The folder to use, and whether nnU-Net's naming applies strictly (only to the root's defaults)."""
    if explicit is not None:
        return Path(explicit), False
    return (root / name, True) if root is not None else (None, False)


def _default(root: Path | None, name: str) -> list[tuple[Path, bool]]:
    """An optional default folder of the root, if it exists."""
    return [(root / name, True)] if root is not None and (root / name).is_dir() else []


def _discover_test(
    finder: _Finder, images: tuple[Path | None, bool], labels: tuple[Path | None, bool]
) -> tuple[Case, ...]:
    """Test cases: imagesTs and labelsTs are optional, explicit folders are not."""
    (folder, strict), (label_folder, labels_strict) = images, labels
    if label_folder is not None and not label_folder.is_dir():
        if not labels_strict:
            finder.notes.problems.append(f"{label_folder}: test label folder not found; check the path")
        label_folder = None
    if folder is None or (strict and not folder.is_dir()):
        if label_folder is not None:
            finder.notes.problems.append(f"{label_folder}: test labels without test images; give --test-images")
        return ()
    found = finder.images(folder, strict, {}, named=not strict)
    return finder.pair(found, finder.labels(label_folder, labels_strict), folder)


@dataclass
class _Finder:
    """Lists image and label folders; naming problems go to `notes`."""

    ending: str  # dataset.json's file_ending, enforced in nnU-Net's default folders only
    notes: _Notes

    def images(self, folder: Path | None, strict: bool, seen: dict[str, Path], named: bool) -> dict[str, Path]:
        """Case id -> image file or DICOM series folder, in name order; ids already in `seen` are duplicates.

        named: a folder the user gave for unlabeled or test images, so missing or empty is a
        problem. The training folder is checked by check_dataset; nnU-Net's optional
        default folders are often left empty.
        """
        if folder is None or not folder.is_dir():
            if folder is not None and named:
                self.notes.problems.append(f"{folder}: image folder not found; check the path")
            return {}
        entries = sorted(path for path in folder.iterdir() if not path.name.startswith("."))
        stems = {image_stem(path) for path in entries if is_image_path(path)}
        found, dicom_files = [], [path for path in entries if path.name.lower().endswith(".dcm")]
        for path in entries:
            if path.is_dir() and is_dicom_series(path):
                found.append((path.name, path))
            elif path.is_file() and is_image_path(path) and path not in dicom_files and self._ending_ok(path, strict):
                case_id = self._case_id(path, stems, strict)
                found += [(case_id, path)] if case_id is not None else []
        if dicom_files:
            self.notes.problems.append(
                f"{folder}: holds DICOM files directly; put each series in its own subfolder named after the case"
            )
        elif not found and named:
            self.notes.problems.append(f"{folder}: no images found; add images or leave the folder out")
        return self._unique(found, seen)

    def labels(self, folder: Path | None, strict: bool) -> dict[str, Path]:
        """Case id -> label map (a missing folder is reported where it matters)."""
        if folder is None or not folder.is_dir():
            return {}
        entries = sorted(path for path in folder.iterdir() if path.is_file() and is_image_path(path))
        return self._unique([(image_stem(path), path) for path in entries if self._ending_ok(path, strict)], {})

    def pair(self, images: dict[str, Path], labels: dict[str, Path], folder: Path | None) -> tuple[Case, ...]:
        """Cases with their label maps; label maps without an image are problems (if the image folder exists)."""
        for case_id, label in labels.items() if folder is not None and folder.is_dir() else ():
            if case_id not in images:
                self.notes.problems.append(
                    f"{label}: label map without an image (no case '{case_id}' in {folder}); add it or remove the label"
                )
        return tuple(Case(case_id, path, labels.get(case_id)) for case_id, path in images.items())

    def _ending_ok(self, path: Path, strict: bool) -> bool:
        if not strict or path.name.endswith(self.ending):
            return True
        self.notes.problems.append(f"{path}: file ending is not the dataset's '{self.ending}'; convert or remove it")
        return False

    def _case_id(self, path: Path, stems: set[str], strict: bool) -> str | None:
        """The stem without `_0000`; None (and a problem) for other channels and, in nnU-Net folders, no channel."""
        stem = image_stem(path)
        match = CHANNEL_SUFFIX.match(stem)
        if match and match["channel"] == "0000":
            return match["case"]
        # Outside nnU-Net folders `FLARE22_Tr_0001` is a case id; it is a channel only beside `FLARE22_Tr_0000`.
        if match and (strict or f"{match['case']}_0000" in stems):
            self.notes.problems.append(
                f"{path}: image channel {match['channel']} of case '{match['case']}'; multi-channel datasets are "
                "not supported (organseg reads one CT channel, _0000): remove the other channels"
            )
            return None
        if strict:
            suffix = path.name[len(stem) :]
            self.notes.problems.append(f"{path}: name lacks nnU-Net's channel suffix; rename it to {stem}_0000{suffix}")
            return None
        return stem

    def _unique(self, entries: list[tuple[str, Path]], seen: dict[str, Path]) -> dict[str, Path]:
        """Case id -> path, keeping the first of each id; every later one is a problem."""
        kept = {}
        for case_id, path in entries:
            if case_id in seen:
                self.notes.problems.append(f"{path}: duplicate case id '{case_id}' (also {seen[case_id]}); rename one")
            else:
                seen[case_id] = kept[case_id] = path
        return kept


def folder_cases(folder: Path) -> list[Case]:
    """The images of a folder as cases (one clear error for problems or no image)."""
    dataset = discover_dataset(None, images=folder)
    if dataset.problems:
        raise InputError("\n".join(dataset.problems))
    if not dataset.labeled:
        raise InputError(f"{folder}: no images found; give an image file, a DICOM series folder or a folder of images")
    return list(dataset.labeled)


def is_dicom_series(folder: Path) -> bool:
    """A folder of .dcm files, or of files with the DICOM preamble (many scanners write no suffix)."""
    files = sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))
    return any(path.name.lower().endswith(".dcm") or _has_dicom_preamble(path) for path in files[:3])


def _has_dicom_preamble(path: Path) -> bool:
    with open(path, "rb") as stream:
        return stream.read(132)[128:] == b"DICM"
