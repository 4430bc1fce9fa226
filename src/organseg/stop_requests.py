"""Requests from outside to checkpoint or stop training: SIGUSR1 and SIGTERM.

Job schedulers end a job with SIGTERM and a grace period (SLURM pre-emption, Kubernetes);
SLURM's `--signal=USR1@90` asks for a checkpoint ahead of a time limit. While a stage
trains (`StopRequests` as a `with` block), these signals only set a flag. The training
loop takes it after every optimiser step (`take`), so a checkpoint never holds half a step:

- SIGUSR1: last.pt is written, mid-epoch if need be, and training goes on;
- SIGTERM: last.pt is written and training stops (organseg.errors.Preempted); `--resume`
  continues exactly where it stopped.

Under several processes the signal reaches them at different steps, so after each step
they agree: any process's request counts for all (World.agree, over a CPU process group
that does not wait for the GPU), and every process checkpoints at the same step.
"""

from __future__ import annotations

import logging
import signal
import threading

from organseg.distributed import World

log = logging.getLogger(__name__)

NONE, CHECKPOINT, STOP = 0, 1, 2  # ordered: a stop includes a checkpoint
_REQUEST_OF_SIGNAL = {"SIGUSR1": CHECKPOINT, "SIGTERM": STOP}


class StopRequests:
    """The checkpoint and stop requests that arrive while the `with` block runs."""

    def __init__(self) -> None:
        self._request = NONE
        self._signal_name = ""
        self._previous: dict[int, object] = {}

    def take(self, world: World) -> int:
        """NONE, CHECKPOINT or STOP, agreed by every process; a request is taken once."""
        request, self._request = self._request, NONE
        return world.agree(request) if world.is_distributed else request

    @property
    def signal_name(self) -> str:
        """The last signal received ("SIGTERM", "SIGUSR1"), or "" if none."""
        return self._signal_name

    def __enter__(self) -> StopRequests:
        # Handlers can only be set from the main thread; elsewhere the defaults stay.
        if threading.current_thread() is threading.main_thread():
            for name in _REQUEST_OF_SIGNAL:
                number = getattr(signal, name, None)  # no SIGUSR1 on Windows
                if number is not None:
                    self._previous[number] = signal.signal(number, self._receive)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _receive(self, number: int, _frame) -> None:
        name = signal.Signals(number).name
        self._request = max(self._request, _REQUEST_OF_SIGNAL[name])
        self._signal_name = name
        log.info("%s received: checkpoint after this step%s", name, ", then stop" if name == "SIGTERM" else "")
