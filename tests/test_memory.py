"""Freed memory goes back to the operating system between cases (organseg.memory), so batches stay flat."""

from __future__ import annotations

import subprocess
import sys

import pytest

from organseg.memory import release_free_memory

# Free a 24 MB block (glibc then raises its mmap threshold to 24 MB by default; it does so
# for blocks up to 32 MB), then allocate and free 16 MB: that now comes from the heap, and
# its pages stay with the process until released. Prints what the second block left.
SCRIPT = """
import sys, numpy as np, psutil
from organseg.memory import release_free_memory
process = psutil.Process()
block = np.ones(24 << 20, np.uint8); del block
before = process.memory_info().rss
block = np.ones(16 << 20, np.uint8); del block
if sys.argv[1] == "released":
    assert release_free_memory()
print((process.memory_info().rss - before) / 2**20)
"""


def _left_behind_mb(mode: str) -> float:
    result = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return float(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_freed_heap_block_is_returned_only_when_released() -> None:
    assert release_free_memory()
    assert _left_behind_mb("kept") > 12  # the trap: the freed block stays resident
    assert _left_behind_mb("released") < 2
