"""Typed experiment configuration: dataclasses, YAML loading, `section.key=value` overrides.

A YAML file holds only the differences from the defaults below.  A file may name a `base:`
file (relative to itself) whose values it overrides, so each paper-table row is a few lines.
Unknown keys and wrong types are errors that name the key and the file.
"""
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

from .errors import ConfigError


INTENSITY_SCALE_AUTO = "auto"  # data.intensity_scale: take `ssl-mamba data info --intensity`'s suggestion


@dataclass
class DataConfig:
    dataset: str = "acdc"  # acdc | promise12 | synapse | phantom
    root: str = "../shared/datasets/ACDC"  # dataset folder, or a pack file made by `ssl-mamba data pack`
    num_classes: int = 4
    patch_size: List[int] = field(default_factory=lambda: [224, 224])
    # Labeled subset: exactly one of these may be set; none set means every training slice is labeled.
    labeled_cases: Optional[int] = None  # first N patients/cases in train_slices.list order
    labeled_slices: Optional[int] = None  # first K slices (the originals' legacy meaning)
    labeled_fraction: Optional[float] = None  # fraction of cases, rounded down, at least 1
    augment: str = "cpu"  # cpu (faithful RandomGenerator) | gpu (batched affine) | none
    rotflip_prob: float = 0.5  # P(rot90+flip); the rest rotates with rotate_prob
    rotate_prob: float = 0.5  # P(rotation | no rot90+flip): 0.5 is the MU / old-SSL4MIS behaviour
    normalize: str = "none"  # none (as stored: the papers') | percentile (per slice, data/normalize.py)
    # [low, high]: each training image times a factor drawn log-uniformly from this range, after the
    # geometric augmentation (when the labeled cases are brighter than much of the data: `ssl-mamba data
    # info --intensity` suggests a range from the training images); auto: that suggestion, taken at the
    # run's start and written into its config.yaml (null when the labeled cases cover the unlabeled);
    # null: off, as the papers
    intensity_scale: Optional[Union[List[float], str]] = None
    num_workers: int = 2


@dataclass
class ModelConfig:
    # One entry per network the method trains (cross teaching: two, e.g. [unet, mamba_unet]).
    networks: List[str] = field(default_factory=lambda: ["mamba_unet"])
    # Optional ImageNet checkpoint per network (null for none), e.g. VMamba-Tiny / Swin-Tiny files.
    pretrained: List[Optional[str]] = field(default_factory=list)
    scan_backend: str = "auto"  # selective-scan backend for Mamba networks: auto | torch | triton | mamba_ssm


@dataclass
class MethodConfig:
    name: str = "supervised"
    batch_size: int = 24
    labeled_batch_size: Optional[int] = None  # null: the whole batch is labeled (supervised)
    consistency: float = 0.1
    consistency_rampup: float = 200.0  # in "epochs" of rampup_epoch_iters iterations
    rampup_epoch_iters: int = 150
    ema_decay: float = 0.99
    options: Dict[str, Any] = field(default_factory=dict)  # method-specific, validated by the method


@dataclass
class TrainConfig:
    max_iterations: int = 10000
    optimizer: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "poly"  # poly | cosine | constant
    poly_power: float = 0.9
    val_every: int = 200
    checkpoint_every: int = 1000  # `last` checkpoint cadence (also written at the end)
    amp: str = "none"  # none | bf16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 1337
    deterministic: bool = False
    # TF32 tensor cores for fp32 matmuls/convolutions on Ampere+ GPUs (10-bit mantissa products,
    # fp32 accumulation): ~3x faster GEMMs.  false reproduces the original's full-fp32 arithmetic.
    tf32: bool = True
    # CUDA only: record each student network's forward and backward as CUDA graphs at the first
    # iteration and replay them (removes per-kernel launch overhead; engine/cuda_graphs.py).  Needs
    # a method that calls each student once per iteration with inputs of one shape (checked on
    # every call: a method that does otherwise stops with an error naming the network).
    cuda_graphs: bool = False
    # CUDA only: torch.compile (inductor) each VSS block and patch layer of the student networks
    # around the SS2D scan, fusing norms, casts and gating (models/compile.py); the first iterations
    # spend ~1 min compiling.  Combine with cuda_graphs for the fastest step.  Needs a student with
    # such layers (Mamba-UNet, Swin-UNet's patch layers); validation runs eager unless eval.compile.
    compile: bool = False
    # A file of torch.compile's cache artifacts (engine/compile_cache.py), with train.compile or
    # eval.compile: loaded before compiling when it exists, (re)written by rank 0 after the first
    # validation and at the end (or a stop), so the next run on a fresh machine (same code, torch and GPU) hits
    # the cache instead of compiling.  null: no file.
    compile_cache: Optional[str] = None
    # Triton SS2D backward as a persistent grid: ~390 MB less transient memory per first-stage block
    # at batch 24 (bf16 peak 4.32 -> 3.99 GiB on an H200, measured before the op saved bf16 inputs,
    # which brought the default to ~4.0 GiB by itself), its kernels ~20% slower.  CUDA with
    # model.scan_backend auto or triton only (elsewhere the run stops with an error).
    low_memory_scan: bool = False
    # stop: raise TrainingDiverged naming the iteration (each iteration's values are read back while the
    # next one runs, and always before a validation or checkpoint, so no checkpoint holds a NaN step);
    # skip: drop that step's gradients and go on (reads each loss back before stepping: one sync per step)
    on_nonfinite: str = "stop"
    log_images_every: int = 1000
    # Data-parallel runs (torchrun): BatchNorm -> SyncBatchNorm (CUDA only); false keeps per-process statistics.
    sync_bn: bool = False


POSTPROCESSING = ("none", "largest_component")  # eval.postprocess (metrics/postprocess.py)


@dataclass
class EvalConfig:
    interp_order: int = 0  # 0 = nearest, as the originals; 1 = bilinear
    tta_flip: bool = False
    empty_policy: str = "original"  # original (Dice 0 / HD95 0) | nan | worst
    asd_mode: str = "symmetric"  # symmetric (paper Eq. 9) | medpy_asd | assd
    # none (the papers: the raw argmax) | largest_component (each foreground class keeps its largest 3-D
    # connected component; metrics/postprocess.py).  Applies to validation and test alike.
    postprocess: str = "none"
    spacing: Optional[List[float]] = None  # voxel spacing (mm); null = unit spacing, as the papers
    val_split: str = "val"
    # validation during training scores HD95 / ASD at every N-th validation (and the last), Dice and the
    # other overlap metrics at all: model selection reads Dice only, and the surface distances are 80-90%
    # of the scoring time (benchmarks/RESULTS.md).  1 = every validation, as the originals; 0 = never.
    val_distances_every: int = 1
    # CUDA only: validation during training replays each network's forward from CUDA graphs, one per
    # volume shape, recorded at the first validation (metrics/graphs.py); pays off because the same
    # volumes are validated again and again.  CUDA only (elsewhere the run stops with an error).
    cuda_graphs: bool = False
    # CUDA only: torch.compile the eval-mode forward of the validated networks' VSS blocks and patch
    # layers (models/compile.py; dynamic batch size), for validation during training.  With
    # eval.cuda_graphs: 3.1x the original's b24 inference on an H100 (benchmarks/RESULTS.md).
    compile: bool = False


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------------------------------------
# Conversion from plain dicts, with errors that name the key and the source.


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is not None:  # List[float], not the bare "List"
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where it is lossless."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:  # Optional[X], or a choice of types: the first that takes the value
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], key, source)
        for tp_choice in inner:
            try:
                return _coerce(value, tp_choice, key, source)
            except ConfigError:
                continue
        names = " or ".join(_type_name(a) for a in inner)
        raise ConfigError(f"{source}: '{key}' must be {names}, got {value!r} ({type(value).__name__})")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return from_dict(tp, value, source, prefix=key + ".")
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)] if args else list(value)
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" as a string
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{source}: '{key}' must be an int, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{source}: '{key}' must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    return value


def from_dict(cls: type, values: Dict[str, Any], source: str, prefix: str = "") -> Any:
    """Build dataclass `cls` from `values`; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}'; known keys here: {', '.join(prefix + n for n in names)}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k, source) for k, v in values.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def _near_names(path: Path) -> str:
    """'; did you mean ...' with the closest YAML names beside a missing config file (a row name typed
    from a paper table, e.g. cps_unet_3cases, when only cps_unet_7cases exists), or nothing."""
    import difflib

    if not path.parent.is_dir():
        return ""
    names = sorted(p.name for p in path.parent.glob("*.yaml"))
    close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.75)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _deep_merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "options":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path, seen: tuple = ()) -> Dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}{_near_names(path)}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' files form a cycle")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = values.pop("base", None)
    if base is None:
        return values
    parent = _read_yaml((path.parent / base), seen + (path.resolve(),))
    return _deep_merge(parent, values)


def parse_override(text: str) -> tuple:
    """'train.lr=0.001' -> (['train', 'lr'], 0.001); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(values: Dict[str, Any], overrides: List[str]) -> Dict[str, Any]:
    values = dict(values)
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for k in keys[:-1]:
            child = node.get(k)
            node[k] = dict(child) if isinstance(child, dict) else {}
            node = node[k]
        node[keys[-1]] = value
    return values


def load_config(path: Optional[Union[str, Path]] = None, overrides: Optional[List[str]] = None) -> ExperimentConfig:
    """Load an experiment: defaults <- YAML file (and its bases) <- `--set` overrides."""
    values = _read_yaml(Path(path)) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    if overrides:
        values = apply_overrides(values, overrides)
        source += " (with --set overrides)"
    cfg = from_dict(ExperimentConfig, values, source)
    validate(cfg, source)
    return cfg


def _check_choice(value: str, choices: tuple, key: str, source: str) -> None:
    if value not in choices:
        raise ConfigError(f"{source}: '{key}' is {value!r}; choose one of {', '.join(choices)}")


def _check_intensity_scale(d: DataConfig, source: str) -> None:
    scale = d.intensity_scale
    if scale is None:
        return
    if isinstance(scale, str) and scale != INTENSITY_SCALE_AUTO:
        raise ConfigError(f"{source}: 'data.intensity_scale' is {scale!r}; give [low, high], "
                          f"{INTENSITY_SCALE_AUTO!r} or null")
    if isinstance(scale, list) and (len(scale) != 2 or not 0 < scale[0] <= scale[1]
                                    or not all(math.isfinite(v) for v in scale)):
        raise ConfigError(f"{source}: 'data.intensity_scale' must be [low, high] with 0 < low <= high, got {scale}")
    if d.augment == "none":
        raise ConfigError(f"{source}: 'data.intensity_scale' is set but data.augment is 'none'; it is part of the "
                          "augmentation: choose data.augment cpu or gpu")
    if d.normalize != "none":
        raise ConfigError(f"{source}: 'data.intensity_scale' with data.normalize {d.normalize!r} would train on "
                          "intensities evaluation never shows (every slice is rescaled to its own range there): "
                          "use one of the two")


def validate(cfg: ExperimentConfig, source: str) -> None:
    """Cross-field checks that need no registry (names are checked where they are resolved)."""
    d, m, t, e = cfg.data, cfg.method, cfg.train, cfg.eval
    _check_choice(d.augment, ("cpu", "gpu", "none"), "data.augment", source)
    _check_choice(d.normalize, ("none", "percentile"), "data.normalize", source)
    _check_choice(t.amp, ("none", "bf16"), "train.amp", source)
    _check_choice(t.schedule, ("poly", "cosine", "constant"), "train.schedule", source)
    _check_choice(t.optimizer, ("sgd", "adam", "adamw"), "train.optimizer", source)
    _check_choice(t.on_nonfinite, ("stop", "skip"), "train.on_nonfinite", source)
    _check_choice(e.empty_policy, ("original", "nan", "worst"), "eval.empty_policy", source)
    _check_choice(e.asd_mode, ("symmetric", "medpy_asd", "assd"), "eval.asd_mode", source)
    _check_choice(e.postprocess, POSTPROCESSING, "eval.postprocess", source)
    _check_intensity_scale(d, source)
    if len(d.patch_size) != 2 or min(d.patch_size) <= 0:
        raise ConfigError(f"{source}: 'data.patch_size' must be two positive ints, got {d.patch_size}")
    chosen = [k for k in ("labeled_cases", "labeled_slices", "labeled_fraction") if getattr(d, k) is not None]
    if len(chosen) > 1:
        raise ConfigError(f"{source}: set only one of data.{' / data.'.join(chosen)}")
    if d.labeled_fraction is not None and not 0 < d.labeled_fraction <= 1:
        raise ConfigError(f"{source}: 'data.labeled_fraction' must be in (0, 1], got {d.labeled_fraction}")
    if m.batch_size < 1:
        raise ConfigError(f"{source}: 'method.batch_size' must be >= 1, got {m.batch_size}")
    if m.labeled_batch_size is not None and not 1 <= m.labeled_batch_size <= m.batch_size:
        raise ConfigError(
            f"{source}: 'method.labeled_batch_size' ({m.labeled_batch_size}) must be between 1 and "
            f"method.batch_size ({m.batch_size})"
        )
    if t.max_iterations < 1:
        raise ConfigError(f"{source}: 'train.max_iterations' must be >= 1, got {t.max_iterations}")
    if t.compile_cache and not (t.compile or e.compile):
        raise ConfigError(f"{source}: 'train.compile_cache' is set but neither train.compile nor eval.compile is: "
                          "there is nothing to cache")
    if e.val_distances_every < 0:
        raise ConfigError(f"{source}: 'eval.val_distances_every' must be >= 0 (0: never), got {e.val_distances_every}")
    if cfg.model.pretrained and len(cfg.model.pretrained) != len(cfg.model.networks):
        raise ConfigError(
            f"{source}: 'model.pretrained' has {len(cfg.model.pretrained)} entries but 'model.networks' has "
            f"{len(cfg.model.networks)}; give one path (or null) per network"
        )


def save_config(cfg: ExperimentConfig, path: Union[str, Path]) -> None:
    """Write the resolved config as YAML (atomically)."""
    from .utils.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))
