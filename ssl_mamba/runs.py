"""Run directories: naming, resuming, and evaluating what a run trained.

Sits beside the CLI at the top of the dependency graph: it composes data, models, metrics and
the trainer's files, and is what `ssl-mamba evaluate` and the demo call.
"""
import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .config import ExperimentConfig, load_config, parse_override
from .errors import UserError
from .utils.log import get_logger

log = get_logger("runs")


def new_run_dir(cfg: ExperimentConfig) -> Path:
    """`<output_dir>/<name>`, or with a timestamp suffix when that exists: never overwrite a run."""
    base = Path(cfg.output_dir) / cfg.name
    if not base.exists():
        return base
    return base.with_name(f"{base.name}-{time.strftime('%Y%m%d-%H%M%S')}")


def resume_config(run_dir: Path, overrides: List[str]) -> ExperimentConfig:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"cannot resume {run_dir}: no config.yaml there (is it a run directory?)")
    if not (run_dir / "last.pt").is_file():
        raise UserError(f"cannot resume {run_dir}: no last.pt checkpoint yet")
    return load_config(path, overrides)


def network_names(cfg: ExperimentConfig) -> List[str]:
    """net1, net2...: one per network of the run's config, as the trainer names them."""
    return [f"net{i + 1}" for i in range(len(cfg.model.networks))]


def trained_networks(run_dir: Path, cfg: ExperimentConfig) -> List[str]:
    """The run's networks that have a best_<net>.pth."""
    return [name for name in network_names(cfg) if (run_dir / f"best_{name}.pth").is_file()]


def _checkpoints(run_dir: Path, cfg: ExperimentConfig, network: Optional[str]) -> Dict[str, Path]:
    """net name -> best checkpoint file, for every network of the run (or just `network`)."""
    names = network_names(cfg)
    if network is not None:
        if network not in names:
            raise UserError(f"run {run_dir} has networks {', '.join(names)}; not {network!r}")
        names = [network]
    found = {n: run_dir / f"best_{n}.pth" for n in names}
    missing = [str(p) for p in found.values() if not p.is_file()]
    if missing:
        present = sorted(p.name for p in run_dir.glob("*.pth"))
        raise UserError(f"checkpoint not found: {missing[0]} (present: {', '.join(present) or 'none'})")
    return found


def _primary_network(run_dir: Path, candidates: List[str]) -> str:
    """The network to report for the run: best validation Dice (never chosen on the test split)."""
    path = run_dir / "summary.json"
    if len(candidates) == 1 or not path.is_file():
        return candidates[0]
    best = json.loads(path.read_text()).get("best_val_dice", {})
    scored = [(best.get(n) if best.get(n) is not None else float("-inf"), n) for n in candidates]
    return max(scored)[1]


def _build_network(cfg: ExperimentConfig, index: int):
    from .models import create_model

    name = cfg.model.networks[index]
    kwargs = {"scan_backend": cfg.model.scan_backend} if "mamba" in name else {}
    return create_model(name, in_chans=1, num_classes=cfg.data.num_classes, **kwargs)


def _load_weights(net, path: Path) -> None:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable or truncated file
        raise UserError(f"cannot read checkpoint {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"checkpoint {path} does not fit the configured network: {first}") from None


def _device(cfg: ExperimentConfig):
    import torch

    if cfg.train.device != "auto":
        return torch.device(cfg.train.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _open_split(cfg: ExperimentConfig, split: str):
    """The dataset source and the volume names of `split`, opened once per evaluation."""
    from .data import normalized_source, open_dataset

    source = normalized_source(open_dataset(cfg.data.root), cfg.data.normalize)  # as the run trained
    names = source.volume_names(split)
    if not names:
        raise UserError(f"dataset {cfg.data.root} has no volumes in split {split!r}")
    return source, names


def _score(cfg: ExperimentConfig, net, source, names: List[str], out_dir: Path, figures_dir: Optional[Path],
           progress: bool = True):
    from .metrics import evaluate_volumes, write_reports

    device = _device(cfg)
    result = evaluate_volumes(net.to(device), source, names, cfg.data.num_classes, tuple(cfg.data.patch_size),
                              cfg.eval, device, progress=progress)
    write_reports(result, out_dir)
    if figures_dir is not None:
        _figures(result, net, source, names, cfg, figures_dir, device)
    return result


def _figures(result, net, source, names, cfg: ExperimentConfig, figures_dir: Path, device) -> None:
    from .metrics import figures

    figures_dir.mkdir(parents=True, exist_ok=True)
    figures.dice_histogram(result, figures_dir / "dice_histogram.png")
    figures.overlay_figure(net, source, names[:3], cfg, figures_dir / "overlays.png", device)


def evaluate_run(run_dir: Path, split: str, network: Optional[str], out: Optional[Path] = None,
                 progress: bool = True, overrides: Sequence[str] = ()) -> List[str]:
    """Evaluate every (or one) best checkpoint of a run; the primary network's report (best validation
    Dice among the run's networks with a checkpoint, whichever are evaluated now) is also written at the
    top of the output folder, where `ssl-mamba table` reads it.  `overrides` (`--set`) may change how it
    is evaluated (eval.*) and where its data lives (data.root), nothing the networks were trained with."""
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    from .metrics import lowest_cases, paper_row, write_reports

    _check_evaluation_overrides(run_dir, overrides)
    cfg = load_config(run_dir / "config.yaml", list(overrides))
    # an evaluation written elsewhere (--out, e.g. with other eval settings) keeps its figures beside it:
    # the run's own figures/<split> are those of its own report
    figures_root = out / "figures" if out else run_dir / "figures" / split
    out = out or run_dir / "metrics" / split
    checkpoints = _checkpoints(run_dir, cfg, network)
    # chosen among all the run's networks, so evaluating one of them alone never relabels the run's row
    primary = _primary_network(run_dir, trained_networks(run_dir, cfg))
    source, names = _open_split(cfg, split)
    lines = []
    for name, path in checkpoints.items():
        index = int(name[3:]) - 1  # net1 -> model.networks[0]
        net = _build_network(cfg, index)
        _load_weights(net, path)
        result = _score(cfg, net, source, names, out / name, figures_root / name, progress)
        if name == primary:
            write_reports(result, out, extra={"network": name, "model": cfg.model.networks[index]})
        lines.append(f"{name} ({cfg.model.networks[index]}){' [reported]' if name == primary else ''}: "
                     f"{paper_row(result.summary)}")
        lines.append(f"  {lowest_cases(result.per_case)}")
    if (run_dir / "metrics.jsonl").is_file():
        from .metrics.figures import training_curves

        training_curves(run_dir, run_dir / "figures" / "training_curves.png")
    lines.append(f"reports: {out}; figures: {figures_root}")
    return lines


def changes_evaluation_only(override: str) -> bool:
    """Whether a `--set` override changes how a trained run is evaluated (eval.*) or where its data lives
    (data.root), and nothing its networks were trained with."""
    keys, _ = parse_override(override)
    return (len(keys) > 1 and keys[0] == "eval") or keys == ["data", "root"]


def _check_evaluation_overrides(run_dir: Path, overrides: Sequence[str]) -> None:
    for item in overrides:
        if not changes_evaluation_only(item):
            raise UserError(f"--set {item}: evaluating a run can change eval.* and data.root only; the rest of "
                            f"{run_dir / 'config.yaml'} is what its networks were trained with")


def _check_normalize_matches_run(cfg: ExperimentConfig, checkpoint: Path) -> None:
    """A checkpoint holds weights only: when it sits in a run folder, the images must be read the way that
    run trained on them (data.normalize), or the scores (written into the run folder by default) are wrong."""
    run_config = checkpoint.parent / "config.yaml"
    if not run_config.is_file():
        return
    trained = load_config(run_config, []).data.normalize
    if trained != cfg.data.normalize:
        raise UserError(f"{checkpoint} was trained with data.normalize={trained} ({run_config}) but the config "
                        f"given reads images with data.normalize={cfg.data.normalize}; pass "
                        f"--set data.normalize={trained}, or evaluate the run with --run {checkpoint.parent}")


def evaluate_checkpoint(cfg: ExperimentConfig, checkpoint: Path, split: str, out_dir: Path,
                        progress: bool = True) -> str:
    """Evaluate a single checkpoint file (e.g. trained with the original code) with the config's first network."""
    from .metrics import paper_row

    if not checkpoint.is_file():
        raise UserError(f"checkpoint not found: {checkpoint}")
    _check_normalize_matches_run(cfg, checkpoint)
    net = _build_network(cfg, 0)
    _load_weights(net, checkpoint)
    source, names = _open_split(cfg, split)
    result = _score(cfg, net, source, names, out_dir, figures_dir=None, progress=progress)
    return paper_row(result.summary)
