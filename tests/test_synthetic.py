"""Phantoms training beside a dataset's cases: their labels, their share of every batch, a run with them."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from organseg.batches import Sampler, draw_batch
from organseg.config import resolve_config
from organseg.dataset import discover_dataset
from organseg.errors import InputError
from organseg.io import read_label
from organseg.labels import FLARE22, LabelSet
from organseg.phantom import generate_case
from organseg.phantom.writer import case_seed
from organseg.prepared import prepare_cases
from organseg.runs import run_training
from organseg.synthetic import label_lookup, phantom_annotated, phantom_seed, synthetic_cases

# A dataset's own label set: other ids, other spellings, an organ no phantom draws.
OWN = LabelSet(((1, "Liver"), (2, "kidney_right"), (3, "urinary bladder"), (5, "left kidney")))
FLARE = {name: label for label, name in FLARE22.names}


def test_phantom_organs_get_the_dataset_s_ids_by_name_and_others_become_background() -> None:
    table = label_lookup(OWN)
    assert table[FLARE["liver"]] == 1 and table[FLARE["right kidney"]] == 2 and table[FLARE["left kidney"]] == 5
    others = set(FLARE.values()) - {FLARE["liver"], FLARE["right kidney"], FLARE["left kidney"]}
    assert not table[sorted(others)].any() and table[0] == 0
    assert phantom_annotated(OWN) == (1, 2, 5)  # no phantom draws a bladder: unannotated, not background
    assert phantom_annotated(FLARE22) is None
    assert label_lookup(FLARE22)[: FLARE22.max_id + 1].tolist() == list(range(FLARE22.max_id + 1))


def test_phantoms_are_written_once_with_the_dataset_s_ids_and_remade_when_settings_change(tmp_path: Path) -> None:
    looks = ["synthetic.phase=non-contrast", "synthetic.field_of_view=upper-abdomen"]
    config = resolve_config("tiny", overrides=["synthetic.phantoms=2", *looks])
    folder = tmp_path / "phantoms"
    cases = synthetic_cases(folder, config, OWN)
    assert [case.case_id for case in cases] == ["synthetic_phantom_001", "synthetic_phantom_002"]
    assert all(case.annotated == (1, 2, 5) and case.image.is_file() for case in cases)
    labels = read_label(cases[0].label).array
    _, flare = generate_case(case_seed(phantom_seed(config), "train", 1), phase="non-contrast")
    assert np.array_equal(labels == 1, flare.array == FLARE["liver"])
    assert np.array_equal(labels == 5, flare.array == FLARE["left kidney"])
    assert set(np.unique(labels)) <= {0, 1, 2, 5}
    stamp = cases[0].label.stat().st_mtime_ns
    assert synthetic_cases(folder, config, OWN)[0].label.stat().st_mtime_ns == stamp  # reused
    more = resolve_config("tiny", overrides=["synthetic.phantoms=3", *looks])
    assert len(synthetic_cases(folder, more, OWN)) == 3
    assert json.loads((folder / "settings.json").read_text())["phantoms"] == 3
    assert synthetic_cases(tmp_path / "none", resolve_config("tiny"), OWN) == []
    with pytest.raises(InputError, match="draw none of this dataset's organs"):
        synthetic_cases(tmp_path / "none", config, LabelSet(((1, "tumour"),)))
    assert not (tmp_path / "none").exists()
    # Their seed is the run's, and not that of a phantom dataset of the same seed.
    assert phantom_seed(config) != config.seed and phantom_seed(config) == phantom_seed(resolve_config("tiny"))


def _pool(real: int, phantoms: int, pseudo: int = 0) -> list[SimpleNamespace]:
    def case(index: int, synthetic: bool, is_pseudo: bool) -> SimpleNamespace:
        return SimpleNamespace(pseudo=is_pseudo, annotated=None, synthetic=synthetic, index=index)

    return (
        [case(i, False, False) for i in range(real)]
        + [case(real + i, True, False) for i in range(phantoms)]
        + [case(real + phantoms + i, False, True) for i in range(pseudo)]
    )


@pytest.mark.parametrize("batch_size, share", [(2, 0.5), (4, 0.25), (4, 0.75)])
def test_every_batch_holds_exactly_its_share_of_phantoms(batch_size: int, share: float) -> None:
    rng, cases = np.random.default_rng(0), _pool(1, 40)
    for _ in range(300):
        batch = draw_batch(cases, batch_size, 0.5, rng, synthetic_share=share)
        assert len(batch) == batch_size and sum(case.synthetic for case in batch) == share * batch_size


@pytest.mark.parametrize("batch_size, share", [(1, 0.5), (3, 0.5), (2, 0.1)])
def test_the_phantoms_share_is_kept_on_average_at_any_batch_size(batch_size: int, share: float) -> None:
    rng, cases = np.random.default_rng(1), _pool(2, 30, pseudo=10)
    draws = [case for _ in range(4000) for case in draw_batch(cases, batch_size, 0.5, rng, synthetic_share=share)]
    assert abs(np.mean([case.synthetic for case in draws]) - share) < 0.03
    real = [case for case in draws if not case.synthetic]
    assert abs(np.mean([not case.pseudo for case in real]) - 0.5) < 0.04  # labeled_fraction holds among the real
    assert {case.index for case in draws} == set(range(42))


def test_phantoms_alone_or_no_phantoms_draw_as_before() -> None:
    for cases in (_pool(0, 6), _pool(6, 0)):
        batch = draw_batch(cases, 3, 0.5, np.random.default_rng(3), synthetic_share=0.5)
        expected = np.random.default_rng(3).choice(6, size=3, replace=False)
        assert [case.index for case in batch] == expected.tolist()


def test_settings_out_of_range_are_refused_in_one_message() -> None:
    with pytest.raises(InputError) as error:
        resolve_config(overrides=["synthetic.share=1.5", "synthetic.weight=0", "synthetic.appearance=odd"])
    for text in ("synthetic.share must be in [0, 1]", "synthetic.weight must be > 0", "synthetic.appearance"):
        assert text in str(error.value)


@pytest.fixture(scope="module")
def one_case(tmp_path_factory) -> Path:
    """A dataset of one labeled case, as a team with one annotated scan has."""
    from organseg.phantom import write_dataset

    return write_dataset(tmp_path_factory.mktemp("one") / "data", labeled=1, unlabeled=0, test=0, seed=4)


def test_a_run_trains_on_its_case_and_its_phantoms_with_their_weight(one_case: Path, tmp_path: Path) -> None:
    overrides = ["synthetic.phantoms=2", "synthetic.weight=0.5", "validation_cases=0", "stage2.epochs=1"]
    config = resolve_config("tiny", overrides=overrides)
    run_dir = tmp_path / "run"
    rows = run_training(discover_dataset(one_case), run_dir, config, device="cpu")
    assert all(np.isfinite(row["loss"]) for row in rows.values())
    assert json.loads((run_dir / "config.json").read_text())["synthetic"]["phantoms"] == 2
    assert sorted(path.name for path in (run_dir / "cache").glob("synthetic_*.json")) == [
        "synthetic_phantom_001.json",
        "synthetic_phantom_002.json",
    ]
    # What the training sampler draws from: the real case at weight 1, the phantoms at 0.5, one of each a step.
    dataset = discover_dataset(one_case)
    real = prepare_cases(list(dataset.labeled), run_dir / "cache", config)
    phantoms = prepare_cases(
        synthetic_cases(run_dir / "phantoms", config, FLARE22), run_dir / "cache", config, synthetic=True
    )
    assert [case.weight for case in real + phantoms] == [1.0, 0.5, 0.5]
    sampler = Sampler("stage2", config, FLARE22, False, real + phantoms)
    rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)
    batch = sampler.make_batch(sampler.draw_step(2, rng, generator))
    assert sorted(batch.weights.tolist()) == [0.5, 1.0]


def test_every_self_training_round_trains_on_the_same_phantoms(tmp_path: Path, monkeypatch) -> None:
    from organseg import runs
    from organseg.phantom import write_dataset
    from organseg.selftraining import run_ssl

    data = write_dataset(tmp_path / "data", labeled=2, unlabeled=2, test=0, seed=5, shape=(40, 40, 24))
    calls = []

    def recorded(folder, config, label_set):
        calls.append((folder, synthetic_cases(folder, config, label_set)))
        return calls[-1][1]

    monkeypatch.setattr(runs, "synthetic_cases", recorded)
    overrides = ["synthetic.phantoms=1", "stage1.epochs=1", "stage2.epochs=1", "ssl.rounds=1"]
    run_ssl(discover_dataset(data), tmp_path / "ssl", resolve_config("tiny", overrides=overrides), "cpu")
    assert [folder for folder, _ in calls] == [tmp_path / "ssl" / "phantoms"] * 2  # the teacher, then the student
    assert calls[0][1] == calls[1][1] and len(calls[0][1]) == 1
    assert (tmp_path / "ssl" / "cache" / "synthetic_phantom_001.json").is_file()
