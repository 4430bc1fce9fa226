"""The ONNX Runtime engine: an exported model (organseg.export_folder) as a Segmenter, without torch.

Everything around the networks (orientation, window, resampling, boxes, clean-up,
pasting) is organseg.cascade's, the code the PyTorch engine runs; only the two network
calls differ. Installed with `pip install "organseg[runtime]"`, which leaves torch out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from organseg.cascade import Segmenter, StageInput
from organseg.config import STAGES, saved_config
from organseg.cores import available_cores
from organseg.errors import InputError
from organseg.export_folder import MANIFEST, read_manifest
from organseg.labels import LabelSet


class OnnxPredictor:
    """One exported stage network as a Predictor, on the CPU."""

    def __init__(self, path: Path, entry: dict, threads: int | None = None):
        runtime = _onnxruntime()
        options = runtime.SessionOptions()
        options.intra_op_num_threads = threads or available_cores()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = runtime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = runtime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = Path(path)
        self.input_name = entry["input"]["name"]
        self.input_shape = tuple(entry["input"]["shape"])
        declared = tuple(self.session.get_inputs()[0].shape)
        if declared != self.input_shape:
            raise InputError(
                f"{path}: the network takes input {declared}, its manifest says {self.input_shape}; "
                "export the run again"
            )

    def __call__(self, stage_input: StageInput) -> np.ndarray:
        image = np.ascontiguousarray(stage_input.image, dtype=np.float32)
        if image.shape != self.input_shape:
            raise InputError(
                f"{self.path}: exported for input {self.input_shape}, asked to run on {image.shape}; "
                "the model's grid and the export disagree, export the run again"
            )
        return self.session.run(None, {self.input_name: image})[0]


def segmenter_from_export(folder: Path, threads: int | None = None) -> Segmenter:
    """The Segmenter of an exported model folder, its networks run by ONNX Runtime on the CPU."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    config = saved_config(manifest["config"], source=str(folder / MANIFEST))
    label_set = LabelSet.from_mapping(manifest["labels"], codes=manifest.get("label_codes"))
    for stage in STAGES:
        # Checked before any case is read: settings and networks from different runs must not meet.
        expected, exported = (1, 1, *getattr(config, stage).grid), tuple(manifest["stages"][stage]["input"]["shape"])
        if exported != expected:
            raise InputError(
                f"{folder / MANIFEST}: {stage}'s grid asks for input {expected}, its network was exported for "
                f"{exported}; export the run again"
            )
    entries = [manifest["stages"][stage] for stage in STAGES]
    stages = [OnnxPredictor(folder / entry["file"], entry, threads) for entry in entries]
    return Segmenter(*stages, config, label_set, tuple(manifest.get("unlearnt", ())), "cpu", "onnxruntime")


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise InputError(
            "predicting with an exported model needs ONNX Runtime, which is not installed here: "
            'pip install "organseg[runtime]"'
        ) from None
    return onnxruntime
