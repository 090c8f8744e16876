"""Two evaluated runs compared volume by volume (`ssl-mamba cases`).

A mean Dice hides whether a change found volumes a run had missed or moved every volume a little;
`case_changes` says which, from the runs' `metrics/<split>/per_case.csv`.  Means here are means of the
volumes' Dice (each averaged over its classes), which equal the table's Dice when no value is NaN.
"""
import csv
import math
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Union

from ..errors import DataError
from .report import case_dice, report_path


def read_case_dice(run_dir: Union[str, Path], split: str = "test") -> Dict[str, float]:
    """`case_dice` of an evaluated run's per_case.csv (for two-network runs, the reported network's, as
    in the table); NaN for a volume with no defined Dice."""
    path = report_path(run_dir, split, "per_case.csv")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DataError(f"{path}: no volumes in it")
    if not {"case", "dice"} <= set(rows[0]):
        raise DataError(f"{path}: not a per_case.csv written by ssl-mamba (needs 'case' and 'dice' columns)")
    values = []
    for row in rows:
        try:
            values.append({"case": row["case"], "dice": float(row["dice"])})
        except (TypeError, ValueError):
            raise DataError(f"{path}: case {row['case']!r}: dice {row['dice']!r} is not a number") from None
    return case_dice(values)


def case_changes(before: Mapping[str, float], after: Mapping[str, float], missed: float = 0.2,
                 top: int = 5, names: Sequence[str] = ("A", "B")) -> List[str]:
    """Lines: both means, how many volumes each run all but missed (Dice below `missed`), then up to
    `top` volumes that gained and that lost most.  Volumes without a defined Dice in either run are
    left out, and counted."""
    only = sorted(set(before) ^ set(after))
    if only:
        raise DataError(f"the runs were scored on different volumes: {only[0]} is in one only "
                        f"({len(only)} differ); compare runs evaluated on the same split")
    cases = defined_in_both(before, after)
    if not cases:
        raise DataError("no volume has a defined Dice in both runs")
    delta = {c: after[c] - before[c] for c in cases}
    lines = [f"{len(cases)} volumes; mean Dice {names[0]} {_mean(before, cases):.4f}, "
             f"{names[1]} {_mean(after, cases):.4f}",
             f"below {missed:g} Dice: {names[0]} {sum(before[c] < missed for c in cases)}, "
             f"{names[1]} {sum(after[c] < missed for c in cases)}"]
    if len(cases) < len(before):
        lines.append(f"left out (no defined Dice in one run): {len(before) - len(cases)} volumes")
    ranked = sorted(cases, key=lambda c: delta[c])
    gained = [c for c in reversed(ranked) if delta[c] > 0][:top]
    lost = [c for c in ranked if delta[c] < 0][:top]
    for title, chosen in (("gained most", gained), ("lost most", lost)):
        listed = ", ".join(f"{c} {before[c]:.3f} -> {after[c]:.3f}" for c in chosen)
        lines.append(f"{title}: {listed or 'none'}")
    return lines


def defined_in_both(before: Mapping[str, float], after: Mapping[str, float]) -> List[str]:
    """The volumes of `before` that `after` scored too, with a defined (not NaN) Dice in both, in order."""
    return [c for c in before if c in after and not (math.isnan(before[c]) or math.isnan(after[c]))]


def _mean(values: Mapping[str, float], cases: Sequence[str]) -> float:
    return sum(values[c] for c in cases) / len(cases)
