"""The label registry: FLARE22 default, dataset.json overrides, left/right pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from organseg.errors import InputError
from organseg.labels import FLARE22, LabelSet, read_dataset_labels


def test_flare22_default_ids() -> None:
    assert FLARE22.ids == tuple(range(1, 14))
    assert FLARE22.num_classes == 14
    assert FLARE22.name(0) == "background"
    assert [FLARE22.name(i) for i in (1, 2, 6, 10, 13)] == [
        "liver",
        "right kidney",
        "inferior vena cava",
        "esophagus",
        "left kidney",
    ]
    # Mirroring the patient left-right swaps kidneys and adrenal glands.
    assert FLARE22.mirror_pairs() == ((8, 7), (13, 2))


def test_dataset_json_overrides_labels(tmp_path: Path) -> None:
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"background": 0, "Kidney_L": 1, "Kidney_R": 2, "bladder": 5}}))
    labels = read_dataset_labels(path)
    assert labels.ids == (1, 2, 5) and labels.num_classes == 6
    assert labels.name(5) == "bladder"
    assert labels.mirror_pairs() == ((1, 2),)
    assert LabelSet.from_mapping(labels.to_json()) == labels


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"name": "x"}', "no 'labels'"),
        ('{"labels": {}}', "non-empty"),
        ('{"labels": {"liver": "one"}}', "integer id"),
        ('{"labels": {"liver": 1, "spleen": 1}}', "unique"),
        ('{"labels": {"organs": [1, 2]}}', "region"),
    ],
)
def test_malformed_dataset_json_is_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "dataset.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_dataset_labels(path)


def test_missing_dataset_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_dataset_labels(tmp_path / "dataset.json")
