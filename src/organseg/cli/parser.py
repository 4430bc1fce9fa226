"""The commands and their options (argparse only: nothing here reads a file or imports torch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from organseg.cli import commands
from organseg.config import DEFAULT_PRESET, PRESETS
from organseg.config_checks import (
    MIXED,
    PHANTOM_APPEARANCES,
    PHANTOM_ARTEFACTS,
    PHANTOM_FIELDS_OF_VIEW,
    PHANTOM_PHASES,
)

_DEBUG_HELP = "show the traceback on errors"
_QUIET_HELP = "show only warnings and errors (no progress bars)"
_VERBOSE_HELP = "show debugging detail"


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    """--debug, -q and -v, taken before or after the command name."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    volume = parser.add_mutually_exclusive_group()
    volume.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=_QUIET_HELP)
    volume.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP)


def _subcommand(subcommands: argparse._SubParsersAction, name: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand parser that also takes --debug after the command name."""
    command = subcommands.add_parser(name, **kwargs)
    _add_output_options(command)
    command.set_defaults(command=name)
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="organseg",
        description="Semi-supervised two-stage segmentation of 13 abdominal organs in CT.",
    )
    _add_output_options(parser)
    subcommands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_phantom(subcommands)
    _add_check(subcommands)
    _add_train(subcommands)
    _add_predict(subcommands)
    _add_export(subcommands)
    _add_pseudo_label(subcommands)
    _add_ssl(subcommands)
    _add_evaluate(subcommands)
    _add_report(subcommands)
    _add_demo(subcommands)
    return parser


def _add_phantom(subcommands: argparse._SubParsersAction) -> None:
    command = _subcommand(
        subcommands,
        "phantom",
        help="write a synthetic abdominal CT dataset (nnU-Net layout)",
        description="Write synthetic abdominal CT phantoms with 13 labeled organs in the nnU-Net v2 raw layout.",
    )
    command.add_argument("out", type=Path, help="dataset folder to create")
    command.add_argument("--labeled", type=int, default=8, help="labeled training cases (imagesTr/labelsTr)")
    command.add_argument("--unlabeled", type=int, default=0, help="unlabeled cases (imagesUnlabeled)")
    command.add_argument("--test", type=int, default=0, help="held-out test cases (imagesTs/labelsTs)")
    command.add_argument(
        "--partial",
        type=int,
        default=0,
        help="further labeled cases (phantom_pNNN) that each annotate only 1-4 random organs, listed in "
        "dataset.json's partial_labels",
    )
    command.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same data")
    command.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("RL", "AP", "SI"),
        help="voxels along the patient's right-left, front-back and foot-head axes, e.g. 512 512 100 "
        "(stored in each case's random header axis order; default: small, varied per case)",
    )
    command.add_argument(
        "--dicom",
        nargs="?",
        const="mixed",
        metavar="ORIENTATION",
        help="write each image as a DICOM CT series folder in this slice orientation: axial, axial-reversed "
        "(files numbered head to foot), coronal, sagittal, oblique (12 degree tilt), or mixed (the five in "
        "turn, case by case; the default of a bare --dicom); label maps stay NIfTI on the series' grid",
    )
    _add_phantom_looks(command)
    command.set_defaults(handler=commands.run_phantom)


def _add_phantom_looks(command: argparse.ArgumentParser) -> None:
    """What the phantoms look like beside their anatomy: phase, field of view, appearance, artefacts."""
    command.add_argument(
        "--phase",
        default="portal-venous",
        choices=(*PHANTOM_PHASES, MIXED),
        help="contrast phase of the cases: organ and vessel intensities from published ranges per phase; "
        "mixed draws one per case, named in dataset.json's contrast_phases (default: portal-venous)",
    )
    command.add_argument(
        "--fov",
        default="upper-abdomen",
        choices=(*PHANTOM_FIELDS_OF_VIEW, MIXED),
        help="field of view: lung bases to below the kidneys, on to the femoral heads (abdomen-pelvis), or from "
        "the lung apices (thorax-abdomen); mixed draws one per case, named in dataset.json's fields_of_view "
        "(default: upper-abdomen)",
    )
    command.add_argument(
        "--appearance",
        default="realistic",
        choices=(*PHANTOM_APPEARANCES, MIXED),
        help="realistic: intensities of the contrast phase; random: every tissue's intensity drawn at random "
        "(shapes, not intensities, tell the organs apart); mixed draws one per case, named in dataset.json's "
        "appearances (default: realistic)",
    )
    command.add_argument(
        "--artefacts",
        default="none",
        choices=(*PHANTOM_ARTEFACTS, MIXED),
        help="metal: a spinal fixation or hip prostheses and the streaks they throw across the organs, "
        "simulated through the scanner's projections (needs scikit-image); mixed draws per case, named in "
        "dataset.json's artefacts (default: none)",
    )


def _add_check(subcommands: argparse._SubParsersAction) -> None:
    command = _subcommand(
        subcommands,
        "check",
        help="validate a dataset folder and summarise it",
        description=(
            "Validate a dataset before any work starts: every problem is reported in one pass, "
            "one line each. Give an nnU-Net v2 raw dataset folder, or explicit folders."
        ),
    )
    _add_dataset_arguments(command)
    command.set_defaults(handler=commands.run_check)


def _add_dataset_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("dataset", type=Path, nargs="?", help="nnU-Net v2 raw dataset folder (with dataset.json)")
    command.add_argument("--images", type=Path, help="folder of labeled training images (default DATASET/imagesTr)")
    command.add_argument("--labels", type=Path, help="folder of training label maps (default DATASET/labelsTr)")
    command.add_argument("--unlabeled", type=Path, action="append", help="folder of unlabeled images (repeatable)")
    command.add_argument("--test-images", type=Path, help="folder of test images (default DATASET/imagesTs)")
    command.add_argument("--test-labels", type=Path, help="folder of test label maps (default DATASET/labelsTs)")
    command.add_argument("--dataset-json", type=Path, help="label definitions (default DATASET/dataset.json)")
    command.add_argument(
        "--partial-labels",
        type=Path,
        help='JSON file {"case id": ["liver", ...]}: the organs each listed labeled case annotates (default: '
        "dataset.json's partial_labels; a case not listed annotates every organ)",
    )


def _add_train(subcommands: argparse._SubParsersAction) -> None:
    command = _subcommand(
        subcommands,
        "train",
        help="train the two-stage model on a dataset's labeled cases",
        description=(
            "Train stage 1 (whole volume, coarse grid) and stage 2 (organ region, fine grid). "
            "Settings: a preset (cpu is the default), then a JSON config file, then --set key=value. "
            "On several GPUs or nodes: torchrun --nproc_per_node N -m organseg train ... (data parallel; "
            "the effective batch is batch_size x N)."
        ),
    )
    _add_dataset_arguments(command)
    command.add_argument("run_dir", type=Path, help="folder for the run: config, checkpoints, logs")
    _add_settings_arguments(command)
    command.add_argument("--stage", choices=("1", "2", "both"), default="both", help="which stage(s) to train")
    command.add_argument("--resume", action="store_true", help="continue an interrupted run from its last epoch")
    _add_device_argument(command)
    command.set_defaults(handler=commands.run_train, distributed=True)


def _add_predict(subcommands: argparse._SubParsersAction) -> None:
    command = _subcommand(
        subcommands,
        "predict",
        help="segment CT images with a trained run or an exported model",
        description=(
            "Segment one image file, one DICOM series folder, or a folder of images. Each label map "
            "is written on exactly the grid of its input (shape, spacing, origin, direction). From an "
            "exported model (organseg export) the networks run in ONNX Runtime, and torch is not needed."
        ),
    )
    command.add_argument(
        "run_dir", type=Path, help="a run folder made by organseg train, or a model folder made by organseg export"
    )
    command.add_argument("input", type=Path, help="image file, DICOM series folder, or folder of images")
    command.add_argument("output", type=Path, help="label map file (for one input) or folder")
    command.add_argument(
        "--output-type",
        default="nifti",
        metavar="TYPES",
        help="comma-separated, one or more of: nifti (label map, the default), dicom-seg (DICOM Segmentation, "
        "for PACS and viewers), rtstruct (RT Structure Set, for treatment planning); the DICOM ones need a "
        "DICOM series input and are written beside the label map path as CASE.seg.dcm, CASE.rtstruct.dcm",
    )
    _add_device_argument(command)
    command.add_argument(
        "--profile",
        action="store_true",
        help="record each case's time, memory, CPU and GPU use (FLARE22 style) in profile.csv and "
        "profile.json in OUTPUT (or CASE.profile.csv/.json beside a single output file)",
    )
    _add_shard_argument(command)
    command.set_defaults(handler=commands.run_predict, distributed=True)


def _add_export(subcommands: argparse._SubParsersAction) -> None:
    command = _subcommand(
        subcommands,
        "export",
        help="export a trained run as ONNX networks plus their pipeline settings, for prediction without torch",
        description=(
            "Write both stages' best networks as ONNX (float32, fixed input shapes of the stage grids, no "
            "deep-supervision heads) and model.json (settings, labels, organseg version, checksums) into the new "
            'folder OUT. organseg predict OUT ... then runs in ONNX Runtime; pip install "organseg[runtime]" '
            "is all it needs. Each network is checked against PyTorch before the folder is written."
        ),
    )
    command.add_argument("run_dir", type=Path, help="a run folder made by organseg train")
    command.add_argument("out", type=Path, help="the new folder of the exported model")
    command.set_defaults(handler=commands.run_export)


def _add_device_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")


def _add_shard_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--shard",
        metavar="I/N",
        help="do only shard I of N of the cases (0 <= I < N; case i goes to shard i mod N in case-id order), "
        "e.g. on N machines or as a SLURM array; under torchrun each process takes its rank's shard by itself",
    )


def _add_settings_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--preset", choices=tuple(PRESETS), help=f"settings to start from (default: {DEFAULT_PRESET})")
    command.add_argument("--config", type=Path, help="JSON file of settings applied over the preset")
    command.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a setting, e.g. stage1.epochs=50"
    )


def _add_pseudo_label(subcommands: argparse._SubParsersAction) -> None:
    command = _subcommand(
        subcommands,
        "pseudo-label",
        help="pseudo-label unlabeled images with a trained run, cleaned and scored",
        description=(
            "Segment every image of IMAGES_DIR with the run's model, clean each label map by connected "
            "components, score it from the model's own evidence and decide which to keep. Writes one "
            "label map per case and OUT_DIR/manifest.csv; a rerun skips finished cases."
        ),
    )
    command.add_argument("run_dir", type=Path, help="a run folder made by organseg train (the teacher)")
    command.add_argument("images_dir", type=Path, help="folder of unlabeled images")
    command.add_argument("out_dir", type=Path, help="folder for the pseudo-labels and the manifest")
    command.add_argument("--previous", type=Path, help="the previous round's pseudo-labels (their agreement is scored)")
    command.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="an ssl setting, e.g. ssl.filter=fraction"
    )
    _add_device_argument(command)
    _add_shard_argument(command)
    command.set_defaults(handler=commands.run_pseudo_label, distributed=True)


def _add_ssl(subcommands: argparse._SubParsersAction) -> None:
    command = _subcommand(
        subcommands,
        "ssl",
        help="semi-supervised training: teacher, pseudo-labels, student, in rounds",
        description=(
            "Train a teacher on the labeled cases, pseudo-label the unlabeled images, train a student "
            "on both (from the teacher's weights, or from scratch with ssl.student_init=scratch), and "
            "repeat with the student as the next teacher. Every round's models, manifests and validation "
            "metrics are kept in RUN_DIR/roundN; the best round by validation is shipped."
        ),
    )
    _add_dataset_arguments(command)
    command.add_argument("run_dir", type=Path, help="folder for all rounds")
    command.add_argument(
        "--rounds", type=int, help="students after the teacher (default: ssl.rounds); with --resume, adds rounds"
    )
    _add_settings_arguments(command)
    command.add_argument("--resume", action="store_true", help="continue an interrupted run")
    _add_device_argument(command)
    command.set_defaults(handler=commands.run_ssl)


def _add_evaluate(subcommands: argparse._SubParsersAction) -> None:
    command = _subcommand(
        subcommands,
        "evaluate",
        help="score predicted label maps against ground truth (FLARE22 DSC and NSD)",
        description=(
            "DSC and NSD per case and organ with the FLARE22 rules: NSD tolerances per organ, "
            "aorta, IVC and esophagus scored on the ground truth's axial slices only. Writes "
            "metrics.csv, summary.json, summary.md, boxplot.png and volumes.csv."
        ),
    )
    command.add_argument("pred_dir", type=Path, help="folder of predicted label maps")
    command.add_argument("gt_dir", type=Path, help="folder of ground-truth label maps (same case names)")
    command.add_argument("--out", type=Path, help="output folder (default: PRED_DIR/evaluation)")
    command.add_argument("--dataset-json", type=Path, help="label definitions (default: FLARE22's 13 organs)")
    command.add_argument("--workers", type=int, help="processes (default: all cores)")
    command.add_argument(
        "--flare-z-rule",
        action="store_true",
        help="reproduce FLARE22's official code exactly: it drops the last ground-truth slice of aorta, IVC "
        "and esophagus (default: all of their slices)",
    )
    command.set_defaults(handler=commands.run_evaluate)


def _add_report(subcommands: argparse._SubParsersAction) -> None:
    command = _subcommand(
        subcommands,
        "report",
        help="an HTML quality report of predicted label maps (pictures, volumes, metrics, curves)",
        description=(
            "Draw every predicted label map in axial, coronal and sagittal planes over its CT, list organ "
            "volumes, and with ground truth add DSC/NSD and prediction-vs-truth pictures; with a run, its "
            "training curves. Open OUT/index.html in a browser (works offline)."
        ),
    )
    command.add_argument("pred_dir", type=Path, help="folder of predicted label maps")
    command.add_argument("--out", type=Path, help="output folder (default: PRED_DIR/report)")
    command.add_argument("--images", type=Path, help="folder of the CT images that were predicted")
    command.add_argument("--gt", type=Path, help="folder of ground-truth label maps (adds metrics)")
    command.add_argument("--run", type=Path, help="the training run folder (adds its curves and logs)")
    command.add_argument("--dataset-json", type=Path, help="label definitions (default: the run's, else FLARE22)")
    command.add_argument("--workers", type=int, help="processes for the metrics (default: all cores)")
    command.set_defaults(handler=commands.run_report)


def _add_demo(subcommands: argparse._SubParsersAction) -> None:
    command = _subcommand(
        subcommands,
        "demo",
        help="the main job on built-in synthetic data",
        description=(
            "Generate a phantom dataset (few labeled, many unlabeled, a test set), train the full-supervision "
            "model and the semi-supervised one (teacher, then three rounds of pseudo-labels and a student, the best "
            "on the validation case shipped), evaluate both on the test set, print the per-organ DSC/NSD table and "
            "write OUT/results.json. About 15 minutes on 2 CPU cores; --quick takes 1-3 minutes. A rerun in the same "
            "folder resumes."
        ),
    )
    command.add_argument("out", type=Path, nargs="?", default=Path("organseg_demo"), help="output folder")
    command.add_argument("--seed", type=int, default=0, help="random seed")
    command.add_argument("--quick", action="store_true", help="a smaller, faster version")
    _add_device_argument(command)
    command.set_defaults(handler=commands.run_demo)
