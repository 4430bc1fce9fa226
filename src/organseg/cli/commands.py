"""What each command does: check its options, call one library function, print the outcome."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys

from organseg.errors import InputError


def run_phantom(args: argparse.Namespace) -> None:
    from organseg.phantom import write_dataset

    for option in ("labeled", "unlabeled", "test", "partial"):
        if getattr(args, option) < 0:
            raise InputError(f"--{option} must be >= 0, got {getattr(args, option)}")
    if args.shape and min(args.shape) < 16:
        raise InputError(f"--shape must be at least 16 voxels per axis, got {args.shape}")
    shape = tuple(args.shape) if args.shape else None
    counts = {"labeled": args.labeled, "unlabeled": args.unlabeled, "test": args.test, "partial": args.partial}
    root = write_dataset(
        args.out,
        seed=args.seed,
        shape=shape,
        dicom=args.dicom,
        phase=args.phase,
        field_of_view=args.fov,
        appearance=args.appearance,
        artefacts=args.artefacts,
        **counts,
    )
    print(f"wrote phantom dataset to {root}")


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
        partial_labels=args.partial_labels,
    )


def run_check(args: argparse.Namespace) -> None:
    from organseg.dataset_checks import check_dataset, describe_dataset

    dataset = _dataset_from_args(args)
    report = check_dataset(dataset)
    print(describe_dataset(dataset, report))
    if report.problems:
        raise InputError("\n".join(report.problems))


def _settings(args: argparse.Namespace, extra: list[str] = ()):
    """The resolved settings of a new run, or None for --resume (which keeps the run's own)."""
    from organseg.config import DEFAULT_PRESET, resolve_config

    if not args.resume:
        return resolve_config(args.preset or DEFAULT_PRESET, args.config, [*args.set, *extra])
    if args.preset or args.config or args.set or extra:
        raise InputError("--resume continues a run with its saved settings; drop --preset, --config and --set")
    return None


def run_train(args: argparse.Namespace) -> None:
    from organseg.distributed import World
    from organseg.runs import run_training

    world = World.from_environment()
    config = _settings(args)
    stages = {"1": ("stage1",), "2": ("stage2",), "both": ("stage1", "stage2")}[args.stage]
    results = run_training(_dataset_from_args(args), args.run_dir, config, stages, args.device, world)
    if not world.is_main:
        return
    for stage, row in results.items():
        print(f"{stage}: {row.get('epoch', 0)} epochs, last loss {row.get('loss', float('nan')):.4f}")
    print(f"model in {args.run_dir}; predict with: organseg predict {args.run_dir} INPUT OUTPUT")


def _worker(args: argparse.Namespace):
    """(shard, device name) of this worker: --shard or its torchrun rank; under torchrun its own GPU."""
    from organseg.shards import worker_shard

    if "WORLD_SIZE" not in os.environ:  # alone: no torchrun, and no torch to import for it
        return worker_shard(args.shard), args.device
    from organseg.distributed import World

    world = World.from_environment()
    return worker_shard(args.shard, world.rank, world.world_size), world.device(args.device)


def run_predict(args: argparse.Namespace) -> None:
    from organseg.dicom.outputs import parse_output_types
    from organseg.export_folder import is_export
    from organseg.predict import profile_paths, run_prediction

    output_types = parse_output_types(args.output_type)
    shard, device = _worker(args)
    if is_export(args.run_dir):
        device = args.device  # an exported model runs on the CPU, whatever GPU torchrun gives a process
    written = run_prediction(args.run_dir, args.input, args.output, device, args.profile, shard, output_types)
    where = "" if shard.is_whole else f" (shard {shard})"
    print(f"wrote {len(written)} file(s) to {args.output}{where}")
    if args.profile and written:
        csv_path, json_path = profile_paths(args.output, shard)
        print(f"efficiency profile: {csv_path}, {json_path}")


def run_export(args: argparse.Namespace) -> None:
    from organseg.export import EXPORT_PACKAGES, export_run

    for package in EXPORT_PACKAGES:  # imported deep inside torch.onnx: check before any work
        _require(package)
    out = export_run(args.run_dir, args.out)
    print(f"exported {args.run_dir} to {out}; predict with: organseg predict {out} INPUT OUTPUT")


def run_pseudo_label(args: argparse.Namespace) -> None:
    from organseg.config import load_config, resolve_config
    from organseg.pseudolabel import run_pseudo_labeling

    saved = args.run_dir / "config.json"
    if not saved.is_file():
        raise InputError(f"{args.run_dir}: no trained model (config.json); run organseg train first")
    if any(not item.strip().startswith("ssl.") for item in args.set):
        raise InputError("pseudo-label takes only ssl.* settings, e.g. --set ssl.filter=threshold")
    config = load_config(saved)
    settings = resolve_config(config.preset, overrides=[*_as_overrides(config.ssl), *args.set]).ssl
    shard, device = _worker(args)
    manifest = run_pseudo_labeling(args.run_dir, args.images_dir, args.out_dir, settings, args.previous, device, shard)
    if manifest is None:
        print(f"shard {shard} done; other shards still have cases: the last to finish writes the manifest")
        return
    kept = sum(row.kept for row in manifest)
    print(f"{len(manifest)} pseudo-label(s), {kept} kept; manifest: {args.out_dir / 'manifest.csv'}")


def _as_overrides(ssl_settings) -> list[str]:
    """The run's saved ssl settings as key=value overrides, so --set applies on top of them."""
    return [f"ssl.{key}={json.dumps(value)}" for key, value in dataclasses.asdict(ssl_settings).items()]


def run_ssl(args: argparse.Namespace) -> None:
    from organseg.selftraining import add_rounds
    from organseg.selftraining import run_ssl as run_rounds

    more_rounds = args.resume and args.rounds is not None
    config = _settings(args, [f"ssl.rounds={args.rounds}"] if args.rounds is not None and not more_rounds else [])
    dataset = _dataset_from_args(args)
    if more_rounds:
        add_rounds(args.run_dir, args.rounds)
    shipped = run_rounds(dataset, args.run_dir, config, args.device)["shipped"]
    print(f"rounds in {args.run_dir}; table: {args.run_dir / 'rounds.md'}")
    print(f"shipped: {shipped['model_dir']}, {shipped['reason']}")
    print(f"predict with it: organseg predict {shipped['model_dir']} IN OUT")


def _check_workers(args: argparse.Namespace) -> None:
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be >= 1, got {args.workers}")


def _label_set(args: argparse.Namespace):
    from organseg.labels import read_dataset_labels

    return read_dataset_labels(args.dataset_json) if args.dataset_json else None


def _require(package: str) -> None:
    """Fail now, not after the work, when an optional package the command needs later is missing
    (main turns the error into one line naming the extra that installs it)."""
    if importlib.util.find_spec(package) is None:
        raise ModuleNotFoundError(f"No module named {package!r}", name=package)


def run_evaluate(args: argparse.Namespace) -> None:
    from organseg.evaluate import run_evaluation

    _require("matplotlib")  # the box plot, drawn after every case is scored
    _check_workers(args)
    out = args.out or args.pred_dir / "evaluation"
    rule = "flare" if args.flare_z_rule else "inclusive"
    result = run_evaluation(args.pred_dir, args.gt_dir, out, _label_set(args), None, rule, args.workers)
    for warning in result.warnings:
        print(f"organseg: warning: {warning}", file=sys.stderr)
    print((out / "summary.md").read_text())
    print(f"results in {out}")


def run_report(args: argparse.Namespace) -> None:
    from organseg.report import run_report as write_report

    _require("matplotlib")
    _check_workers(args)
    out = args.out or args.pred_dir / "report"
    index = write_report(args.pred_dir, out, args.images, args.gt, args.run, _label_set(args), args.workers)
    print(f"report in {index}")


def run_demo(args: argparse.Namespace) -> None:
    from organseg.demo import run_demo as run

    run(args.out, seed=args.seed, quick=args.quick, device=args.device)
