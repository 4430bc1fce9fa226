"""The label registry: which integer stands for which organ, its colour and its SNOMED CT code.

FLARE22's 13 abdominal organs are the default. A dataset's `dataset.json` (nnU-Net v2
style, `"labels": {"background": 0, "liver": 1, ...}`) replaces them, so other organ
sets work with the same code. Colours and codes follow the organ's name, so a label set
that names its organs as FLARE22 does (in any spelling `_split_side` knows) gets them too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from organseg.errors import InputError

# Label maps mark with this value the voxels whose class is unknown: a pseudo-label's
# doubtful voxels (organseg.pseudolabel), which losses and metrics leave out.
IGNORE_LABEL = 255

FLARE22_ORGANS: tuple[str, ...] = (
    "liver",
    "right kidney",
    "spleen",
    "pancreas",
    "aorta",
    "inferior vena cava",
    "right adrenal gland",
    "left adrenal gland",
    "gallbladder",
    "esophagus",
    "stomach",
    "duodenum",
    "left kidney",
)

# One fixed colour per label id 1..13 (FLARE22 order), reused cyclically for larger ids.
PALETTE = (
    "#e6194b",  # liver
    "#3cb44b",  # right kidney
    "#4363d8",  # spleen
    "#ffe119",  # pancreas
    "#f58231",  # aorta
    "#911eb4",  # inferior vena cava
    "#46f0f0",  # right adrenal gland
    "#f032e6",  # left adrenal gland
    "#bcf60c",  # gallbladder
    "#fabebe",  # esophagus
    "#008080",  # stomach
    "#e6beff",  # duodenum
    "#aaffc3",  # left kidney
)


@dataclass(frozen=True)
class OrganCode:
    """A SNOMED CT concept (scheme SCT) for DICOM objects, and the organ's side for paired organs.

    Paired organs carry the organ's code with a laterality modifier, as DICOM's segmentation
    property types do (PS3.16 CID 7151), so one concept serves both sides.
    """

    value: str
    meaning: str
    laterality: str = ""  # "", "left" or "right"


# SNOMED CT codes of the FLARE22 organs by unsided name (values as in DICOM PS3.16 and
# pydicom's code dictionary, which tests/test_labels.py checks them against).
ORGAN_CODES: dict[str, tuple[str, str]] = {
    "liver": ("10200004", "Liver"),
    "kidney": ("64033007", "Kidney"),
    "spleen": ("78961009", "Spleen"),
    "pancreas": ("15776009", "Pancreas"),
    "aorta": ("15825003", "Aorta"),
    "inferior vena cava": ("64131007", "Inferior vena cava"),
    "adrenal gland": ("23451007", "Adrenal gland"),
    "gallbladder": ("28231008", "Gallbladder"),
    "esophagus": ("32849002", "Esophagus"),
    "stomach": ("69695003", "Stomach"),
    "duodenum": ("38848004", "Duodenum"),
}
LATERALITY_CODES = {"right": ("24028007", "Right"), "left": ("7771000", "Left")}
# The category of every organ, and the type of a structure neither the registry nor its label set codes.
ANATOMICAL_STRUCTURE = ("SCT", "91723000", "Anatomical Structure")
GENERIC_ORGAN = ("SCT", "91772007", "Organ")
# Other spellings of the same organs met in public label sets.
ORGAN_ALIASES = {"ivc": "inferior vena cava", "postcava": "inferior vena cava", "gall bladder": "gallbladder"}


def organ_code(name: str) -> OrganCode | None:
    """The SNOMED CT code of an organ named as in FLARE22 (any spelling `_split_side` reads); None if unknown."""
    side, organ = _split_side(name)
    organ = " ".join(organ.replace("_", " ").replace("-", " ").split())
    organ = ORGAN_ALIASES.get(organ, organ)
    if organ not in ORGAN_CODES:
        return None
    value, meaning = ORGAN_CODES[organ]
    return OrganCode(value, meaning, side)


def label_colour(label: int) -> str:
    """The display colour (#rrggbb) of label id `label` (>= 1)."""
    return PALETTE[(label - 1) % len(PALETTE)]


# A coded concept as DICOM writes it: (coding scheme designator, code value, code meaning).
Concept = tuple[str, str, str]


@dataclass(frozen=True)
class LabelSet:
    """Organ names by label id; id 0 is always background and is not listed.

    `codes`: for names the registry does not know (or to override it), the coded concept
    of the structure's type and, optionally, of its category (empty tuple: 'Anatomical
    Structure'), as dataset.json's `label_codes` declares them (see `parse_label_codes`).
    """

    names: tuple[tuple[int, str], ...]
    codes: tuple[tuple[str, Concept, Concept | tuple[()]], ...] = ()

    def __post_init__(self) -> None:
        ids = [label for label, _ in self.names]
        if len(set(ids)) != len(ids):
            raise InputError(f"label ids must be unique, got {sorted(ids)}")
        if any(label <= 0 or label > 65535 for label in ids):
            raise InputError(f"label ids must be in 1..65535 (0 is background), got {sorted(ids)}")
        names = [name for _, name in self.names]
        if len(set(names)) != len(names):
            raise InputError(f"organ names must be unique, got {names}")

    @property
    def ids(self) -> tuple[int, ...]:
        """Foreground label ids in increasing order."""
        return tuple(sorted(label for label, _ in self.names))

    @property
    def max_id(self) -> int:
        return max(self.ids, default=0)

    @property
    def num_classes(self) -> int:
        """Number of network output channels: background plus one per label id."""
        return self.max_id + 1

    def name(self, label: int) -> str:
        """The organ name of `label` ('background' for 0)."""
        if label == 0:
            return "background"
        for known, name in self.names:
            if known == label:
                return name
        raise KeyError(label)

    def mirror_pairs(self) -> tuple[tuple[int, int], ...]:
        """Pairs of label ids that swap under left-right mirroring (e.g. kidneys).

        Found by name: 'left X' pairs with 'right X' (also 'X_L'/'X_R' spellings).
        """
        by_side: dict[tuple[str, str], int] = {}
        for label, name in self.names:
            side, organ = _split_side(name)
            if side:
                by_side[(side, organ)] = label
        return tuple(
            sorted(
                (by_side[("left", organ)], label)
                for (side, organ), label in by_side.items()
                if side == "right" and ("left", organ) in by_side
            )
        )

    def to_json(self) -> dict[str, int]:
        """nnU-Net style mapping name -> id, background included."""
        return {"background": 0, **{name: label for label, name in sorted(self.names)}}

    def code_of(self, name: str) -> tuple[Concept, Concept | tuple[()]] | None:
        """(type, category) declared for `name` in `codes`; None when it has none."""
        return next(((kind, category) for known, kind, category in self.codes if known == name), None)

    def concepts(self, name: str) -> tuple[Concept, Concept, str]:
        """(type, category, laterality) of organ `name` for DICOM objects.

        The label set's own codes first, then the registry (FLARE22 names in any spelling),
        else the generic 'Organ': the segment or ROI keeps `name` as its label either way.
        """
        declared = self.code_of(name)
        if declared is not None:
            return declared[0], declared[1] or ANATOMICAL_STRUCTURE, ""
        code = organ_code(name)
        if code is not None:
            return ("SCT", code.value, code.meaning), ANATOMICAL_STRUCTURE, code.laterality
        return GENERIC_ORGAN, ANATOMICAL_STRUCTURE, ""

    def codes_to_json(self) -> dict[str, dict[str, list[str]]]:
        """`codes` in dataset.json's `label_codes` form."""
        return {
            name: {"type": list(kind), **({"category": list(category)} if category else {})}
            for name, kind, category in self.codes
        }

    @classmethod
    def from_mapping(cls, labels: dict, source: str = "labels", codes: dict | None = None) -> LabelSet:
        """Build from an nnU-Net style {name: id} mapping (background entry optional) and optional label codes."""
        if not isinstance(labels, dict) or not labels:
            raise InputError(f"{source}: 'labels' must be a non-empty mapping of organ name to id")
        entries = []
        for name, label in labels.items():
            if isinstance(label, list | tuple):
                raise InputError(f"{source}: label '{name}' is a region (list of ids); organseg needs one id per organ")
            if isinstance(label, bool) or not isinstance(label, int):
                raise InputError(f"{source}: label '{name}' must be an integer id, got {label!r}")
            if label == 0:
                continue
            entries.append((label, str(name)))
        return cls(tuple(sorted(entries)), parse_label_codes(codes or {}, {name for _, name in entries}, source))


def parse_label_codes(codes: dict, names: set[str], source: str) -> tuple:
    """Check dataset.json's `label_codes`: {name: {"type": [scheme, value, meaning], "category": [...]}}."""
    if not isinstance(codes, dict):
        raise InputError(f"{source}: 'label_codes' must map organ names to their codes")
    parsed = []
    for name, entry in codes.items():
        if name not in names:
            raise InputError(f"{source}: 'label_codes' names '{name}', which is not in 'labels'")
        if not isinstance(entry, dict) or "type" not in entry or set(entry) - {"type", "category"}:
            raise InputError(f'{source}: label_codes of \'{name}\' must be {{"type": [...], "category": [...]}}')
        kind, category = (_concept(entry.get(key), name, source) for key in ("type", "category"))
        parsed.append((name, kind, category))
    return tuple(sorted(parsed))


def _concept(value, name: str, source: str) -> Concept | tuple[()]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or len(value) != 3 or not all(isinstance(v, str) and v for v in value):
        raise InputError(
            f'{source}: a code of \'{name}\' must be [scheme, value, meaning], e.g. ["SCT", "10200004", "Liver"]'
        )
    return tuple(value)


def _split_side(name: str) -> tuple[str, str]:
    """('left', 'kidney') for 'left kidney', 'kidney_left', 'Kidney_L', ... else ('', name)."""
    words = [w for w in re.split(r"[\s_\-]+", name.lower()) if w]
    for index, word in enumerate(words):
        side = {"left": "left", "l": "left", "right": "right", "r": "right"}.get(word)
        if side and (len(word) > 1 or index == len(words) - 1):
            return side, " ".join(words[:index] + words[index + 1 :])
    return "", name.lower()


FLARE22 = LabelSet(tuple(enumerate(FLARE22_ORGANS, start=1)))


def read_dataset_labels(dataset_json: Path) -> LabelSet:
    """The label set declared in a dataset.json file."""
    try:
        meta = json.loads(Path(dataset_json).read_text())
    except FileNotFoundError:
        raise InputError(f"{dataset_json}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{dataset_json}: not valid JSON ({error}); fix or remove the file") from None
    if not isinstance(meta, dict) or "labels" not in meta:
        raise InputError(f'{dataset_json}: no \'labels\' entry; add e.g. {{"labels": {{"background": 0, "liver": 1}}}}')
    return LabelSet.from_mapping(meta["labels"], source=str(dataset_json), codes=meta.get("label_codes"))
