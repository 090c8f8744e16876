"""Per-class metrics of one predicted volume against its label.

Pixel metrics come from one confusion matrix per volume (TP/FP/TN/FN per foreground class):

    dice = 2TP / (2TP + FP + FN)    iou = TP / (TP + FP + FN)     acc = (TP + TN) / N
    pre  = TP / (TP + FP)           sen = TP / (TP + FN)          spe = TN / (TN + FP)

Distances (hd95, asd) come from the surface distances of `surface.py`, computed once per class.
All metrics are in voxel units unless a spacing is given, as in the papers.

Empty masks (`empty_policy`), where a ratio is 0/0 or a surface is missing:

- ``"original"`` reproduces SSL4MIS/Mamba-UNet `calculate_metric_percase`: an empty prediction
  scores Dice 0 and HD95 0, and so ASD 0; ratios that are 0/0 are 0 (both empty gives Dice 0,
  exactly as the original).  The original would crash (medpy raises) when the label is empty and
  the prediction is not; here the distances are 0 in that case too, the same value the original
  gives when the other surface is missing, and Dice is its natural 0.  Note that this rewards
  empty or spurious predictions with a perfect distance: use "nan" or "worst" to avoid it.
- ``"nan"``: every undefined value is NaN (0/0 ratios; distances when either mask is empty);
  means over cases use nanmean, so undefined values are left out.
- ``"worst"``: when exactly one mask is empty the distances are the volume's diagonal in spacing
  units and undefined ratios are 0; when both are empty the prediction is correct: ratios 1 and
  distances 0.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .surface import surface_distances

METRIC_NAMES = ("dice", "iou", "acc", "pre", "sen", "spe", "hd95", "asd")
DISTANCE_METRICS = ("hd95", "asd")  # the surface-distance ones (left NaN by `distances=False`)
EMPTY_POLICIES = ("original", "nan", "worst")
ASD_MODES = ("symmetric", "medpy_asd", "assd")


def _check_args(pred: np.ndarray, gt: np.ndarray, num_classes: int, spacing, empty_policy: str, asd_mode: str) -> None:
    if empty_policy not in EMPTY_POLICIES:
        raise ConfigError(f"eval.empty_policy is {empty_policy!r}; choose one of {', '.join(EMPTY_POLICIES)}")
    if asd_mode not in ASD_MODES:
        raise ConfigError(f"eval.asd_mode is {asd_mode!r}; choose one of {', '.join(ASD_MODES)}")
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2 (background + one class), got {num_classes}")
    if pred.shape != gt.shape:
        raise DataError(f"prediction shape {pred.shape} differs from label shape {gt.shape}")
    if pred.size == 0:
        raise DataError(f"cannot score an empty volume of shape {pred.shape}")
    for what, arr in (("prediction", pred), ("label", gt)):
        if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
            raise DataError(f"{what} must hold integer class indices, got dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= num_classes:
            raise DataError(f"{what} holds class {hi if hi >= num_classes else lo}, outside 0..{num_classes - 1}")
    if spacing is not None and len(spacing) != pred.ndim:
        raise ConfigError(f"eval.spacing {list(spacing)} must give one value per axis of the {pred.ndim}-D volume")


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts: rows are predicted classes, columns are label classes."""
    flat = pred.astype(np.int64).ravel() * num_classes + gt.astype(np.int64).ravel()
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(num: float, den: float, undefined: float) -> float:
    return float(num) / float(den) if den > 0 else undefined


def _pixel_metrics(tp: int, fp: int, fn: int, tn: int, undefined: float) -> Dict[str, float]:
    n = tp + fp + fn + tn
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, undefined),
        "iou": _ratio(tp, tp + fp + fn, undefined),
        "acc": _ratio(tp + tn, n, undefined),
        "pre": _ratio(tp, tp + fp, undefined),
        "sen": _ratio(tp, tp + fn, undefined),
        "spe": _ratio(tn, tn + fp, undefined),
    }


def _undefined_ratio(policy: str, both_empty: bool) -> float:
    """Value of a 0/0 ratio under `policy` (see the module docstring)."""
    if policy == "nan":
        return float("nan")
    if policy == "worst" and both_empty:
        return 1.0
    return 0.0


def _missing_distance(policy: str, both_empty: bool, shape: Sequence[int], spacing: Optional[Sequence[float]]) -> float:
    """hd95/asd when a surface is missing under `policy`."""
    if policy == "nan":
        return float("nan")
    if policy == "worst" and not both_empty:
        sizes = np.asarray(shape, dtype=np.float64) * (1.0 if spacing is None else np.asarray(spacing, np.float64))
        return float(np.sqrt((sizes**2).sum()))
    return 0.0


def class_metrics(pred_c: np.ndarray, gt_c: np.ndarray, counts: Sequence[int], spacing: Optional[Sequence[float]],
                  empty_policy: str, asd_mode: str, distances: bool = True) -> Dict[str, float]:
    """Metrics of one class from its boolean masks and its (tp, fp, fn, tn) counts (HD95 / ASD NaN
    without `distances`)."""
    tp, fp, fn, tn = (int(v) for v in counts)
    pred_empty, gt_empty = tp + fp == 0, tp + fn == 0
    both_empty = pred_empty and gt_empty
    row = _pixel_metrics(tp, fp, fn, tn, _undefined_ratio(empty_policy, both_empty))
    if not distances:
        row["hd95"] = row["asd"] = float("nan")
    elif pred_empty or gt_empty:
        row["hd95"] = row["asd"] = _missing_distance(empty_policy, both_empty, pred_c.shape, spacing)
    else:
        surface = surface_distances(pred_c, gt_c, spacing)
        row["hd95"] = surface.hd95()
        row["asd"] = surface.asd(asd_mode)
    return row


def case_metrics(pred: np.ndarray, gt: np.ndarray, num_classes: int, spacing: Optional[Sequence[float]] = None,
                 empty_policy: str = "original", asd_mode: str = "symmetric",
                 distances: bool = True) -> Dict[int, Dict[str, float]]:
    """{class: {"dice","iou","acc","pre","sen","spe","hd95","asd"}} for classes 1..K-1 of one volume.

    pred, gt: integer label volumes of the same shape (any number of axes, usually (S, H, W)).
    spacing: voxel size per axis (None: unit spacing, as the papers).  See the module docstring
    for `empty_policy`; `asd_mode` is "symmetric" (paper Eq. 9), "medpy_asd" or "assd".
    distances: False leaves HD95 and ASD NaN (the surface distances are most of the time).
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_args(pred, gt, num_classes, spacing, empty_policy, asd_mode)
    cm = confusion_matrix(pred, gt, num_classes)
    out = {}
    for c in range(1, num_classes):
        tp = cm[c, c]
        fp, fn = cm[c, :].sum() - tp, cm[:, c].sum() - tp
        tn = pred.size - tp - fp - fn
        out[c] = class_metrics(pred == c, gt == c, (tp, fp, fn, tn), spacing, empty_policy, asd_mode, distances)
    return out


def slice_dice(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> List[float]:
    """Per-image Dice of an (S, H, W) volume, for the Mamba-UNet paper's Fig. 6 histogram.

    The Dice of a slice is the mean over the foreground classes present in its prediction or
    its label; slices where neither has any foreground are left out (their Dice is undefined).
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise DataError(f"slice_dice needs two (S, H, W) volumes of one shape, got {pred.shape} and {gt.shape}")
    values = []
    for s in range(pred.shape[0]):
        cm = confusion_matrix(pred[s], gt[s], num_classes)
        tp = np.diag(cm)[1:].astype(np.float64)  # (K-1,)
        denom = cm[1:, :].sum(axis=1) + cm[:, 1:].sum(axis=0)  # |pred == c| + |gt == c|, (K-1,)
        present = denom > 0
        if present.any():
            values.append(float(np.mean(2.0 * tp[present] / denom[present])))
    return values
