"""Presets, config files and --set overrides: unknown keys and bad values are refused clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from organseg.config import DEFAULT_PRESET, PRESETS, Config, from_dict, resolve_config, save_config, to_dict
from organseg.errors import InputError
from organseg.nets.unet3d import count_parameters
from organseg.stage_state import build_model


def test_default_preset_is_cpu_and_paper_matches_the_paper() -> None:
    assert DEFAULT_PRESET == "cpu"
    paper = resolve_config("paper")
    for stage in (paper.stage1, paper.stage2):
        assert stage.grid == (160, 160, 160) and stage.batch_size == 4 and stage.epochs == 1000
        assert stage.learning_rate == 1e-3 and stage.lr_halving_epochs == 200
    with torch.device("meta"):
        parameters = count_parameters(build_model(paper.stage1, num_classes=14))
    assert 39e6 <= parameters <= 43e6, parameters  # "about 41M parameters per stage"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_valid_and_round_trips_through_json(preset: str, tmp_path: Path) -> None:
    config = resolve_config(preset)
    save_config(config, tmp_path / "config.json")
    assert from_dict(json.loads((tmp_path / "config.json").read_text())) == config
    assert to_dict(config)["stage1"]["grid"] == list(config.stage1.grid)


def test_file_then_overrides_apply_in_order(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"seed": 7, "stage1": {"epochs": 12, "net": {"widths": [8, 16, 32]}}}))
    config = resolve_config("cpu", path, ["stage1.epochs=5", "crop.margin_mm=12.5", "augment.enabled=false"])
    assert config.seed == 7 and config.stage1.epochs == 5 and config.stage1.net.widths == (8, 16, 32)
    assert config.crop.margin_mm == 12.5 and config.augment.enabled is False
    assert config.stage2 == resolve_config("cpu").stage2


@pytest.mark.parametrize(
    "override, message",
    [
        ("stage1.epoks=3", "unknown setting 'stage1.epoks'"),
        ("nonsense=1", "unknown setting 'nonsense'"),
        ("stage1.epochs=three", "whole number"),
        ("stage1.epochs=0", "stage1.epochs must be >= 1"),
        ("stage1.learning_rate=5", "learning_rate must be in (0, 1)"),
        ("stage2.grid=[30,30,30]", "divisible by"),
        ("window_hu=[400,-200]", "low < high"),
        ("precision=fp8", "precision must be"),
        ("stage2.lr_schedule=cosine", "stage2.lr_schedule must be 'halving' or 'poly'"),
        ("augment.rotation_p=1.5", "probability"),
        ("largest_component=yes", "true or false"),
        ("stage1=5", "group of settings"),
        ("epochs", "key=value"),
    ],
)
def test_bad_overrides_are_refused_with_a_clear_message(override: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        resolve_config("cpu", overrides=[override])
    assert message in str(caught.value)


def test_bad_preset_and_config_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown preset"):
        resolve_config("huge")
    with pytest.raises(InputError, match="not found"):
        resolve_config("cpu", tmp_path / "absent.json")
    (tmp_path / "broken.json").write_text("{stage1: ")
    with pytest.raises(InputError, match="not valid JSON"):
        resolve_config("cpu", tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="JSON object"):
        resolve_config("cpu", tmp_path / "list.json")


def test_config_is_frozen_plain_data() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.seed = 3  # type: ignore[misc]
    json.dumps(to_dict(config))
