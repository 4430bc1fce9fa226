"""The `organseg` command line: argument parsing only; each subcommand calls one function.

Heavy modules (torch, SimpleITK, matplotlib) are imported inside the handlers so that
`organseg --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from pathlib import Path

from organseg.errors import InputError

EXIT_INPUT_ERROR = 2
EXIT_INTERNAL_ERROR = 1


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_INPUT_ERROR
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            args.handler(args)
    except InputError as error:
        return _fail(args, str(error), EXIT_INPUT_ERROR)
    except OSError as error:
        return _fail(args, _describe_os_error(error), EXIT_INPUT_ERROR)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", 130)
    except Exception as error:  # noqa: BLE001 - last resort: one line instead of a traceback
        message = f"internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)"
        return _fail(args, message, EXIT_INTERNAL_ERROR)
    return 0


def _fail(args: argparse.Namespace, message: str, status: int) -> int:
    if getattr(args, "debug", False):
        traceback.print_exc()
    for line in message.splitlines() or [""]:
        print(f"organseg: error: {line}", file=sys.stderr)
    return status


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line for people, without the source location."""
    print(f"organseg: warning: {message}", file=sys.stderr)


def _describe_os_error(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename else ""
    reason = error.strerror or str(error)
    return f"{where}{reason}; check the path, its permissions and free disk space"


_DEBUG_HELP = "show the traceback on errors"


def _subcommand(commands: argparse._SubParsersAction, name: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand parser that also takes --debug after the command name."""
    command = commands.add_parser(name, **kwargs)
    command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="organseg",
        description="Semi-supervised two-stage segmentation of 13 abdominal organs in CT.",
    )
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_phantom(commands)
    _add_check(commands)
    _add_train(commands)
    _add_predict(commands)
    _add_evaluate(commands)
    _add_demo(commands)
    return parser


def _add_phantom(commands: argparse._SubParsersAction) -> None:
    command = _subcommand(
        commands,
        "phantom",
        help="write a synthetic abdominal CT dataset (nnU-Net layout)",
        description="Write synthetic abdominal CT phantoms with 13 labelled organs in the nnU-Net v2 raw layout.",
    )
    command.add_argument("out", type=Path, help="dataset folder to create")
    command.add_argument("--labeled", type=int, default=8, help="labelled training cases (imagesTr/labelsTr)")
    command.add_argument("--unlabeled", type=int, default=0, help="unlabelled cases (imagesUnlabeled)")
    command.add_argument("--test", type=int, default=0, help="held-out test cases (imagesTs/labelsTs)")
    command.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same data")
    command.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("RL", "AP", "SI"),
        help="voxels along the patient's right-left, front-back and foot-head axes, e.g. 512 512 100 "
        "(stored in each case's random header axis order; default: small, varied per case)",
    )
    command.set_defaults(handler=_run_phantom)


def _run_phantom(args: argparse.Namespace) -> None:
    from organseg.phantom import write_dataset

    for option in ("labeled", "unlabeled", "test"):
        if getattr(args, option) < 0:
            raise InputError(f"--{option} must be >= 0, got {getattr(args, option)}")
    if args.shape and min(args.shape) < 16:
        raise InputError(f"--shape must be at least 16 voxels per axis, got {args.shape}")
    root = write_dataset(
        args.out,
        labeled=args.labeled,
        unlabeled=args.unlabeled,
        test=args.test,
        seed=args.seed,
        shape=tuple(args.shape) if args.shape else None,
    )
    print(f"wrote phantom dataset to {root}")


def _add_check(commands: argparse._SubParsersAction) -> None:
    command = _subcommand(
        commands,
        "check",
        help="validate a dataset folder and summarise it",
        description=(
            "Validate a dataset before any work starts: every problem is reported in one pass, "
            "one line each. Give an nnU-Net v2 raw dataset folder, or explicit folders."
        ),
    )
    _add_dataset_arguments(command)
    command.set_defaults(handler=_run_check)


def _add_dataset_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("dataset", type=Path, nargs="?", help="nnU-Net v2 raw dataset folder (with dataset.json)")
    command.add_argument("--images", type=Path, help="folder of labelled training images (default DATASET/imagesTr)")
    command.add_argument("--labels", type=Path, help="folder of training label maps (default DATASET/labelsTr)")
    command.add_argument("--unlabeled", type=Path, action="append", help="folder of unlabelled images (repeatable)")
    command.add_argument("--test-images", type=Path, help="folder of test images (default DATASET/imagesTs)")
    command.add_argument("--test-labels", type=Path, help="folder of test label maps (default DATASET/labelsTs)")
    command.add_argument("--dataset-json", type=Path, help="label definitions (default DATASET/dataset.json)")


def _dataset_from_args(args: argparse.Namespace):
    from organseg.dataset import discover_dataset

    return discover_dataset(
        args.dataset,
        images=args.images,
        labels=args.labels,
        unlabeled=args.unlabeled,
        test_images=args.test_images,
        test_labels=args.test_labels,
        dataset_json=args.dataset_json,
    )


def _run_check(args: argparse.Namespace) -> None:
    from organseg.validation import summarize, validate_dataset

    dataset = _dataset_from_args(args)
    report = validate_dataset(dataset, progress=sys.stderr.isatty())
    print(summarize(dataset, report))
    if report.problems:
        raise InputError("\n".join(report.problems))


def _add_train(commands: argparse._SubParsersAction) -> None:
    command = _subcommand(
        commands,
        "train",
        help="train the two-stage model on a dataset's labelled cases",
        description=(
            "Train stage 1 (whole volume, coarse grid) and stage 2 (organ region, fine grid). "
            "Settings: a preset (cpu is the default), then a JSON config file, then --set key=value."
        ),
    )
    _add_dataset_arguments(command)
    command.add_argument("run_dir", type=Path, help="folder for the run: config, checkpoints, logs")
    command.add_argument("--preset", choices=("cpu", "paper", "tiny"), help="settings to start from (default: cpu)")
    command.add_argument("--config", type=Path, help="JSON file of settings applied over the preset")
    command.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a setting, e.g. stage1.epochs=50"
    )
    command.add_argument("--stage", choices=("1", "2", "both"), default="both", help="which stage(s) to train")
    command.add_argument("--resume", action="store_true", help="continue an interrupted run from its last epoch")
    command.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    command.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    from organseg.config import DEFAULT_PRESET, resolve_config
    from organseg.runs import run_training

    config = None
    if not args.resume:
        config = resolve_config(args.preset or DEFAULT_PRESET, args.config, args.set)
    elif args.preset or args.config or args.set:
        raise InputError("--resume continues a run with its saved settings; drop --preset, --config and --set")
    stages = {"1": ("stage1",), "2": ("stage2",), "both": ("stage1", "stage2")}[args.stage]
    dataset = _dataset_from_args(args)
    results = run_training(dataset, args.run_dir, config, stages, args.device, args.resume, sys.stderr.isatty())
    for stage, row in results.items():
        print(f"{stage}: {row.get('epoch', 0)} epochs, last loss {row.get('loss', float('nan')):.4f}")
    print(f"model in {args.run_dir}; predict with: organseg predict {args.run_dir} INPUT OUTPUT")


def _add_predict(commands: argparse._SubParsersAction) -> None:
    command = _subcommand(
        commands,
        "predict",
        help="segment CT images with a trained run",
        description=(
            "Segment one image file, one DICOM series folder, or a folder of images. Each label map "
            "is written on exactly the grid of its input (shape, spacing, origin, direction)."
        ),
    )
    command.add_argument("run_dir", type=Path, help="a run folder made by organseg train")
    command.add_argument("input", type=Path, help="image file, DICOM series folder, or folder of images")
    command.add_argument("output", type=Path, help="label map file (for one input) or folder")
    command.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    command.set_defaults(handler=_run_predict)


def _run_predict(args: argparse.Namespace) -> None:
    from organseg.predict import run_prediction

    written = run_prediction(args.run_dir, args.input, args.output, args.device, progress=sys.stderr.isatty())
    print(f"wrote {len(written)} label map(s) to {args.output}")


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    command = _subcommand(
        commands,
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
    command.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> None:
    from organseg.evaluate import run_evaluation
    from organseg.labels import read_dataset_labels

    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be >= 1, got {args.workers}")
    label_set = read_dataset_labels(args.dataset_json) if args.dataset_json else None
    out = args.out or args.pred_dir / "evaluation"
    rule = "flare" if args.flare_z_rule else "inclusive"
    result = run_evaluation(
        args.pred_dir, args.gt_dir, out, label_set, None, rule, args.workers, progress=sys.stderr.isatty()
    )
    for warning in result.warnings:
        print(f"organseg: warning: {warning}", file=sys.stderr)
    print((out / "summary.md").read_text())
    print(f"results in {out}")


def _add_demo(commands: argparse._SubParsersAction) -> None:
    command = _subcommand(
        commands,
        "demo",
        help="the main job on built-in synthetic data",
        description="Generate a synthetic dataset, validate it and draw a case (training arrives with the model).",
    )
    command.add_argument("out", type=Path, nargs="?", default=Path("organseg_demo"), help="output folder")
    command.add_argument("--seed", type=int, default=0, help="random seed")
    command.add_argument("--quick", action="store_true", help="a smaller, faster version")
    command.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> None:
    from organseg.demo import run_demo

    run_demo(args.out, seed=args.seed, quick=args.quick)
