"""Dataset reports and validation, behind `ssl-mamba data info [--check] [--intensity]`."""
import math
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple, Union

import numpy as np

from ..errors import DataError
from .normalize import HIGH_PERCENTILE
from .sources import SPLITS, SegmentationSource, case_of, open_dataset, slice_shape_summary
from .split import cases_in_order, make_split

PathLike = Union[str, Path]


def _volume_stats(source: SegmentationSource, labels: Set[int]) -> Dict[str, dict]:
    """Per split: listed volumes, stored volumes, their slices, cases and in-plane sizes."""
    out = {}
    for split in SPLITS:
        names = source.volume_names(split)
        stored = [n for n in names if source.has_volume(n)]
        n_slices, shapes = 0, []
        for name in stored:
            _, label = source.read_volume(name)
            n_slices += label.shape[0]
            shapes.append(label.shape[1:])
            labels.update(int(v) for v in np.unique(label))
        out[split] = {"volumes_listed": len(names), "volumes_stored": len(stored), "slices": n_slices,
                      "cases": len(dict.fromkeys(case_of(n) for n in names)), "sizes": slice_shape_summary(shapes)}
    return out


def dataset_info(root: PathLike, labeled_cases: Optional[int] = None) -> dict:
    """Counts of training slices and cases, volumes per split, the labeled/unlabeled split for
    `labeled_cases`, label values present and image sizes.  Reads every file once."""
    source = open_dataset(root)
    labels: Set[int] = set()
    shapes: List[Tuple[int, ...]] = []
    for name in source.train_slice_names:
        _, label = source.read_slice(name)
        shapes.append(label.shape)
        labels.update(int(v) for v in np.unique(label))
    volumes = _volume_stats(source, labels)
    split = make_split(source, labeled_cases=labeled_cases)
    info = {
        "root": str(source.root),
        "kind": source.kind,
        "train_slices": len(source.train_slice_names),
        "train_cases": len(cases_in_order(source)),
        "labeled_cases": len(split.labeled_cases),
        "labeled_slices": len(split.labeled_indices),
        "unlabeled_slices": len(split.unlabeled_indices),
        "volumes": volumes,
        "label_values": sorted(labels),
        "num_classes": max(labels) + 1 if labels else 0,
        "slice_sizes": slice_shape_summary(shapes),
    }
    if source.kind == "pack":
        info["pack"] = {k: source.metadata[k] for k in ("dtype", "max_abs_error", "source_root") if k in source.metadata}
    return info


def _check_arrays(where: str, image: np.ndarray, label: np.ndarray, num_classes: int) -> List[str]:
    problems = []
    if not np.all(np.isfinite(image)):
        problems.append(f"{where}: image has NaN or inf values")
    if label.size and int(label.max()) >= num_classes:
        problems.append(f"{where}: label value {int(label.max())} >= num_classes ({num_classes})")
    return problems


def check_dataset(root: PathLike, num_classes: int) -> List[str]:
    """Open and validate every file of the dataset; returns one line per problem ([] if clean).

    Checks: the layout and lists, every listed training slice and every val/test volume (exists,
    readable, has image and label, equal shapes, finite image, labels < num_classes), duplicate
    names, and any stored training volume.
    """
    try:
        source = open_dataset(root)
    except DataError as exc:
        return [str(exc)]
    problems: List[str] = []
    seen: Set[str] = set()
    for name in source.train_slice_names:
        if name in seen:
            problems.append(f"{source.root}: slice {name!r} is listed twice")
        seen.add(name)
        problems += _check_item(f"{source.root}: slice {name}", source.read_slice, name, num_classes)
    for split in SPLITS:
        for name in source.volume_names(split):
            if split == "train" and not source.has_volume(name):
                continue
            problems += _check_item(f"{source.root}: volume {name}", source.read_volume, name, num_classes)
    return problems


def _check_item(where: str, read, name: str, num_classes: int) -> List[str]:
    """Problems of one slice or volume: its read error, or what `_check_arrays` finds."""
    try:
        image, label = read(name)
    except DataError as exc:
        return [str(exc)]
    return _check_arrays(where, image, label, num_classes)


DARKER = 0.8  # flagged below this fraction of the darkest labeled case: clear of the cases' own spread


def _brightness(image: np.ndarray, what: str) -> float:
    """The 99.5th intensity percentile (robust to a few hot voxels, unlike the maximum), as
    `data.normalize: percentile` uses it; a DataError naming `what` if the image is not finite."""
    if not np.all(np.isfinite(image)):
        raise DataError(f"{what}: image has NaN or inf values")
    return float(np.percentile(image, HIGH_PERCENTILE))


def intensity_coverage(root: PathLike, labeled_cases: int, splits: Tuple[str, ...] = ("val", "test")) -> dict:
    """Which evaluation volumes are clearly darker than every labeled case: their 99.5th intensity
    percentile below `DARKER` times the darkest labeled case's (a case's slices pooled, both frames).

    Why: each stored volume is rescaled by its own minimum and maximum, so a volume with a few very
    bright voxels stores its tissue dark, and a network trained on a handful of bright labeled cases
    can miss it entirely (ACDC at 3 labeled cases: results/README.md, thirteenth session).  A coverage
    check, not a predictor: `data.normalize: percentile` is a remedy to try, or training on darker
    copies (`data.intensity_scale`, with a range suggested from the training images alone: the
    evaluation volumes are reported, never used to choose it).

    Returns {"labeled": {case: percentile}, "threshold": t, "volumes": {split: {volume: percentile}},
    "checked": {split: stored volumes read}, "not_stored": {split: listed volumes without a file},
    "darker": {split: [[volume, percentile], ...] darkest first},
    "unlabeled": {case: percentile} of the unlabeled training cases,
    "unlabeled_quantile": their `UNLABELED_QUANTILE` quantile (None without any),
    "suggested_intensity_scale": `suggest_intensity_scale`'s [low, 1.0], or None}."""
    source = open_dataset(root)
    split = make_split(source, labeled_cases=labeled_cases)
    training = training_intensities(source, split)
    brightness = training["labeled"]
    threshold = DARKER * min(brightness.values())
    report: dict = {"labeled": brightness, "threshold": threshold, "volumes": {}, "checked": {}, "not_stored": {},
                    "darker": {}}
    for name_split in splits:
        listed = source.volume_names(name_split)
        stored = [name for name in listed if source.has_volume(name)]
        found = [[name, _brightness(source.read_volume(name)[0], f"{source.root}: volume {name}")] for name in stored]
        report["volumes"][name_split] = dict(found)
        report["checked"][name_split] = len(stored)
        report["not_stored"][name_split] = len(listed) - len(stored)
        report["darker"][name_split] = sorted((item for item in found if item[1] < threshold), key=lambda i: i[1])
    report.update({key: training[key] for key in ("unlabeled", "unlabeled_quantile", "suggested_intensity_scale")})
    return report


def training_intensities(source: SegmentationSource, split) -> dict:
    """The training images' side of `intensity_coverage`, for any split (what `train` checks at its
    start): {"labeled": {case: percentile}, "unlabeled": {case: percentile}, "unlabeled_quantile": q or
    None, "suggested_intensity_scale": [low, 1.0] or None}."""
    labeled = _case_brightness(source, split.labeled_indices, "labeled case")
    unlabeled = _case_brightness(source, split.unlabeled_indices, "unlabeled case")
    values = list(unlabeled.values())
    return {"labeled": labeled, "unlabeled": unlabeled,
            "unlabeled_quantile": float(np.quantile(values, UNLABELED_QUANTILE)) if values else None,
            "suggested_intensity_scale": suggest_intensity_scale(list(labeled.values()), values)}


def _case_brightness(source: SegmentationSource, indices: List[int], what: str) -> Dict[str, float]:
    """{case: 99.5th percentile of its training slices pooled} over the slices at `indices`, read one
    case at a time (`train` checks every training slice at its start: not the whole set in memory)."""
    names = source.train_slice_names
    by_case: Dict[str, List[int]] = {}
    for index in indices:
        by_case.setdefault(source.case_of(names[index]), []).append(index)
    return {case: _brightness(np.concatenate([source.read_slice(names[i])[0].ravel() for i in members]),
                              f"{source.root}: {what} {case}") for case, members in by_case.items()}


# The suggested range reaches all but the darkest 5% of the unlabeled cases, so one odd case does not set it.
UNLABELED_QUANTILE = 0.05


def suggest_intensity_scale(labeled: List[float], unlabeled: List[float]) -> Optional[List[float]]:
    """A `data.intensity_scale` [low, 1.0] from the training images alone (the unlabeled cases are part of
    every semi-supervised run's input; the evaluation volumes are not used): None when the unlabeled
    cases' `UNLABELED_QUANTILE` quantile is not clearly darker (`DARKER`) than every labeled case.
    Otherwise low is that quantile over the brightest labeled case, rounded down to a multiple of 0.05
    (at least 0.05), so the darkest copies of every labeled case are at least as dark as it."""
    if not unlabeled or not labeled:
        return None
    target = float(np.quantile(unlabeled, UNLABELED_QUANTILE))
    if target >= DARKER * min(labeled):
        return None
    low = math.floor(target / max(labeled) / 0.05 + 1e-9) * 0.05  # 1e-9: 0.3 / 0.05 is 5.999... in floats
    return [round(max(low, 0.05), 2), 1.0]
