"""The README's set-up commands are the ones CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()[:12]
    return [line.strip() for line in lines if line.startswith("    ")]


def test_readme_opens_with_the_demo_and_test_commands() -> None:
    demo, tests = _commands()[:2]
    assert demo.endswith("organseg demo") and "torch==2.13.0" in demo
    assert "pytest" in tests and "torch==2.13.0" in tests


def test_ci_runs_the_readme_test_command() -> None:
    tests = _commands()[1]
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()
