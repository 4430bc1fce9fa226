"""The CPU cores this process may run on."""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on: a container's or taskset's share, not the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # not on Linux
