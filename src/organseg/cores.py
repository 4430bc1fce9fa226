"""The CPU cores this process may run on."""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on: a container's or taskset's share, not the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # not on Linux


def threads_per_process(environ: dict[str, str] | None = None) -> int:
    """Compute threads for each of the processes torchrun starts on this machine: an even share of the cores.

    torchrun sets OMP_NUM_THREADS=1 in every process it starts unless told otherwise, which
    leaves a 32-core node with 4 GPUs computing on 4 cores (resampling, validation, the
    loss on the CPU). Any other OMP_NUM_THREADS is the user's choice and kept.
    """
    environ = os.environ if environ is None else environ
    chosen = environ.get("OMP_NUM_THREADS", "1")
    if chosen.isdigit() and int(chosen) > 1:
        return int(chosen)
    processes = int(environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, available_cores() // max(1, processes))
