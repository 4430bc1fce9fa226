"""Keeping the memory of a long batch flat: freed memory goes back to the operating system.

glibc's malloc serves a request above its mmap threshold with a memory map of its own,
unmapped when freed. By default the threshold rises each time such a block is freed (up
to 32 MB on 64-bit), after which a full-size CT's arrays come from the heap instead,
whose freed pages glibc keeps. Measured on a 20-case batch of 512x512x100 CTs
(benchmarks/bench_cpu_inference.py): peak RSS rose from 666 to 953 MB.

`release_free_memory` (glibc's malloc_trim) hands those pages back; batch commands call it
between cases. Fixing the threshold low instead would also keep the batch flat, but then
every tensor of a training step is mapped, zeroed and unmapped anew: the demo's training
took 1.8x as long, most of it in the kernel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


def release_free_memory() -> bool:
    """Return the C heap's free pages to the operating system; False where the C library is not glibc."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    trim.argtypes = (ctypes.c_size_t,)
    return trim
