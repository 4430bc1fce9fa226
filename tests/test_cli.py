"""The command line as a user meets it: real subprocesses, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from organseg.cli import main


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "organseg", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("organseg: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("phantom", "check", "demo"):
        assert command in result.stdout


def test_help_does_not_import_heavy_modules() -> None:
    code = "import sys; from organseg.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False"


def test_missing_dataset_is_one_line_without_traceback(tmp_path: Path) -> None:
    assert_one_line_error(run("check", str(tmp_path / "absent")), str(tmp_path / "absent"), "not found")


@pytest.mark.parametrize("position", ["before", "after"])
def test_debug_shows_the_traceback(tmp_path: Path, position: str) -> None:
    args = ["check", str(tmp_path / "absent")]
    args = ["--debug", *args] if position == "before" else [*args, "--debug"]
    result = run(*args)
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_phantom_refuses_negative_counts_and_non_empty_output(tmp_path: Path) -> None:
    assert_one_line_error(run("phantom", str(tmp_path / "x"), "--labeled", "-1"), "--labeled")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("keep me")
    assert_one_line_error(run("phantom", str(tmp_path / "busy"), "--labeled", "1"), str(tmp_path / "busy"))
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["file.txt"]


def test_unwritable_output_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    result = run("phantom", str(blocker / "dataset"), "--labeled", "1")
    assert_one_line_error(result, str(blocker))


def test_internal_errors_are_one_line_too(monkeypatch, capsys) -> None:
    def explode(args) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("organseg.cli.commands.run_check", explode)
    assert main(["check", "whatever"]) == 1
    error = capsys.readouterr().err
    assert error.strip() == "organseg: error: internal error: RuntimeError: boom (rerun with --debug for the traceback)"


def test_ssl_resume_may_add_rounds_but_not_drop_them(tmp_path: Path) -> None:
    from organseg.config import load_config, resolve_config, save_config

    run_dir = tmp_path / "ssl"
    run_dir.mkdir()
    save_config(resolve_config("tiny", overrides=["ssl.rounds=2"]), run_dir / "config.json")
    assert run("phantom", str(tmp_path / "data"), "--labeled", "2", "--unlabeled", "1", "--test", "0").returncode == 0
    result = run("ssl", str(tmp_path / "data"), str(run_dir), "--resume", "--rounds", "1")
    assert_one_line_error(result, str(run_dir), "has 2 rounds", "--rounds 2 or more")
    assert load_config(run_dir / "config.json").ssl.rounds == 2
    result = run("ssl", str(tmp_path / "data"), str(run_dir), "--resume", "--rounds", "3", "--set", "seed=1")
    assert_one_line_error(result, "--resume continues a run with its saved settings")
    assert load_config(run_dir / "config.json").ssl.rounds == 2
