"""The `organseg` command line: argument parsing only; each subcommand calls one function.

Heavy modules (torch, SimpleITK, matplotlib) are imported inside the handlers so that
`organseg --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
import traceback
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
