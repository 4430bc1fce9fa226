"""The label registry: FLARE22 default, dataset.json overrides, left/right pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from organseg.errors import InputError
from organseg.labels import FLARE22, FLARE22_ORGANS, LabelSet, read_dataset_labels


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


def test_organ_codes_are_the_snomed_concepts_of_pydicoms_dictionary() -> None:
    from pydicom.sr.codedict import codes

    from organseg.labels import LATERALITY_CODES, ORGAN_CODES

    for organ, (value, meaning) in ORGAN_CODES.items():
        keyword = "".join(word.capitalize() for word in meaning.split())
        assert getattr(codes.SCT, keyword).value == value, organ
    assert {"right": (codes.SCT.Right.value, "Right"), "left": (codes.SCT.Left.value, "Left")} == LATERALITY_CODES


def test_every_flare_organ_has_a_code_in_any_spelling() -> None:
    from organseg.labels import organ_code

    assert all(organ_code(name) is not None for name in FLARE22_ORGANS)
    assert organ_code("kidney_left") == organ_code("left kidney") == organ_code("Kidney_L")
    assert organ_code("left kidney").laterality == "left" and organ_code("liver").laterality == ""
    assert organ_code("postcava").meaning == "Inferior vena cava" and organ_code("tumour") is None


@pytest.mark.parametrize(
    ("codes", "words"),
    [
        ({"spleen": {"type": ["SCT", "78961009", "Spleen"]}}, "not in 'labels'"),
        ({"liver": ["SCT", "10200004", "Liver"]}, '"type"'),
        ({"liver": {"type": ["SCT", "10200004"]}}, "[scheme, value, meaning]"),
        ({"liver": {"type": ["SCT", "10200004", "Liver"], "colour": "red"}}, '"type"'),
    ],
)
def test_malformed_label_codes_are_refused_in_one_line(tmp_path, codes, words) -> None:
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"background": 0, "liver": 1}, "label_codes": codes}))
    with pytest.raises(InputError) as caught:
        read_dataset_labels(path)
    assert words in str(caught.value) and str(path) in str(caught.value) and "\n" not in str(caught.value)
