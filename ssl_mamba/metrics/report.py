"""Evaluation reports on disk, written atomically, and found again (`report_path`).

`write_reports(result, out_dir)` writes three files:

- `per_case.csv`: case, class, dice, iou, acc, pre, sen, spe, hd95, asd (one row per case and class);
- `per_class.csv`: class (1..K-1, then "mean"), the same metric columns, means over cases;
- `summary.json`: `EvalResult.summary` (num_cases, settings, per_class, mean, mean_dice) plus
  `slice_dice` (the per-image Dice values) and any `extra` keys the caller adds.
"""
import csv
import io
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ..errors import DataError
from ..utils.io import atomic_write_json, atomic_write_text
from .case import METRIC_NAMES
from .evaluate import EvalResult

PAPER_COLUMNS = ("Dice", "IoU", "Acc", "Pre", "Sen", "Spe", "HD", "ASD")


def _csv_text(header: List[str], rows: List[List[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.6f}"


def write_reports(result: EvalResult, out_dir: Union[str, Path], extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write per_case.csv, per_class.csv and summary.json into `out_dir`; returns `out_dir`."""
    out_dir = Path(out_dir)
    header = list(METRIC_NAMES)
    case_rows = [[row["case"], row["class"]] + [_fmt(row[m]) for m in header] for row in result.per_case]
    atomic_write_text(out_dir / "per_case.csv", _csv_text(["case", "class"] + header, case_rows))
    class_rows = [[c] + [_fmt(result.per_class[c][m]) for m in header] for c in sorted(result.per_class)]
    class_rows.append(["mean"] + [_fmt(result.mean[m]) for m in header])
    atomic_write_text(out_dir / "per_class.csv", _csv_text(["class"] + header, class_rows))
    summary: Dict[str, Any] = {**result.summary, "slice_dice": list(result.slice_dice)}
    summary.update(extra or {})
    atomic_write_json(out_dir / "summary.json", _json_safe(summary))
    return out_dir


def report_path(run_dir: Union[str, Path], split: str, name: str) -> Path:
    """`<run_dir>/metrics/<split>/<name>`, a DataError saying how to make it if it is missing."""
    path = Path(run_dir) / "metrics" / split / name
    if not path.is_file():
        raise DataError(f"{path} not found: evaluate the run first (ssl-mamba evaluate --run {run_dir})")
    return path


def _json_safe(obj: Any) -> Any:
    """NaN is not JSON: write it as null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def paper_row(summary: Mapping[str, Any]) -> str:
    """'Dice IoU Acc Pre Sen Spe HD ASD' of the mean over classes, 4 decimals, space separated.

    Accepts `EvalResult.summary` or a loaded summary.json (where NaN was written as null).
    """
    mean = summary["mean"]
    values = [mean[m] for m in METRIC_NAMES]
    return " ".join("nan" if v is None or math.isnan(v) else f"{v:.4f}" for v in values)


def case_dice(per_case: Sequence[Mapping[str, Any]]) -> Dict[str, float]:
    """{case: Dice averaged over its classes}, NaN / missing values left out (NaN for a case with
    none defined), in first-seen order."""
    by_case: Dict[str, List[float]] = {}
    for row in per_case:
        dice = row["dice"]
        defined = by_case.setdefault(row["case"], [])
        if dice is not None and not math.isnan(dice):
            defined.append(float(dice))
    return {case: sum(v) / len(v) if v else math.nan for case, v in by_case.items()}


def lowest_cases(per_case: Sequence[Mapping[str, Any]], count: int = 3) -> str:
    """'lowest mean Dice: <case> <dice>, ...': the `count` volumes with the lowest Dice averaged over
    their classes, the first place to look when a mean is low (a whole missed volume and thin errors
    everywhere give the same mean)."""
    means = sorted((mean, case) for case, mean in case_dice(per_case).items() if not math.isnan(mean))
    return "lowest mean Dice: " + ", ".join(f"{case} {mean:.4f}" for mean, case in means[:count])
