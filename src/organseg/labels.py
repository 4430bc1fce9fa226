"""The label registry: which integer stands for which organ.

FLARE22's 13 abdominal organs are the default. A dataset's `dataset.json` (nnU-Net v2
style, `"labels": {"background": 0, "liver": 1, ...}`) replaces them, so other organ
sets work with the same code.
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


@dataclass(frozen=True)
class LabelSet:
    """Organ names by label id; id 0 is always background and is not listed."""

    names: tuple[tuple[int, str], ...]

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

    @classmethod
    def from_mapping(cls, labels: dict, source: str = "labels") -> LabelSet:
        """Build from an nnU-Net style {name: id} mapping (background entry optional)."""
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
        return cls(tuple(sorted(entries)))


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
    return LabelSet.from_mapping(meta["labels"], source=str(dataset_json))
