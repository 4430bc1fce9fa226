"""Wall-clock time spent in each named phase of a pipeline (read, stage 1, write, ...).

`PhaseClock.phase(name)` times a block and adds the seconds to that name; `take` returns
what was recorded since the last `take` and starts afresh, so one clock serves a batch of
cases, one case at a time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

# The phases of predicting one case, in order: `organseg predict` reads and writes, the
# cascade (organseg.cascade.Segmenter) does the rest.
PREDICT_PHASES = (
    "read",
    "normalise",  # canonical orientation, clip to the window, z-score statistics
    "resample_1",  # the whole volume to stage 1's grid
    "stage_1",
    "locate",  # the organs' box from stage 1
    "resample_2",  # the box to stage 2's grid
    "stage_2",
    "resample_back",  # stage 2's winning class on the box's voxels
    "clean_up",  # largest component per organ
    "restore_orientation",  # pasted into the input's axis order
    "write",
)


class PhaseClock:
    """Seconds per phase, in the order the phases first ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def take(self) -> dict[str, float]:
        """The seconds recorded since the last call; the clock starts again from zero."""
        taken, self.seconds = self.seconds, {}
        return taken
