"""The `organseg` command line: argument parsing only; each subcommand calls one function.

Heavy modules (torch, SimpleITK, matplotlib) are imported inside the handlers so that
`organseg --help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
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
        _refuse_torchrun_unless_supported(args)
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


def _refuse_torchrun_unless_supported(args: argparse.Namespace) -> None:
    """Under torchrun, only the commands that split their work over the processes run (else each would redo it all)."""
    if "WORLD_SIZE" not in os.environ or getattr(args, "distributed", False):
        return
    from organseg.distributed import World

    if World.from_environment().is_distributed:
        raise InputError(
            f"{args.command} runs in one process; under torchrun run train, predict or pseudo-label (or drop torchrun)"
        )


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
    command.set_defaults(command=name)
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
    _add_pseudo_label(commands)
    _add_ssl(commands)
    _add_evaluate(commands)
    _add_report(commands)
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
        progress=sys.stderr.isatty(),
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
            "Settings: a preset (cpu is the default), then a JSON config file, then --set key=value. "
            "On several GPUs or nodes: torchrun --nproc_per_node N -m organseg train ... (data parallel; "
            "the effective batch is batch_size x N)."
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
    command.set_defaults(handler=_run_train, distributed=True)


def _run_train(args: argparse.Namespace) -> None:
    from organseg.config import DEFAULT_PRESET, resolve_config
    from organseg.distributed import World
    from organseg.runs import run_training

    world = World.from_environment()
    config = None
    if not args.resume:
        config = resolve_config(args.preset or DEFAULT_PRESET, args.config, args.set)
    elif args.preset or args.config or args.set:
        raise InputError("--resume continues a run with its saved settings; drop --preset, --config and --set")
    stages = {"1": ("stage1",), "2": ("stage2",), "both": ("stage1", "stage2")}[args.stage]
    dataset = _dataset_from_args(args)
    progress = sys.stderr.isatty()
    results = run_training(dataset, args.run_dir, config, stages, args.device, args.resume, progress, world=world)
    if not world.is_main:
        return
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
    command.add_argument(
        "--profile",
        action="store_true",
        help="record each case's time, memory, CPU and GPU use (FLARE22 style) in profile.csv and "
        "profile.json in OUTPUT (or CASE.profile.csv/.json beside a single output file)",
    )
    _add_shard_argument(command)
    command.set_defaults(handler=_run_predict, distributed=True)


def _add_shard_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--shard",
        metavar="I/N",
        help="do only shard I of N of the cases (0 <= I < N; case i goes to shard i mod N in case-id order), "
        "e.g. on N machines or as a SLURM array; under torchrun each process takes its rank's shard by itself",
    )


def _worker(args: argparse.Namespace):
    """(shard, device name) of this worker: --shard or its torchrun rank; under torchrun its own GPU."""
    from organseg.distributed import World
    from organseg.shards import worker_shard

    world = World.from_environment()
    return worker_shard(args.shard, world.rank, world.world_size), world.device(args.device)


def _run_predict(args: argparse.Namespace) -> None:
    from organseg.predict import profile_paths, run_prediction

    shard, device = _worker(args)
    progress = sys.stderr.isatty()
    written = run_prediction(args.run_dir, args.input, args.output, device, progress, args.profile, shard)
    where = "" if shard.is_whole else f" (shard {shard})"
    print(f"wrote {len(written)} label map(s) to {args.output}{where}")
    if args.profile and written:
        csv_path, json_path = profile_paths(args.output, shard)
        print(f"efficiency profile: {csv_path}, {json_path}")


def _add_settings_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--preset", choices=("cpu", "paper", "tiny"), help="settings to start from (default: cpu)")
    command.add_argument("--config", type=Path, help="JSON file of settings applied over the preset")
    command.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a setting, e.g. stage1.epochs=50"
    )


def _add_pseudo_label(commands: argparse._SubParsersAction) -> None:
    command = _subcommand(
        commands,
        "pseudo-label",
        help="pseudo-label unlabelled images with a trained run, cleaned and scored",
        description=(
            "Segment every image of IMAGES_DIR with the run's model, clean each label map by connected "
            "components, score it from the model's own evidence and decide which to keep. Writes one "
            "label map per case and OUT_DIR/manifest.csv; a rerun skips finished cases."
        ),
    )
    command.add_argument("run_dir", type=Path, help="a run folder made by organseg train (the teacher)")
    command.add_argument("images_dir", type=Path, help="folder of unlabelled images")
    command.add_argument("out_dir", type=Path, help="folder for the pseudo-labels and the manifest")
    command.add_argument("--previous", type=Path, help="the previous round's pseudo-labels (their agreement is scored)")
    command.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="an ssl setting, e.g. ssl.filter=fraction"
    )
    command.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    _add_shard_argument(command)
    command.set_defaults(handler=_run_pseudo_label, distributed=True)


def _run_pseudo_label(args: argparse.Namespace) -> None:
    from organseg.config import Config, from_dict, resolve_config
    from organseg.pseudolabel import run_pseudo_labelling

    saved = args.run_dir / "config.json"
    if not saved.is_file():
        raise InputError(f"{args.run_dir}: no trained model (config.json); run organseg train first")
    if any(not item.strip().startswith("ssl.") for item in args.set):
        raise InputError("pseudo-label takes only ssl.* settings, e.g. --set ssl.filter=threshold")
    config = from_dict(json.loads(saved.read_text()), base=Config(), source=str(saved))
    settings = resolve_config(config.preset, overrides=[*_as_overrides(config.ssl), *args.set]).ssl
    shard, device = _worker(args)
    manifest = run_pseudo_labelling(
        args.run_dir, args.images_dir, args.out_dir, settings, args.previous, device, sys.stderr.isatty(), shard
    )
    if manifest is None:
        print(f"shard {shard} done; other shards still have cases: the last to finish writes the manifest")
        return
    kept = sum(row.kept for row in manifest)
    print(f"{len(manifest)} pseudo-label(s), {kept} kept; manifest: {args.out_dir / 'manifest.csv'}")


def _as_overrides(ssl_settings) -> list[str]:
    """The run's saved ssl settings as key=value overrides, so --set applies on top of them."""
    import dataclasses

    return [f"ssl.{key}={json.dumps(value)}" for key, value in dataclasses.asdict(ssl_settings).items()]


def _add_ssl(commands: argparse._SubParsersAction) -> None:
    command = _subcommand(
        commands,
        "ssl",
        help="semi-supervised training: teacher, pseudo-labels, student, in rounds",
        description=(
            "Train a teacher on the labelled cases, pseudo-label the unlabelled images, train a student "
            "from scratch on both, and repeat with the student as the next teacher. Every round's models, "
            "manifests and validation metrics are kept in RUN_DIR/roundN."
        ),
    )
    _add_dataset_arguments(command)
    command.add_argument("run_dir", type=Path, help="folder for all rounds")
    command.add_argument("--rounds", type=int, help="students after the teacher (default: ssl.rounds, 1)")
    _add_settings_arguments(command)
    command.add_argument("--resume", action="store_true", help="continue an interrupted run")
    command.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    command.set_defaults(handler=_run_ssl)


def _run_ssl(args: argparse.Namespace) -> None:
    from organseg.config import DEFAULT_PRESET, resolve_config
    from organseg.selftraining import run_ssl

    config = None
    if not args.resume:
        rounds = [f"ssl.rounds={args.rounds}"] if args.rounds is not None else []
        config = resolve_config(args.preset or DEFAULT_PRESET, args.config, [*args.set, *rounds])
    elif args.preset or args.config or args.set or args.rounds is not None:
        raise InputError("--resume continues a run with its saved settings; drop --preset, --config, --set, --rounds")
    run_ssl(_dataset_from_args(args), args.run_dir, config, args.device, args.resume, sys.stderr.isatty())
    print(f"rounds in {args.run_dir}; table: {args.run_dir / 'rounds.md'}")


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


def _add_report(commands: argparse._SubParsersAction) -> None:
    command = _subcommand(
        commands,
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
    command.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> None:
    from organseg.labels import read_dataset_labels
    from organseg.qa_report import run_qa_report

    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be >= 1, got {args.workers}")
    label_set = read_dataset_labels(args.dataset_json) if args.dataset_json else None
    out = args.out or args.pred_dir / "report"
    index = run_qa_report(
        args.pred_dir, out, args.images, args.gt, args.run, label_set, args.workers, progress=sys.stderr.isatty()
    )
    print(f"report in {index}")


def _add_demo(commands: argparse._SubParsersAction) -> None:
    command = _subcommand(
        commands,
        "demo",
        help="the main job on built-in synthetic data",
        description=(
            "Generate a phantom dataset (few labelled, many unlabelled, a test set), train the full-supervision "
            "model and the semi-supervised one (teacher, then two rounds of pseudo-labels and a student), evaluate "
            "both on the test set, print the per-organ DSC/NSD table and write OUT/results.json. About 10 minutes "
            "on 2 CPU cores with native bf16, longer in float32; --quick takes 1-3 minutes. A rerun in the same "
            "folder resumes."
        ),
    )
    command.add_argument("out", type=Path, nargs="?", default=Path("organseg_demo"), help="output folder")
    command.add_argument("--seed", type=int, default=0, help="random seed")
    command.add_argument("--quick", action="store_true", help="a smaller, faster version")
    command.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    command.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> None:
    from organseg.demo import run_demo

    run_demo(args.out, seed=args.seed, quick=args.quick, device=args.device)
