"""Folders written atomically: complete under their name or not there, and swept when a kill leaves them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from organseg.atomic import atomic_folder, sweep_partials


def test_a_folder_appears_whole_with_usual_permissions_or_not_at_all(tmp_path: Path) -> None:
    with atomic_folder(tmp_path / "done") as staging:
        (staging / "a.txt").write_text("a")
        assert not (tmp_path / "done").exists()
    assert (tmp_path / "done" / "a.txt").read_text() == "a"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "done").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0o700
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "failed") as staging:
        (staging / "b.txt").write_text("b")
        raise RuntimeError("killed")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["done"]
    # What a killed process leaves (a staging folder) is swept like a partial file.
    (tmp_path / ".killed.partial-1234").mkdir()
    (tmp_path / ".killed.partial-1234" / "c.txt").write_text("c")
    assert sweep_partials(tmp_path) == 1 and sorted(path.name for path in tmp_path.iterdir()) == ["done"]
