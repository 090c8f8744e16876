"""Paper-style tables from evaluated run directories.

For each run directory `collect_runs` (which `build_table` and `paper_pairs` call, and which the
`table` command calls once for both) reads exactly two files:

- `<run>/config.yaml` (the resolved config the trainer saved; loaded with `load_config`);
- `<run>/metrics/<split>/summary.json` (written by `write_reports`; its "mean" row is used).

Runs whose configs are equal once the keys in `IGNORED_KEYS` (the run's name, where it is
written, its seed, the device/worker placement, how often it writes checkpoints and pictures and how
often its validations score surface distances (model selection reads Dice only), and where its
compile cache lives:
none changes what is trained) are dropped form one group and one row,
shown as mean ± sample standard deviation (ddof 1) over the runs, 4 decimals; a group of one run
shows the plain value.  The row label is built from the config: method, networks, labeled data (and
`data.normalize` when it is not "none", `data.intensity_scale` when set, and each scoring setting that
differs from the papers' protocol, such as `eval.postprocess`).  The eval settings that change the scores (`SCORING_SETTINGS`) are the evaluation's,
read from the summary's "settings", where `evaluate --run --set eval.X=...` may have changed them.
With `compare="paper"` each of our rows is followed by every matching published row from
`ssl_mamba.paper_tables` (matched on dataset, method, sorted networks and labeled cases).
"""
import csv
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config import EvalConfig, ExperimentConfig, load_config, to_dict
from ..errors import DataError, UserError
from ..paper_tables import find_paper_rows
from .case import METRIC_NAMES
from .report import report_path

IGNORED_KEYS = ("name", "output_dir", "train.seed", "train.device", "data.num_workers", "train.checkpoint_every",
                "train.log_images_every", "eval.val_distances_every", "train.compile_cache")
HEADER = ("Method", "Source", "n", "Dice", "IoU", "Acc", "Pre", "Sen", "Spe", "HD95", "ASD")
FORMATS = ("markdown", "latex", "csv")
# the eval.* settings that change the scores (not only how fast they come): a summary's values of these
# replace its run config's, so a run scored again with other ones is a row of its own
SCORING_SETTINGS = ("interp_order", "tta_flip", "postprocess", "empty_policy", "asd_mode", "spacing")


def _flatten(values: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != "options":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _read_run(run_dir: Path, split: str) -> Tuple[ExperimentConfig, Dict[str, Optional[float]]]:
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise DataError(f"{run_dir} is not a run directory: {config_path.name} is missing")
    summary_path = report_path(run_dir, split, "summary.json")
    try:
        summary = json.loads(summary_path.read_text())
        mean = summary["mean"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f"{summary_path}: not a summary written by ssl-mamba (no 'mean' object)") from None
    cfg = load_config(config_path)
    # rows are labeled and grouped by how their numbers were made: `evaluate --run --set eval.X=...` scores
    # with other settings than the training config's, and its summary records them (an older summary
    # lacks some, or all: those are the config's)
    settings = summary.get("settings")
    made = {k: settings[k] for k in SCORING_SETTINGS if k in settings} if isinstance(settings, dict) else {}
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, **made)), mean


def _group_key(cfg: ExperimentConfig) -> str:
    flat = _flatten(to_dict(cfg))
    return json.dumps({k: v for k, v in flat.items() if k not in IGNORED_KEYS}, sort_keys=True, default=str)


def labeled_data(cfg: ExperimentConfig) -> str:
    """e.g. '3 labeled cases', '68 labeled slices', '10% labeled', 'all labeled'."""
    d = cfg.data
    if d.labeled_cases is not None:
        return f"{d.labeled_cases} labeled cases"
    if d.labeled_slices is not None:
        return f"{d.labeled_slices} labeled slices"
    if d.labeled_fraction is not None:
        return f"{d.labeled_fraction:.0%} labeled"
    return "all labeled"


def row_label(cfg: ExperimentConfig) -> str:
    """e.g. 'cross_teaching (unet + mamba_unet), 3 labeled cases'.  A run that rescales its images
    (`data.normalize`, `data.intensity_scale`) or was scored otherwise than the papers (`scoring_changes`,
    e.g. `eval.postprocess`) says so, since otherwise it reads exactly like the row it varies."""
    label = f"{cfg.method.name} ({' + '.join(cfg.model.networks)}), {labeled_data(cfg)}"
    if cfg.data.normalize != "none":
        label += f", {cfg.data.normalize}-normalised slices"
    if isinstance(cfg.data.intensity_scale, str):  # a config never trained: a run's config.yaml holds the range
        label += f", intensities scaled ({cfg.data.intensity_scale})"
    elif cfg.data.intensity_scale:
        low, high = cfg.data.intensity_scale
        label += f", intensities scaled by {low:g}-{high:g}"
    for key, value in scoring_changes(cfg).items():
        label += (f", scored after {value.replace('_', ' ')}" if key == "postprocess" else f", scored with {key}={value}")
    return label


def scoring_changes(cfg: ExperimentConfig) -> Dict[str, Any]:
    """The scoring settings (`SCORING_SETTINGS`) where the run's evaluation left the defaults, which are
    the papers' protocol (nearest resize, no TTA, no post-processing, their empty-mask and ASD rules)."""
    default = EvalConfig()
    return {k: getattr(cfg.eval, k) for k in SCORING_SETTINGS if getattr(cfg.eval, k) != getattr(default, k)}


def published_rows(cfg: ExperimentConfig) -> list:
    """The papers' rows for this experiment.  The papers label by cases (or everything) and read the
    images as stored: a run that chose its labeled data by slices or by fraction, or rescaled its
    images (data.normalize, data.intensity_scale) or was scored otherwise (`scoring_changes`: TTA, post-processing,
    another resize, empty-mask or ASD rule, a spacing), has no published counterpart."""
    if cfg.data.labeled_slices is not None or cfg.data.labeled_fraction is not None:
        return []
    if cfg.data.normalize != "none" or cfg.data.intensity_scale or scoring_changes(cfg):
        return []
    return find_paper_rows(cfg.data.dataset, cfg.method.name, cfg.model.networks, cfg.data.labeled_cases)


def _mean_std(values: List[float]) -> Tuple[float, Optional[float]]:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return float("nan"), None
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))


def _cell(mean: float, std: Optional[float], fmt: str) -> str:
    if math.isnan(mean):
        return "–"
    if std is None:
        return f"{mean:.4f}"
    return f"{mean:.4f} $\\pm$ {std:.4f}" if fmt == "latex" else f"{mean:.4f} ± {std:.4f}"


def _disambiguate(groups: List[Dict[str, Any]]) -> None:
    """Groups with the same label get the config values that tell them apart appended."""
    by_label: Dict[str, List[Dict[str, Any]]] = {}
    for group in groups:
        by_label.setdefault(group["label"], []).append(group)
    for same in by_label.values():
        if len(same) < 2:
            continue
        flats = [json.loads(g["key"]) for g in same]
        differing = sorted(k for k in set().union(*flats) if len({json.dumps(f.get(k), default=str) for f in flats}) > 1)
        for group, flat in zip(same, flats):
            group["label"] += " [" + ", ".join(f"{k}={flat.get(k)}" for k in differing) + "]"


def collect_runs(run_dirs: Sequence[Path], split: str = "test") -> List[Dict[str, Any]]:
    """The runs, each read once, grouped by configuration in the order first seen: what
    `format_table` and `pairs_of_groups` take, so a table and its figure share one read."""
    groups: Dict[str, Dict[str, Any]] = {}
    for run_dir in run_dirs:
        cfg, mean = _read_run(Path(run_dir), split)
        key = _group_key(cfg)
        group = groups.setdefault(key, {"key": key, "cfg": cfg, "label": row_label(cfg), "means": [], "runs": []})
        group["means"].append(mean)
        group["runs"].append(Path(run_dir))
    ordered = list(groups.values())
    _disambiguate(ordered)
    return ordered


def _our_row(group: Dict[str, Any], fmt: str) -> List[str]:
    cells = [_cell(*_mean_std([m.get(k) for m in group["means"]]), fmt) for k in METRIC_NAMES]
    return [group["label"], "ours", str(len(group["means"]))] + cells


def _paper_rows(cfg: ExperimentConfig) -> List[List[str]]:
    rows = published_rows(cfg)
    return [[f"  {r.label}", r.table, "", *[f"{r.metrics[k]:.4f}" if k in r.metrics else "–" for k in METRIC_NAMES]]
            for r in rows]


def _render(rows: List[List[str]], fmt: str) -> str:
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(rows)
        return buf.getvalue().rstrip("\n")
    if fmt == "latex":
        esc = [[c.replace("_", "\\_").replace("%", "\\%").replace("–", "--") for c in r] for r in rows]
        lines = ["\\begin{tabular}{ll" + "r" * (len(HEADER) - 2) + "}", "\\hline",
                 " & ".join(HEADER) + " \\\\", "\\hline"]
        lines += [" & ".join(r) + " \\\\" for r in esc]
        return "\n".join(lines + ["\\hline", "\\end{tabular}"])
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _check_options(fmt: str, compare: Optional[str]) -> None:
    if fmt not in FORMATS:
        raise UserError(f"table format {fmt!r} is not one of {', '.join(FORMATS)}")
    if compare not in (None, "paper"):
        raise UserError(f"--compare {compare!r}: only 'paper' is supported")


def build_table(run_dirs: Sequence[Path], fmt: str = "markdown", compare: Optional[str] = None,
                split: str = "test") -> str:
    """One row per configuration (seeds pooled), in the order first seen; see the module docstring."""
    _check_options(fmt, compare)  # before any run is read: a bad option is named even when a run is bad too
    if not run_dirs:
        raise UserError("build_table needs at least one run directory")
    return format_table(collect_runs(run_dirs, split), fmt, compare)


def format_table(groups: List[Dict[str, Any]], fmt: str = "markdown", compare: Optional[str] = None) -> str:
    """`build_table` of runs already read by `collect_runs`."""
    _check_options(fmt, compare)
    rows: List[List[str]] = []
    for group in groups:
        rows.append(_our_row(group, fmt))
        if compare == "paper":
            rows.extend(_paper_rows(group["cfg"]))
    return _render(rows, fmt)


def paper_pairs(run_dirs: Sequence[Path], split: str = "test", metric: str = "dice") -> List[Dict[str, Any]]:
    """Our `metric` per configuration (mean over its runs) beside its first published row, for a
    figure of ours against the papers: [{"label", "paper_label", "ours", "paper", "labeled", "runs"}] in
    table order ("labeled": `labeled_data`); configurations without a published value are left out."""
    return pairs_of_groups(collect_runs(run_dirs, split), metric)


def pairs_of_groups(groups: List[Dict[str, Any]], metric: str = "dice") -> List[Dict[str, Any]]:
    """`paper_pairs` of runs already read by `collect_runs`."""
    pairs = []
    for group in groups:
        published = [r for r in published_rows(group["cfg"]) if metric in r.metrics]
        ours, _ = _mean_std([m.get(metric) for m in group["means"]])
        if published and not math.isnan(ours):
            pairs.append({"label": group["label"], "paper_label": published[0].label, "ours": ours,
                          "paper": published[0].metrics[metric], "labeled": labeled_data(group["cfg"]),
                          "runs": group["runs"]})
    return pairs
