"""A trained model from a folder: a run (PyTorch engine) or an exported model (ONNX Runtime engine).

`organseg predict` takes either folder (pseudo-labeling and self-training take runs). The
engine is chosen by what the folder holds, and imported only then: predicting from an
exported model never imports torch, so it runs where torch is not installed.
"""

from __future__ import annotations

from pathlib import Path

from organseg.cascade import Segmenter
from organseg.errors import InputError
from organseg.export_folder import is_export


def open_segmenter(folder: Path, device: str = "auto") -> Segmenter:
    """The Segmenter of a run folder (organseg train) or an exported model folder (organseg export)."""
    folder = Path(folder)
    if is_export(folder):
        if device not in ("auto", "cpu"):
            raise InputError(f"--device {device}: an exported model runs on the CPU; use --device cpu or auto")
        from organseg.onnx_stage import segmenter_from_export

        return segmenter_from_export(folder)
    try:
        from organseg.network_stage import segmenter_from_run
    except ImportError as error:
        if (error.name or "").split(".")[0] != "torch":
            raise
        raise InputError(
            f"{folder}: predicting from a run folder needs PyTorch, which is not installed here; "
            'install it (pip install "organseg[train]"), or predict from an exported model (organseg export)'
        ) from None
    return segmenter_from_run(folder, device)
