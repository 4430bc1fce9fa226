"""One configuration, with its defaults in one place: the dataclass fields below.

The defaults are the `cpu` preset: the best model we train on the phantom data in about 15
minutes on 2 CPU cores, and a sensible start for a laptop with real data. Every other
preset is a short list of differences from them:

- `paper`: the FLARE 2022 paper's settings: 160^3 grids for both stages, a ~41M parameter
  U-Net per stage, batch 4, AdamW at lr 1e-3 halved every 200 epochs, 1000 epochs.
- `tiny`: seconds per run, for tests.

Then a JSON file and `--set key=value` overrides apply. A run's resolved configuration is
saved as `RUN_DIR/config.json` and inside every checkpoint, so `predict` needs nothing but
the run folder.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path

from organseg.config_checks import MIXED, augment_problems, coerce_value, config_problems
from organseg.errors import InputError

# The CT clipping window before z-scoring: wide enough for fat (about -100 HU) and for
# contrast-enhanced kidneys, aorta and IVC (up to about 350 HU).
CT_WINDOW_HU = (-200.0, 400.0)
STAGES = ("stage1", "stage2")  # the cascade's two networks, in the order they run
# nnU-Net's six-level widths (32 doubling to a cap) with a wider bottom, to reach the paper's
# "about 41 M parameters per stage": 40.8 M with 1 input channel and 14 classes, 1.87 TFLOPs
# per 160^3 forward pass (nnU-Net's 320 cap would give 31.2 M).
PAPER_WIDTHS = (32, 64, 128, 256, 352, 512)


@dataclass(frozen=True)
class NetConfig:
    """The 3D U-Net of one stage."""

    widths: tuple[int, ...] = (8, 16, 32, 64, 128)  # channels per level, top to bottom
    blocks_per_level: int = 2  # conv-norm-activation blocks per level (the standard U-Net has 2)
    upsample: str = "transpose"  # "transpose" (learned) or "trilinear"
    deep_supervision: bool = False  # loss on every decoder level's output too (training only)


@dataclass(frozen=True)
class StageConfig:
    """Grid, network and optimisation of one stage (the defaults: stage 2 of the cpu preset)."""

    # Voxels the network sees. 80x64x48 keeps the resolution ceiling of default phantoms
    # at a mean DSC of 0.97 (benchmarks/RESULTS.md).
    grid: tuple[int, int, int] = (80, 64, 48)
    net: NetConfig = field(default_factory=NetConfig)
    epochs: int = 330
    iterations_per_epoch: int = 0  # 0: one pass over the training cases per epoch
    batch_size: int = 2  # on 2 CPU cores, per sample about 2x faster than batch 1
    # Pieces each batch is cut into, one forward and backward pass each; their gradients add
    # up to the whole batch's, so the effective batch stays batch_size with less memory.
    # Training raises it by itself when a step runs out of memory (organseg.train_step).
    micro_batches: int = 1
    # Recompute the full-resolution level's activations in the backward pass instead of
    # keeping them: the paper preset's step keeps 43% less for the backward pass and peaks
    # about 15% lower, for about a quarter more time (benchmarks/RESULTS.md, "Training memory").
    activation_checkpointing: bool = False
    # A high rate: a CPU budget affords few steps.
    learning_rate: float = 1e-2
    # "halving": the learning rate halves every lr_halving_epochs epochs (the paper);
    # "poly": it falls smoothly to 0 at the last epoch, lr * (1 - epoch / epochs) ** 0.9 (nnU-Net).
    lr_schedule: str = "halving"
    lr_halving_epochs: int = 200  # the learning rate halves every this many epochs ("halving")
    weight_decay: float = 1e-2  # AdamW's default decoupled weight decay
    # > 0: validation, best.pt and prediction use an exponential moving average of the
    # weights with this decay per step (organseg.weight_average); 0: the weights as trained.
    weight_average: float = 0.0
    val_every: int = 15  # epochs between validations (and best-checkpoint updates)
    # Epochs between writes of last.pt (the last epoch is always written, and a SIGUSR1 or
    # SIGTERM writes one at the next step): a kill loses at most this many epochs.
    checkpoint_every: int = 1


def _stage1() -> StageConfig:
    # Stage 1 only finds the organs' box: with one foreground class (Config.stage1_target)
    # a small grid and net learn it in few steps.
    return StageConfig(
        grid=(48, 48, 32), net=NetConfig(widths=(8, 16, 32, 64)), epochs=40, lr_halving_epochs=16, val_every=5
    )


def _stage2() -> StageConfig:
    # Few labeled cases generalise better with deep supervision and a rate falling to 0,
    # whose last epochs refine instead of jumping around the minimum.
    return StageConfig(net=NetConfig(deep_supervision=True), lr_schedule="poly")


@dataclass(frozen=True)
class CropConfig:
    """How stage 2's region is chosen from stage 1's organs (inference) or the ground truth (training)."""

    margin_mm: float = 20.0  # added around stage 1's organs at inference
    # At inference, "body": the region is as wide as the body (a threshold finds it), only
    # its depth and height follow stage 1; "organs": all three do (runs saved before this).
    width: str = "body"
    # Training boxes: each face gets a random margin in this range and a random shift, so
    # stage 2 learns to cope with the boxes an imperfect stage 1 gives.
    train_margin_mm: tuple[float, float] = (5.0, 40.0)
    train_shift_mm: float = 15.0


@dataclass(frozen=True)
class AugmentConfig:
    """What to draw for each training patch; every `*_p` is a probability per patch."""

    enabled: bool = True
    rotation_p: float = 0.2
    rotation_max_deg: float = 15.0  # each of the three angles uniform in +-this
    scale_p: float = 0.2
    scale_range: tuple[float, float] = (0.85, 1.15)  # > 1 enlarges the anatomy
    elastic_p: float = 0.2
    elastic_magnitude_vox: float = 4.0  # largest displacement at a control point, voxels
    elastic_control_points: int = 5  # per axis; the field is their trilinear interpolation
    mirror_p: float = 0.0  # per axis in mirror_axes; 0 by default: the abdomen is not symmetric
    mirror_axes: tuple[int, ...] = (0,)  # 0 = left-right, the only symmetric axis of the abdomen
    brightness_p: float = 0.15
    brightness_std: float = 0.1  # additive shift ~ N(0, std), z-score units
    contrast_p: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    gamma_p: float = 0.15
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise_p: float = 0.1
    noise_max_std: float = 0.1  # the noise's standard deviation is uniform in [0, this]
    blur_p: float = 0.1
    blur_sigma_range_vox: tuple[float, float] = (0.5, 1.0)
    image_fill: float | None = None  # image value outside the patch; None repeats the border

    def __post_init__(self) -> None:
        problems = augment_problems(self)
        if problems:
            raise ValueError(problems[0])


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
    # Which pseudo-labeled cases the student learns from, by quality score (see organseg.pseudolabel):
    # "none" keeps all, "threshold" those scoring >= min_score, "fraction" the best keep_fraction.
    filter: str = "none"
    min_score: float = 0.9
    keep_fraction: float = 0.75
    # Mini-batch composition: this share of every batch's samples comes from labeled cases
    # (batch 4 and 0.5: two labeled samples in each batch; with batch 1, a labeled sample
    # every other step), so pseudo-labels cannot crowd the labeled cases out. 0 draws uniformly.
    labeled_fraction: float = 0.5
    pseudo_weight: float = 0.5  # loss weight of a pseudo-labeled sample (a labeled one weighs 1)
    # How a student starts: "teacher" continues from its teacher's weights (each stage's
    # best.pt) with a fresh optimiser and schedule, so every round builds on the last;
    # "scratch" draws new weights, as the paper's student does.
    student_init: str = "teacher"
    # Pseudo-labeled samples get a strong augmentation (organseg.augment.strong_augment),
    # whatever `augment` says for the labeled ones, so the student learns more than its
    # teacher told it (as in ST++ and FixMatch).
    strong_augment: bool = True
    # At most this share of an organ's voxels is marked unknown: an organ's threshold drops
    # to this quantile of the teacher's confidence inside it, so an organ the teacher finds
    # but doubts everywhere (often an adrenal gland) still teaches the student. 1: one
    # threshold, min_voxel_confidence, for every organ.
    max_unsure_share: float = 0.5
    # Which model `ssl` ships: "validation" the best of the teacher and every round by mean
    # validation DSC (a tie goes to the earlier), "last" the last round's student.
    ship: str = "validation"


@dataclass(frozen=True)
class SyntheticConfig:
    """Phantoms that join a dataset's labeled cases in training (organseg.synthetic)."""

    phantoms: int = 0  # generated phantom cases added to the training cases; 0: none
    # This share of every batch's samples comes from the phantoms when real cases train
    # too (batch 2 and 0.5: one of each per step), however many of either there are.
    share: float = 0.5
    weight: float = 1.0  # loss weight of a phantom sample (a real labeled one weighs 1)
    phase: str = MIXED  # what the phantoms look like (organseg.phantom); "mixed": one drawn per phantom
    field_of_view: str = MIXED
    appearance: str = "realistic"
    artefacts: str = "none"


@dataclass(frozen=True)
class Config:
    preset: str = "cpu"
    seed: int = 0
    window_hu: tuple[float, float] = CT_WINDOW_HU
    label_resampling: str = "linear"  # training targets on the stage grids: "linear" or "nearest"
    precision: str = "auto"  # "auto" (organseg.device.resolve_precision), "bf16", "fp16" or "fp32"
    workers: int = -1  # loader worker processes per training process; -1: organseg.batches.loader_workers decides
    validation_cases: int = 1  # labeled cases held out for validation (0: none)
    # Cross-entropy class weights (f_background / f_class) ** class_balance, so small organs
    # are learnt early (organseg.losses.class_weights); 0: every voxel weighs the same.
    class_balance: float = 0.5
    largest_component: bool = True  # keep only the largest connected component of each organ
    # What stage 1 segments: "organs" (every organ, as the paper) or "foreground" (one
    # class, all organs together): enough to find the box, and learnt in far fewer steps.
    stage1_target: str = "foreground"
    stage1: StageConfig = field(default_factory=_stage1)
    stage2: StageConfig = field(default_factory=_stage2)
    crop: CropConfig = field(default_factory=CropConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    ssl: SelfTrainingConfig = field(default_factory=SelfTrainingConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


def _same_stages(stage: dict) -> dict:
    return {"stage1": stage, "stage2": stage}


# Each preset: its differences from the defaults, as a config file would write them.
PRESETS: dict[str, dict] = {
    "cpu": {},
    "paper": {
        "preset": "paper",
        "validation_cases": 4,
        "class_balance": 0.0,
        "stage1_target": "organs",
        "augment": {"mirror_p": 0.5},
        **_same_stages(
            {
                "grid": [160, 160, 160],
                "net": {"widths": list(PAPER_WIDTHS), "deep_supervision": False},
                "epochs": 1000,
                "batch_size": 4,
                "learning_rate": 1e-3,
                "lr_schedule": "halving",
                "lr_halving_epochs": 200,
                "val_every": 10,
                # A fixed epoch (nnU-Net's 250 steps) rather than one pass over the cases: the
                # schedule, validation and checkpoints then mean the same on 1 or 8 GPUs and
                # for 50 or 2000 cases.
                "iterations_per_epoch": 250,
                "checkpoint_every": 10,
            }
        ),
    },
    "tiny": {
        "preset": "tiny",
        "class_balance": 0.0,
        "stage1_target": "organs",
        "augment": {"mirror_p": 0.5},
        "crop": {"margin_mm": 10.0},
        **_same_stages(
            {
                "grid": [32, 32, 32],
                "net": {"widths": [4, 8, 16], "deep_supervision": False},
                "epochs": 2,
                "learning_rate": 1e-3,
                "lr_schedule": "halving",
                "lr_halving_epochs": 1,
                "val_every": 1,
            }
        ),
    },
}
DEFAULT_PRESET = "cpu"


def resolve_config(preset: str = DEFAULT_PRESET, file: Path | None = None, overrides: list[str] = ()) -> Config:
    """The preset, then the keys of a JSON config file, then `key=value` overrides; validated."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    config = from_dict(PRESETS[preset], base=Config(), source=f"preset {preset}")
    if file is not None:
        config = from_dict(_read_json(Path(file)), base=config, source=str(file))
    for override in overrides:
        key, separator, text = override.partition("=")
        if not separator:
            raise InputError(f"--set {override!r}: write it as key=value, e.g. stage1.epochs=50")
        config = _set(config, key.strip(), _parse_value(text.strip()), source=f"--set {override}")
    problems = config_problems(config)
    if problems:
        raise InputError("invalid configuration: " + "; ".join(problems))
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


def load_config(path: Path) -> Config:
    """A configuration saved by `save_config`; keys it lacks keep their defaults."""
    return saved_config(_read_json(Path(path)), source=str(path))


def saved_config(data: dict, source: str) -> Config:
    """A run's or an export's saved configuration; one saved before crop.width existed cropped to the organs."""
    crop = data.get("crop", {})
    if isinstance(crop, dict):  # anything else is an error from_dict reports
        data = {**data, "crop": {"width": "organs", **crop}}
    return from_dict(data, base=Config(), source=source)


def save_config(config: Config, path: Path) -> None:
    from organseg.atomic import write_json

    write_json(path, to_dict(config))


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
    return _replace(config, head, coerce_value(value, hints[head], key, source), source)


def _replace(config, name: str, value, source: str):
    """dataclasses.replace, with a dataclass's own checks turned into a clear message."""
    try:
        return replace(config, **{name: value})
    except ValueError as error:
        raise InputError(f"{source}: {error}") from None


def _all_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        keys += _all_keys(hint, f"{prefix}{f.name}.") if dataclasses.is_dataclass(hint) else [prefix + f.name]
    return keys
