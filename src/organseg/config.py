"""One configuration, with its defaults in one place: presets, a JSON file, `--set` overrides.

A run's resolved configuration is saved as `RUN_DIR/config.json` and inside every
checkpoint, so `predict` needs nothing but the run folder. Three presets:

- `cpu` (the default): the best model we train on the phantom data in about 15 minutes on
  2 CPU cores; also a sensible start for a laptop with real data.
- `paper`: the FLARE 2022 paper's settings: 160^3 grids for both stages, a ~41M parameter
  U-Net per stage, batch 4, AdamW at lr 1e-3 halved every 200 epochs, 1000 epochs.
- `tiny`: seconds per run, for tests.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path

from organseg.augment import AugmentConfig
from organseg.errors import InputError

LR_SCHEDULES = ("halving", "poly")


@dataclass(frozen=True)
class NetConfig:
    """The 3D U-Net of one stage."""

    widths: tuple[int, ...] = (16, 32, 64, 128, 256)  # channels per level, top to bottom
    blocks_per_level: int = 2  # conv-norm-activation blocks per level (the standard U-Net has 2)
    upsample: str = "transpose"  # "transpose" (learned) or "trilinear"
    deep_supervision: bool = False  # loss on every decoder level's output too (training only)


@dataclass(frozen=True)
class StageConfig:
    """Grid, network and optimisation of one stage."""

    grid: tuple[int, int, int] = (160, 160, 160)  # voxels the network sees (paper: 160^3 both stages)
    net: NetConfig = field(default_factory=NetConfig)
    epochs: int = 1000
    iterations_per_epoch: int = 0  # 0: one pass over the training cases per epoch
    batch_size: int = 4
    learning_rate: float = 1e-3
    # "halving": the learning rate halves every lr_halving_epochs epochs (the paper);
    # "poly": it falls smoothly to 0 at the last epoch, lr * (1 - epoch / epochs) ** 0.9 (nnU-Net).
    lr_schedule: str = "halving"
    lr_halving_epochs: int = 200  # the learning rate halves every this many epochs ("halving")
    weight_decay: float = 1e-2  # AdamW's default decoupled weight decay
    val_every: int = 10  # epochs between validations (and best-checkpoint updates)


@dataclass(frozen=True)
class CropConfig:
    """How stage 2's region is chosen from stage 1's organs (inference) or the ground truth (training)."""

    margin_mm: float = 20.0  # added around stage 1's organs at inference
    # Training boxes: each face gets a random margin in this range and a random shift, so
    # stage 2 learns to cope with the boxes an imperfect stage 1 gives.
    train_margin_mm: tuple[float, float] = (5.0, 40.0)
    train_shift_mm: float = 15.0


@dataclass(frozen=True)
class SelfTrainingConfig:
    """Pseudo-labels and self-training rounds (organseg pseudo-label, organseg ssl)."""

    rounds: int = 1  # students trained after the teacher; each becomes the next round's teacher
    # Clean-up of every pseudo-label by connected components (after the largest component per organ).
    min_component_ml: float = 0.1  # pieces smaller than this are removed
    fill_holes: bool = True
    # Voxels where the teacher's top probability is below this are marked "unknown" (255) in
    # the pseudo-label and left out of the student's loss; 0 marks none.
    min_voxel_confidence: float = 0.9  # chosen on validation: benchmarks/RESULTS.md
    # Which pseudo-labelled cases the student learns from, by quality score (see organseg.pseudolabel):
    # "none" keeps all, "threshold" those scoring >= min_score, "fraction" the best keep_fraction.
    filter: str = "none"
    min_score: float = 0.9
    keep_fraction: float = 0.75
    # Mini-batch composition: this share of every batch's samples comes from labelled cases
    # (batch 4 and 0.5: two labelled samples in each batch; with batch 1, a labelled sample
    # every other step), so pseudo-labels cannot crowd the labelled cases out. 0 draws uniformly.
    labeled_fraction: float = 0.5
    pseudo_weight: float = 0.5  # loss weight of a pseudo-labelled sample (a labelled one weighs 1)


@dataclass(frozen=True)
class Config:
    preset: str = "cpu"
    seed: int = 0
    window_hu: tuple[float, float] = (-200.0, 400.0)  # CT clipping window before z-scoring
    label_resampling: str = "linear"  # training targets on the stage grids: "linear" or "nearest"
    precision: str = "auto"  # "auto" (bf16 where the hardware has it), "bf16" or "fp32"
    validation_cases: int = 1  # labelled cases held out for validation (0: none)
    # Cross-entropy class weights (f_background / f_class) ** class_balance, so small organs
    # are learnt early (organseg.losses.class_weights); 0: every voxel weighs the same.
    class_balance: float = 0.0
    largest_component: bool = True  # keep only the largest connected component of each organ
    # What stage 1 segments: "organs" (every organ, as the paper) or "foreground" (one
    # class, all organs together): enough to find the box, and learnt in far fewer steps.
    stage1_target: str = "organs"
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=StageConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    ssl: SelfTrainingConfig = field(default_factory=SelfTrainingConfig)


def _paper() -> Config:
    # 6 levels of (32, 64, 128, 256, 352, 512) channels: 40.8M parameters, as the paper's ~41M U-Net.
    net = NetConfig(widths=(32, 64, 128, 256, 352, 512))
    stage = StageConfig(grid=(160, 160, 160), net=net, epochs=1000, batch_size=4, val_every=10)
    return Config(preset="paper", stage1=stage, stage2=stage, validation_cases=4)


def _cpu() -> Config:
    # Chosen by benchmarks/bench_cpu_preset.py on 2 CPU cores (see benchmarks/RESULTS.md):
    # stage 1 only finds the box, so it learns one foreground class on a small grid; stage 2's
    # 80x64x48 grid keeps the resolution ceiling of default phantoms at a mean DSC of 0.97.
    # Few steps fit in minutes, so the learning rate is high, and the cross-entropy weighs
    # small organs up so they are learnt within those steps. Stage 2 generalises from few
    # cases better with augmentation (no mirroring: the abdomen is not symmetric), a
    # learning rate falling to 0 and deep supervision (run G against run F, two seeds).
    # It is sized for a CPU with native bf16 (AVX-512 BF16 or AMX), where a training step
    # takes about 0.6x the float32 time: there a fifth level and twice run G's steps fit the
    # 15 minutes (run H); in float32 the same training takes about 1.6x as long.
    stage1 = StageConfig(
        grid=(48, 48, 32),
        net=NetConfig(widths=(8, 16, 32, 64)),
        epochs=40,
        batch_size=2,
        learning_rate=1e-2,
        lr_halving_epochs=16,
        val_every=5,
    )
    stage2 = StageConfig(
        grid=(80, 64, 48),
        net=NetConfig(widths=(8, 16, 32, 64, 128), deep_supervision=True),
        epochs=330,  # both stages within 15 min on 2 cores with native bf16 (run H)
        batch_size=2,  # per sample about 2x faster than batch 1 on 2 cores
        learning_rate=1e-2,
        lr_schedule="poly",
        val_every=15,
    )
    return Config(
        preset="cpu",
        stage1=stage1,
        stage2=stage2,
        stage1_target="foreground",
        class_balance=0.5,
        augment=AugmentConfig(mirror_p=0.0),
    )


def _tiny() -> Config:
    net = NetConfig(widths=(4, 8, 16))
    stage = StageConfig(grid=(32, 32, 32), net=net, epochs=2, batch_size=2, lr_halving_epochs=1, val_every=1)
    return Config(preset="tiny", stage1=stage, stage2=stage, crop=CropConfig(margin_mm=10.0))


PRESETS = {"cpu": _cpu, "paper": _paper, "tiny": _tiny}
DEFAULT_PRESET = "cpu"


def resolve_config(preset: str = DEFAULT_PRESET, file: Path | None = None, overrides: list[str] = ()) -> Config:
    """The preset, then the keys of a JSON config file, then `key=value` overrides; validated."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    config = PRESETS[preset]()
    if file is not None:
        config = from_dict(_read_json(Path(file)), base=config, source=str(file))
    for override in overrides:
        key, separator, text = override.partition("=")
        if not separator:
            raise InputError(f"--set {override!r}: write it as key=value, e.g. stage1.epochs=50")
        config = _set(config, key.strip(), _parse_value(text.strip()), source=f"--set {override}")
    validate(config)
    return config


def to_dict(config: Config) -> dict:
    """Plain JSON-ready data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(data: dict, base: Config | None = None, source: str = "config") -> Config:
    """A Config from plain data; keys not given keep `base`'s values; unknown keys are errors."""
    config = base or Config()
    for key, value in _flatten(data):
        config = _set(config, key, value, source=source)
    return config


def save_config(config: Config, path: Path) -> None:
    from organseg.atomic import atomic_write

    with atomic_write(path) as temporary:
        temporary.write_text(json.dumps(to_dict(config), indent=2) + "\n")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error}); fix the config file") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config file must hold a JSON object of settings")
    return data


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, object]]:
    items = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        items += _flatten(value, name + ".") if isinstance(value, dict) else [(name, value)]
    return items


def _parse_value(text: str) -> object:
    """JSON where it parses (numbers, lists, true/false), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _set(config, key: str, value, source: str, prefix: str = ""):
    """A copy of the (nested) dataclass `config` with dotted `key` set to `value`, type-checked."""
    head, _, rest = key.partition(".")
    fields = {f.name: f for f in dataclasses.fields(config)}
    if head not in fields:
        known = ", ".join(sorted(_all_keys(type(config), prefix)))
        raise InputError(f"{source}: unknown setting '{prefix}{key}'; known settings: {known}")
    current = getattr(config, head)
    hints = typing.get_type_hints(type(config))
    if rest:
        if not dataclasses.is_dataclass(current):
            raise InputError(f"{source}: '{head}' has no sub-settings ('{key}')")
        return _replace(config, head, _set(current, rest, value, source, f"{prefix}{head}."), source)
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise InputError(f"{source}: '{key}' is a group of settings; set its keys, e.g. {key}.<name>=...")
        return _replace(config, head, from_dict(value, base=current, source=source), source)
    return _replace(config, head, _coerce(value, hints[head], key, source), source)


def _replace(config, name: str, value, source: str):
    """dataclasses.replace, with a dataclass's own checks turned into a clear message."""
    try:
        return replace(config, **{name: value})
    except ValueError as error:
        raise InputError(f"{source}: {error}") from None


def _coerce(value, hint, key: str, source: str):
    """`value` converted to the field's type, or an InputError saying what was expected."""
    origin = typing.get_origin(hint)
    if origin is types.UnionType:  # `X | None`
        if value is None:
            return None
        return _coerce(value, next(a for a in typing.get_args(hint) if a is not type(None)), key, source)
    if origin is tuple:
        element = typing.get_args(hint)[0]
        if not isinstance(value, list | tuple):
            raise InputError(f"{source}: '{key}' takes a list, e.g. [1, 2, 3]; got {value!r}")
        return tuple(_coerce(v, element, key, source) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise InputError(f"{source}: '{key}' takes true or false; got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{source}: '{key}' takes a whole number; got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{source}: '{key}' takes a number; got {value!r}")
        return float(value)
    if hint is str:
        return str(value)
    raise InputError(f"{source}: '{key}' cannot be set")


def _all_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        keys += _all_keys(hint, f"{prefix}{f.name}.") if dataclasses.is_dataclass(hint) else [prefix + f.name]
    return keys


def validate(config: Config) -> None:
    """Refuse values out of range, naming the setting."""
    problems = []
    check = problems.append
    if config.window_hu[0] >= config.window_hu[1]:
        check(f"window_hu must be [low, high] with low < high, got {list(config.window_hu)}")
    if config.label_resampling not in ("linear", "nearest"):
        check(f"label_resampling must be 'linear' or 'nearest', got '{config.label_resampling}'")
    if config.precision not in ("auto", "bf16", "fp32"):
        check(f"precision must be 'auto', 'bf16' or 'fp32', got '{config.precision}'")
    if config.stage1_target not in ("organs", "foreground"):
        check(f"stage1_target must be 'organs' or 'foreground', got '{config.stage1_target}'")
    if not 0 <= config.class_balance <= 1:
        check(f"class_balance must be in [0, 1], got {config.class_balance}")
    if config.validation_cases < 0:
        check(f"validation_cases must be >= 0, got {config.validation_cases}")
    for name in ("stage1", "stage2"):
        problems += _stage_problems(name, getattr(config, name))
    low, high = config.crop.train_margin_mm
    if config.crop.margin_mm < 0 or low < 0 or high < low or config.crop.train_shift_mm < 0:
        check("crop margins and shift must be >= 0 with train_margin_mm = [low, high], low <= high")
    problems += _ssl_problems(config.ssl)
    if problems:
        raise InputError("invalid configuration: " + "; ".join(problems))


def _ssl_problems(ssl: SelfTrainingConfig) -> list[str]:
    problems = []
    if ssl.rounds < 1:
        problems.append(f"ssl.rounds must be >= 1, got {ssl.rounds}")
    if ssl.min_component_ml < 0:
        problems.append(f"ssl.min_component_ml must be >= 0, got {ssl.min_component_ml}")
    if not 0 <= ssl.min_voxel_confidence < 1:
        problems.append(f"ssl.min_voxel_confidence must be in [0, 1), got {ssl.min_voxel_confidence}")
    if ssl.filter not in ("none", "threshold", "fraction"):
        problems.append(f"ssl.filter must be 'none', 'threshold' or 'fraction', got '{ssl.filter}'")
    if not 0 < ssl.keep_fraction <= 1:
        problems.append(f"ssl.keep_fraction must be in (0, 1], got {ssl.keep_fraction}")
    if not 0 <= ssl.labeled_fraction <= 1:
        problems.append(f"ssl.labeled_fraction must be in [0, 1], got {ssl.labeled_fraction}")
    if not 0 < ssl.pseudo_weight <= 1:
        problems.append(f"ssl.pseudo_weight must be in (0, 1], got {ssl.pseudo_weight}")
    return problems


def _stage_problems(name: str, stage: StageConfig) -> list[str]:
    problems = []
    multiple = 2 ** (len(stage.net.widths) - 1)
    if len(stage.grid) != 3 or any(n < multiple or n % multiple for n in stage.grid):
        problems.append(f"{name}.grid {list(stage.grid)} must be 3 sizes divisible by {multiple} (2^(levels-1))")
    if len(stage.net.widths) < 2 or any(w < 1 for w in stage.net.widths):
        problems.append(f"{name}.net.widths needs at least 2 positive widths, got {list(stage.net.widths)}")
    if stage.net.upsample not in ("transpose", "trilinear"):
        problems.append(f"{name}.net.upsample must be 'transpose' or 'trilinear'")
    for setting in ("epochs", "batch_size", "lr_halving_epochs", "val_every", "net.blocks_per_level"):
        value = stage.net.blocks_per_level if setting.startswith("net.") else getattr(stage, setting)
        if value < 1:
            problems.append(f"{name}.{setting} must be >= 1, got {value}")
    if stage.iterations_per_epoch < 0:
        problems.append(f"{name}.iterations_per_epoch must be >= 0, got {stage.iterations_per_epoch}")
    if stage.lr_schedule not in LR_SCHEDULES:
        problems.append(f"{name}.lr_schedule must be 'halving' or 'poly', got '{stage.lr_schedule}'")
    if not 0 < stage.learning_rate < 1:
        problems.append(f"{name}.learning_rate must be in (0, 1), got {stage.learning_rate}")
    if stage.weight_decay < 0:
        problems.append(f"{name}.weight_decay must be >= 0, got {stage.weight_decay}")
    return problems
