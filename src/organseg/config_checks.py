"""Checks of a configuration's values: each one's type as it is set, their ranges once all are."""

from __future__ import annotations

import types
import typing
from typing import TYPE_CHECKING

from organseg.errors import InputError

if TYPE_CHECKING:
    from organseg.config import AugmentConfig, Config, SelfTrainingConfig, StageConfig, SyntheticConfig

LR_SCHEDULES = ("halving", "poly")
# What a phantom may look like besides its anatomy (organseg.phantom draws them): named here,
# so the settings and the command line check them without importing the generator.
PHANTOM_PHASES = ("non-contrast", "arterial", "portal-venous", "delayed")
PHANTOM_FIELDS_OF_VIEW = ("upper-abdomen", "abdomen-pelvis", "thorax-abdomen")
PHANTOM_APPEARANCES = ("realistic", "random")
PHANTOM_ARTEFACTS = ("none", "metal")  # metal: implants and their streaks (organseg.phantom.implants, streaks)
MIXED = "mixed"  # a phase, field of view, appearance or artefact drawn per case


def config_problems(config: Config) -> list[str]:
    """Every value out of range, one message each naming the setting."""
    problems = []
    check = problems.append
    if config.window_hu[0] >= config.window_hu[1]:
        check(f"window_hu must be [low, high] with low < high, got {list(config.window_hu)}")
    if config.label_resampling not in ("linear", "nearest"):
        check(f"label_resampling must be 'linear' or 'nearest', got '{config.label_resampling}'")
    if config.workers < -1:
        check(f"workers must be -1 (auto) or a number of processes >= 0, got {config.workers}")
    if config.precision not in ("auto", "bf16", "fp16", "fp32"):
        check(f"precision must be 'auto', 'bf16', 'fp16' or 'fp32', got '{config.precision}'")
    if config.stage1_target not in ("organs", "foreground"):
        check(f"stage1_target must be 'organs' or 'foreground', got '{config.stage1_target}'")
    if not 0 <= config.class_balance <= 1:
        check(f"class_balance must be in [0, 1], got {config.class_balance}")
    if config.validation_cases < 0:
        check(f"validation_cases must be >= 0, got {config.validation_cases}")
    for name in ("stage1", "stage2"):
        problems += _stage_problems(name, getattr(config, name))
    if config.crop.width not in ("body", "organs"):
        check(f"crop.width must be 'body' or 'organs', got '{config.crop.width}'")
    low, high = config.crop.train_margin_mm
    if config.crop.margin_mm < 0 or low < 0 or high < low or config.crop.train_shift_mm < 0:
        check("crop margins and shift must be >= 0 with train_margin_mm = [low, high], low <= high")
    problems += _ssl_problems(config.ssl)
    problems += _synthetic_problems(config.synthetic)
    return problems


def augment_problems(augment: AugmentConfig) -> list[str]:
    """What is wrong with an augmentation's settings (checked as it is made)."""
    problems = []
    for name, value in vars(augment).items():
        if name.endswith("_p") and not 0.0 <= value <= 1.0:
            problems.append(f"augmentation {name} must be a probability in [0, 1], got {value}")
        if name.endswith(("_range", "_range_vox")) and not 0.0 < value[0] <= value[1]:
            problems.append(f"augmentation {name} must be (low, high) with 0 < low <= high, got {value}")
    if not set(augment.mirror_axes) <= {0, 1, 2}:
        problems.append(f"augmentation mirror_axes must be a subset of (0, 1, 2), got {augment.mirror_axes}")
    if augment.elastic_control_points < 2:
        problems.append(f"augmentation elastic_control_points must be >= 2, got {augment.elastic_control_points}")
    magnitudes = (
        augment.rotation_max_deg,
        augment.elastic_magnitude_vox,
        augment.brightness_std,
        augment.noise_max_std,
    )
    if min(magnitudes) < 0:
        problems.append("augmentation magnitudes (rotation, elastic, brightness, noise) must be >= 0")
    return problems


def _synthetic_problems(synthetic: SyntheticConfig) -> list[str]:
    problems = []
    if synthetic.phantoms < 0:
        problems.append(f"synthetic.phantoms must be >= 0, got {synthetic.phantoms}")
    if not 0 <= synthetic.share <= 1:
        problems.append(f"synthetic.share must be in [0, 1], got {synthetic.share}")
    if synthetic.weight <= 0:
        problems.append(f"synthetic.weight must be > 0, got {synthetic.weight}")
    looks = (
        ("phase", PHANTOM_PHASES),
        ("field_of_view", PHANTOM_FIELDS_OF_VIEW),
        ("appearance", PHANTOM_APPEARANCES),
        ("artefacts", PHANTOM_ARTEFACTS),
    )
    for name, choices in looks:
        if getattr(synthetic, name) not in (*choices, MIXED):
            problems.append(
                f"synthetic.{name} must be one of {', '.join((*choices, MIXED))}, got '{getattr(synthetic, name)}'"
            )
    return problems


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
    if ssl.student_init not in ("teacher", "scratch"):
        problems.append(f"ssl.student_init must be 'teacher' or 'scratch', got '{ssl.student_init}'")
    if not 0 < ssl.max_unsure_share <= 1:
        problems.append(f"ssl.max_unsure_share must be in (0, 1], got {ssl.max_unsure_share}")
    if ssl.ship not in ("validation", "last"):
        problems.append(f"ssl.ship must be 'validation' or 'last', got '{ssl.ship}'")
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
    settings = ("epochs", "batch_size", "lr_halving_epochs", "val_every", "checkpoint_every", "micro_batches")
    for setting in (*settings, "net.blocks_per_level"):
        value = stage.net.blocks_per_level if setting.startswith("net.") else getattr(stage, setting)
        if value < 1:
            problems.append(f"{name}.{setting} must be >= 1, got {value}")
    if stage.micro_batches > stage.batch_size:
        problems.append(f"{name}.micro_batches ({stage.micro_batches}) must be <= batch_size ({stage.batch_size})")
    if stage.iterations_per_epoch < 0:
        problems.append(f"{name}.iterations_per_epoch must be >= 0, got {stage.iterations_per_epoch}")
    if stage.lr_schedule not in LR_SCHEDULES:
        problems.append(f"{name}.lr_schedule must be 'halving' or 'poly', got '{stage.lr_schedule}'")
    if not 0 < stage.learning_rate < 1:
        problems.append(f"{name}.learning_rate must be in (0, 1), got {stage.learning_rate}")
    if stage.weight_decay < 0:
        problems.append(f"{name}.weight_decay must be >= 0, got {stage.weight_decay}")
    if not 0 <= stage.weight_average < 1:
        problems.append(f"{name}.weight_average must be in [0, 1), got {stage.weight_average}")
    return problems


def coerce_value(value, hint, key: str, source: str):
    """`value` converted to the field's type, or an InputError saying what was expected."""
    origin = typing.get_origin(hint)
    if origin is types.UnionType:  # `X | None`
        if value is None:
            return None
        return coerce_value(value, next(a for a in typing.get_args(hint) if a is not type(None)), key, source)
    if origin is tuple:
        element = typing.get_args(hint)[0]
        if not isinstance(value, list | tuple):
            raise InputError(f"{source}: '{key}' takes a list, e.g. [1, 2, 3]; got {value!r}")
        return tuple(coerce_value(v, element, key, source) for v in value)
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
