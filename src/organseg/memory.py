"""Keeping the memory of a long batch flat: large arrays go back to the operating system when freed.

glibc's malloc serves a request above its mmap threshold with a memory map of its own,
unmapped when freed. By default the threshold rises each time such a block is freed (up
to 32 MB on 64-bit), after which a full-size CT's arrays come from the heap instead,
whose freed pages glibc keeps. Measured on a 20-case batch of 512x512x100 CTs
(benchmarks/bench_cpu_inference.py): peak RSS rose from 666 to 953 MB; with the threshold
fixed at 1 MiB it stayed between 642 and 746 MB, the spread of the cases' own sizes.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20


def return_large_blocks_to_the_system(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold; True when set, False where the C library is not glibc.

    Setting the threshold also stops its dynamic rise. Blocks above it cost a map and an
    unmap each: negligible next to filling megabytes.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to set
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, threshold_bytes))
