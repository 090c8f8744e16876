"""Score a network on a list of volumes: per case and class, per class, overall.

The protocol of the papers (reference-original.md §6): each metric per class on each 3-D
volume, then the mean over the volumes per class, then the mean over the foreground classes.
Means use nanmean, so values the "nan" empty policy leaves undefined are excluded.
"""
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..config import EvalConfig, to_dict
from .case import METRIC_NAMES, case_metrics, slice_dice
from .inference import check_patch_size, predict_volume
from .postprocess import postprocess


def nanmean(values: Sequence[float]) -> float:
    """Mean ignoring NaN; NaN (without a warning) when nothing is defined."""
    arr = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(arr)) if arr.size else float("nan")


@dataclass
class EvalResult:
    """Everything one evaluation produced.

    per_case: one row per (case, class): {"case", "class", "dice", ..., "asd"}.
    per_class: {class: {metric: mean over cases}}.  mean: {metric: mean over classes}.
    slice_dice: per-image Dice of every slice with foreground (Fig. 6 histogram).
    settings: the evaluation settings (interp_order, tta_flip, empty_policy, asd_mode, spacing...).
    """

    per_case: List[Dict[str, Any]]
    per_class: Dict[int, Dict[str, float]]
    mean: Dict[str, float]
    slice_dice: List[float] = field(default_factory=list)
    settings: Dict[str, Any] = field(default_factory=dict)

    @property
    def mean_dice(self) -> float:
        return self.mean["dice"]

    @property
    def num_cases(self) -> int:
        return len({row["case"] for row in self.per_case})

    @property
    def summary(self) -> Dict[str, Any]:
        """Means per class and overall, with the settings (what `summary.json` holds)."""
        return {
            "num_cases": self.num_cases,
            "settings": dict(self.settings),
            "per_class": {str(c): dict(m) for c, m in self.per_class.items()},
            "mean": dict(self.mean),
            "mean_dice": self.mean_dice,
        }

    def to_dict(self) -> Dict[str, Any]:
        out = self.summary
        out["per_case"] = [dict(row) for row in self.per_case]
        out["slice_dice"] = list(self.slice_dice)
        return out


def summarize(per_case: List[Dict[str, Any]], num_classes: int, slice_values: Optional[List[float]] = None,
              settings: Optional[Dict[str, Any]] = None) -> EvalResult:
    """Aggregate per-case rows: mean over cases per class, then mean over classes."""
    per_class = {
        c: {m: nanmean([row[m] for row in per_case if row["class"] == c]) for m in METRIC_NAMES}
        for c in range(1, num_classes)
    }
    mean = {m: nanmean([per_class[c][m] for c in per_class]) for m in METRIC_NAMES}
    return EvalResult(per_case, per_class, mean, list(slice_values or []), dict(settings or {}))


def merge_results(parts: Sequence[EvalResult], names: Sequence[str], num_classes: int) -> EvalResult:
    """One result from evaluations of disjoint parts of `names` (data-parallel ranks validating a
    share each): the per-case rows in the order of `names`, so the means are bit-for-bit those of one
    evaluation of all of them.  The slice Dice values keep the parts' order (only their histogram is used)."""
    owners = Counter(case for part in parts for case in dict.fromkeys(row["case"] for row in part.per_case))
    missing, unknown = sorted(set(names) - set(owners)), sorted(set(owners) - set(names))
    repeated = sorted(case for case, count in owners.items() if count > 1)
    if missing or repeated or unknown:
        raise ValueError(f"merge_results: the parts must score each of the {len(names)} names once; missing "
                         f"{missing[:3]}, in several parts {repeated[:3]}, unknown {unknown[:3]}")
    position = {name: i for i, name in enumerate(names)}
    rows = sorted((row for part in parts for row in part.per_case), key=lambda row: position[row["case"]])
    slices = [value for part in parts for value in part.slice_dice]
    return summarize(rows, num_classes, slices, parts[0].settings if parts else {})


# Threads scoring volumes while the next ones are predicted: the surface distances (scipy's Euclidean
# distance transforms or k-d tree queries, both of which release the GIL) are ~90% of the scoring, and
# scoring 20 ACDC volumes took 0.53 s in one thread and 0.32 s in two on a 2-core machine.
METRIC_THREADS = min(4, os.cpu_count() or 1)


def evaluate_volumes(net: nn.Module, source: Any, names: Sequence[str], num_classes: int, patch_size: Sequence[int],
                     eval_cfg: EvalConfig, device: Optional[torch.device] = None, progress: bool = False,
                     graphs=None, threads: int = METRIC_THREADS, distances: bool = True) -> EvalResult:
    """Predict and score every volume in `names` read with `source.read_volume(name) -> (image, label)`.

    eval_cfg: interp_order and tta_flip (inference), postprocess (of each predicted volume), empty_policy
    and asd_mode (metrics), spacing
    (one value per axis of the (S, H, W) volume, e.g. [10, 1.5, 1.5]; null = unit, as the papers).
    device: where the slices go (None: the network's device).  progress: a tqdm bar over volumes.
    graphs: an `EvalGraphs` of `net`, kept by the caller across calls (validation during training).
    threads: volumes scored at once (the scores do not depend on it).
    distances: False leaves HD95 / ASD NaN (validation between `eval.val_distances_every`).
    """
    check_patch_size(net, patch_size)
    spacing = list(eval_cfg.spacing) if eval_cfg.spacing is not None else None
    iterator = names
    if progress:
        from tqdm import tqdm

        iterator = tqdm(names, desc="evaluate", unit="vol", leave=False)
    def score(pred: np.ndarray, label: np.ndarray):
        pred = postprocess(pred, num_classes, eval_cfg.postprocess)  # here: in the scoring threads
        return (case_metrics(pred, label, num_classes, spacing, eval_cfg.empty_policy, eval_cfg.asd_mode, distances),
                slice_dice(pred, label, num_classes))

    with ThreadPoolExecutor(max_workers=max(threads, 1)) as pool:
        pending = []  # in the order of `names`: the rows and slice values keep that order
        for name in iterator:
            image, label = source.read_volume(name)
            pred = predict_volume(net, image, patch_size, eval_cfg.interp_order, eval_cfg.tta_flip, device,
                                  graphs=graphs)
            pending.append((name, pool.submit(score, pred, label)))
        rows, slices = [], []
        for name, future in pending:
            scores, slice_values = future.result()
            rows.extend({"case": name, "class": c, **scores[c]} for c in sorted(scores))
            slices.extend(slice_values)
    settings = {**to_dict(eval_cfg), "num_classes": num_classes, "patch_size": list(patch_size)}
    return summarize(rows, num_classes, slices, settings)
