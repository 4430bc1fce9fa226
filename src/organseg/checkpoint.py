"""Checkpoints: weights and training state as plain data, loaded with `weights_only=True`.

A checkpoint holds tensors, numbers, strings, lists and dicts only: the resolved config
and label map go in as plain dicts. Loading never unpickles arbitrary objects, so a
crafted file cannot run code; it is refused with a clear message instead.
"""

from __future__ import annotations

import pickle
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
