"""The import contracts in pyproject.toml ([tool.importlinter]) hold, and they can fail.

The contracts are run with import-linter's own command, as .ci/run runs them: once on the
package as it is, and on copies of it with a wrong-way import added, against a config file
written from pyproject.toml (so the contracts tested here are the ones CI checks).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
NAMES = {contract["id"]: contract["name"] for contract in CONFIG["contracts"]}


def _lint_imports(config: Path, src: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports with `config`, finding the package organseg in `src`."""
    script = Path(sys.executable).with_name("lint-imports")
    if script.exists():
        command = [str(script)]
    else:
        command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]
    path = os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [*command, "--no-cache", str(config)],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _toml(config: dict) -> str:
    """[tool.importlinter] as TOML (its values are strings, booleans and lists of strings)."""

    def pairs(table: dict) -> list[str]:
        return [f"{key} = {json.dumps(value)}" for key, value in table.items() if key != "contracts"]

    lines = ["[tool.importlinter]", *pairs(config)]
    for contract in config["contracts"]:
        lines += ["", "[[tool.importlinter.contracts]]", *pairs(contract)]
    return "\n".join(lines) + "\n"


def _broken_copy(
    tmp_path: Path, metrics_import: str, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Copy the package, append `metrics_import` to its metrics.py and lint the copy."""
    package = tmp_path / "src" / "organseg"
    shutil.copytree(ROOT / "src" / "organseg", package, ignore=shutil.ignore_patterns("__pycache__"))
    for name, text in (extra or {}).items():
        (package / name).write_text(text, encoding="utf-8")
    metrics = package / "metrics.py"
    metrics.write_text(metrics.read_text(encoding="utf-8") + f"\n{metrics_import}\n", encoding="utf-8")
    config = tmp_path / "importlinter.toml"
    config.write_text(_toml(CONFIG), encoding="utf-8")
    return _lint_imports(config, tmp_path / "src", tmp_path)


def test_the_package_keeps_its_import_contracts() -> None:
    result = _lint_imports(ROOT / "pyproject.toml", ROOT / "src", ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for name in NAMES.values():
        assert f"{name} KEPT" in output, output


def test_a_low_layer_importing_a_high_one_breaks_both_contracts(tmp_path: Path) -> None:
    result = _broken_copy(tmp_path, "import organseg.train  # the wrong way: metrics is below train")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"{NAMES['layers']} BROKEN" in output, output
    assert f"{NAMES['no-torch-in-reporting']} BROKEN" in output, output
    assert "organseg.metrics is not allowed to import organseg.train" in output, output
    assert "organseg.metrics is not allowed to import torch" in output, output


def test_an_indirect_torch_import_breaks_the_forbidden_contract(tmp_path: Path) -> None:
    # _uses_torch is in no layer, so only the forbidden contract sees metrics -> _uses_torch -> torch.
    result = _broken_copy(tmp_path, "import organseg._uses_torch", {"_uses_torch.py": "import torch\n"})
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"{NAMES['no-torch-in-reporting']} BROKEN" in output, output
    assert "organseg.metrics is not allowed to import torch" in output, output
    assert "organseg._uses_torch -> torch" in output, output
