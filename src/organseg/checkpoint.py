"""Checkpoints: weights and training state as plain data, loaded with `weights_only=True`.

A checkpoint holds tensors, numbers, strings, lists and dicts only: the resolved config
and label map go in as plain dicts. Loading never unpickles arbitrary objects, so a
crafted file cannot run code; it is refused with a clear message instead.
"""

from __future__ import annotations

import pickle
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from organseg.atomic import atomic_write
from organseg.errors import InputError

FORMAT = "organseg-checkpoint-1"


def save_checkpoint(path: Path, content: dict) -> None:
    """Write `content` (plain data and tensors) atomically, tagged with the format."""
    with atomic_write(path) as temporary:
        torch.save({"format": FORMAT, **content}, temporary)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint`; anything else is refused."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found; train first or check the run folder")
    try:
        content = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "unsafe content"
        raise InputError(f"{path}: refused: the file holds objects other than plain data ({first_line})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable checkpoint ({error}); retrain or restore the file") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise InputError(f"{path}: not an organseg checkpoint")
    return content


class CheckpointWriter:
    """Writes checkpoints in a background thread, so training goes on while a file is written.

    `write` first copies the tensors to host memory (a snapshot that later steps do not
    change), then hands the file writes to one thread, in order. Only one write is ever
    pending: the next `write` waits for it, and so does leaving the `with` block, which
    also raises a failed write's error (a full disk) instead of losing it.
    """

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: Future | None = None

    def write(self, content: dict, *paths: Path) -> None:
        """Write `content` to each of `paths` (atomically, see `save_checkpoint`) after the previous write."""
        self.wait()
        snapshot = _on_host(content)
        self._pending = self._thread.submit(_write_each, snapshot, paths)

    def wait(self) -> None:
        """Block until the pending write is complete; raise its error if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.wait()
        finally:
            self._thread.shutdown()


def _write_each(content: dict, paths: tuple[Path, ...]) -> None:
    for path in paths:
        save_checkpoint(path, content)


def _on_host(value):
    """`value` with every tensor copied to the CPU (nested dicts, lists and tuples)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _on_host(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_on_host(item) for item in value)
    return value
