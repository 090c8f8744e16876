"""Figures as PNG files (matplotlib, Agg backend: no display needed).

- `dice_histogram`: the per-image Dice histogram of the Mamba-UNet paper's Fig. 6;
- `overlay_figure` / `overlay_panels`: image, ground truth and prediction of a few test slices,
  one fixed colour per class (`CLASS_COLOURS`);
- `compare_curves`: one scalar (e.g. "val/net1/dice") of several runs on one axis, to compare
  methods, seeds or settings;
- `paper_comparison` / `paper_comparison_of_runs`: our value of each reproduced row against the
  paper's, one line per row (`ssl-mamba table --figure`, `scripts/reproduce.py table`);
- `training_curves`: losses and validation metrics of a run, read by `read_scalars` from the
  trainer's `metrics.jsonl` (one JSON object per line with "step" and scalar keys such as
  "loss/total" or "val/net1/dice") or, when that file is absent, from the TensorBoard event files.
"""
import gzip
import io
import json
import math
import struct
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import DataError
from ..utils.io import atomic_write_bytes

PathLike = Union[str, Path]
# RGB per class index; background is left transparent.  Classes beyond the list reuse it cyclically.
CLASS_COLOURS = ((0.0, 0.0, 0.0), (0.90, 0.10, 0.10), (0.10, 0.75, 0.20), (0.15, 0.35, 0.95),
                 (0.95, 0.85, 0.10), (0.85, 0.20, 0.85), (0.10, 0.85, 0.85), (0.95, 0.55, 0.10),
                 (0.55, 0.30, 0.85))
Scalars = Dict[str, Tuple[List[int], List[float]]]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: PathLike) -> Path:
    """Write the figure atomically (a killed run leaves no half-written picture); PNGs as 256-colour
    palettes (`palette_png`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    png = path.suffix.lower() == ".png"
    fig.savefig(buffer, format="png" if png else None, dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, palette_png(buffer.getvalue()) if png else buffer.getvalue())
    return path


def palette_png(data: bytes) -> bytes:
    """An RGB(A) PNG as a 256-colour palette PNG: about half the bytes (an overlay panel 306 -> 165 KB)
    with no visible change (mean channel difference 0.03 of 255).  Every published run keeps its
    figures, and the committed results travel with each GPU-machine call, which takes 64 MiB in all."""
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def dice_histogram(values: Any, path: PathLike, bins: int = 20, title: Optional[str] = None) -> Path:
    """Histogram of per-image Dice: `values` is an EvalResult (its .slice_dice) or a sequence."""
    data = np.asarray(getattr(values, "slice_dice", values), dtype=np.float64)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(data, bins=bins, range=(0.0, 1.0), color="tab:blue", edgecolor="white")
    ax.set_xlabel("Dice per image")
    ax.set_ylabel("number of images")
    mean = float(data.mean()) if data.size else float("nan")
    ax.set_title(title or f"{data.size} images, mean Dice {mean:.4f}")
    return _save(fig, path)


def label_rgba(label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W) class indices -> (H, W, 4) colours, background transparent."""
    colours = np.array([CLASS_COLOURS[i % len(CLASS_COLOURS)] for i in range(int(label.max()) + 1)])  # (K', 3)
    rgba = np.zeros(label.shape + (4,), dtype=np.float64)
    rgba[..., :3] = colours[label]
    rgba[..., 3] = np.where(label > 0, alpha, 0.0)
    return rgba


def overlay_panels(samples: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]], path: PathLike,
                   titles: Optional[Sequence[str]] = None) -> Path:
    """One row per (image, label, prediction) 2-D triple: image, label overlay, prediction overlay."""
    if not samples:
        raise DataError("overlay figure: no slices to draw")
    plt = _pyplot()
    fig, axes = plt.subplots(len(samples), 3, figsize=(9, 3 * len(samples)), squeeze=False)
    for r, (image, label, pred) in enumerate(samples):
        for c, (overlay, name) in enumerate(((None, "image"), (label, "ground truth"), (pred, "prediction"))):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray", interpolation="nearest")
            if overlay is not None:
                ax.imshow(label_rgba(np.asarray(overlay).astype(np.int64)), interpolation="nearest")
            ax.set_title(f"{titles[r]}: {name}" if titles and c == 0 else name, fontsize=9)
            ax.axis("off")
    return _save(fig, path)


def _richest_slice(label: np.ndarray) -> int:
    """Index of the slice with the most labelled foreground."""
    return int(np.argmax((label > 0).reshape(label.shape[0], -1).sum(axis=1)))


def foreground_crop(image: np.ndarray, label: np.ndarray, pred: np.ndarray, margin: int = 16) -> tuple:
    """(image, label, pred) cut to the box around every labelled or predicted pixel plus `margin`:
    the structures fill the panel instead of a corner of the field of view (ACDC's heart is
    ~80 of ~230 pixels across), and the PNG is about half the size.  All three whole when both
    masks are empty."""
    ys, xs = np.nonzero((np.asarray(label) > 0) | (np.asarray(pred) > 0))
    if ys.size == 0:
        return image, label, pred
    y0, y1 = max(int(ys.min()) - margin, 0), int(ys.max()) + margin + 1
    x0, x1 = max(int(xs.min()) - margin, 0), int(xs.max()) + margin + 1
    return tuple(a[y0:y1, x0:x1] for a in (image, label, pred))


def overlay_figure(net: Any, source: Any, names: Sequence[str], cfg: Any, path: PathLike, device: Any = None) -> Path:
    """Predict each volume in `names` (with cfg.data.patch_size and cfg.eval's resize/TTA), post-process it
    as it is scored (cfg.eval.postprocess, on the whole volume) and draw its slice with the most labelled
    foreground, cropped to it (`foreground_crop`)."""
    from .inference import predict_volume
    from .postprocess import postprocess

    samples, titles = [], []
    for name in names:
        image, label = source.read_volume(name)
        pred = predict_volume(net, image, cfg.data.patch_size, cfg.eval.interp_order, cfg.eval.tta_flip, device)
        pred = postprocess(pred, cfg.data.num_classes, cfg.eval.postprocess)
        s = _richest_slice(label)
        samples.append(foreground_crop(image[s], label[s], pred[s]))
        titles.append(f"{name} slice {s}")
    return overlay_panels(samples, path, titles)


# ---------------------------------------------------------------------------------------------- scalars


def _read_jsonl(path: Path) -> Scalars:
    """Non-finite values (written as null) become NaN; an unfinished last line (a killed run) is skipped."""
    scalars: Scalars = {}
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise DataError(f"{path}: line {number} is not JSON") from None
        if not isinstance(record, dict) or "step" not in record:
            raise DataError(f"{path}: line {number} has no 'step'")
        for key, value in record.items():
            if key == "step" or isinstance(value, (bool, str, list, dict)):
                continue
            steps, values = scalars.setdefault(key, ([], []))
            steps.append(int(record["step"]))
            values.append(float("nan") if value is None else float(value))
    return scalars


def _tfrecords(path: Path):
    """Payloads of a TFRecord file: [len u64][crc u32][data][crc u32] repeated (CRCs not checked)."""
    data = path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        start = pos + 12
        if start + length + 4 > len(data):
            break  # a record still being written
        yield data[start:start + length]
        pos = start + length + 4


def _read_events(paths: Sequence[Path]) -> Scalars:
    from tensorboardX.proto import event_pb2

    scalars: Scalars = {}
    for path in paths:
        for payload in _tfrecords(path):
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value:
                if value.WhichOneof("value") == "simple_value":
                    number = value.simple_value
                elif value.HasField("tensor") and len(value.tensor.float_val) == 1:
                    number = value.tensor.float_val[0]
                else:
                    continue
                steps, values = scalars.setdefault(value.tag, ([], []))
                steps.append(int(event.step))
                values.append(float(number))
    return scalars


def read_scalars(run_dir: PathLike) -> Scalars:
    """{key: (steps, values)} from `<run>/metrics.jsonl` (or the `.gz` a published results row
    keeps), else from `<run>/events.out.tfevents.*`."""
    run_dir = Path(run_dir)
    for jsonl in (run_dir / "metrics.jsonl", run_dir / "metrics.jsonl.gz"):
        if jsonl.is_file():
            return _read_jsonl(jsonl)
    events = sorted(run_dir.glob("events.out.tfevents.*"))
    if events:
        return _read_events(events)
    raise DataError(f"{run_dir}: no metrics.jsonl and no events.out.tfevents.* file to draw training curves from")


# Validation metrics drawn by default, one panel each with a line per network: the papers' headline
# pair.  The rest (IoU, Acc, Pre, Sen, Spe, ASD and every per-class value) stay in the logs.
DEFAULT_VAL_METRICS = ("dice", "hd95")


def curve_panels(keys: Sequence[str], default: bool = True) -> Dict[str, List[str]]:
    """{panel title: scalar keys} for `training_curves`.  Validation scalars "val/<net>/<metric>"
    share a panel per metric ("val dice": one line per network); everything else by its prefix
    ("loss", "lr", "weight", ...).  `default` leaves out the per-class and secondary validation
    metrics, which on one axis made the panel unreadable (dozens of lines, Dice beside HD95)."""
    panels: Dict[str, List[str]] = {}
    for key in keys:
        parts = key.split("/")
        if parts[0] == "val" and len(parts) == 3:
            if default and parts[2] not in DEFAULT_VAL_METRICS:
                continue
            title = f"val {parts[2]}"
        elif parts[0] == "val" and default:
            continue  # per-class values: val/<net>/class<k>/<metric>
        else:
            title = parts[0]
        panels.setdefault(title, []).append(key)
    return panels


def training_curves(run_dir: PathLike, path: PathLike, keys: Optional[Sequence[str]] = None) -> Path:
    """Plot training scalars: losses, learning rates, ramp weights, and validation Dice / HD95 per
    network (`curve_panels`).

    keys: which scalars to draw (default: the `curve_panels` selection, without series that stay 0,
    such as a run's skipped-step count).
    """
    scalars = read_scalars(run_dir)
    if keys is None:
        chosen = [k for k in sorted(scalars) if any(v != 0 for v in scalars[k][1])]
    else:
        chosen = [k for k in keys if k in scalars]
    panels = curve_panels(chosen, default=keys is None)
    if not panels:
        raise DataError(f"{run_dir}: none of the scalars {list(keys or [])} were logged; have: {sorted(scalars)}")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (title, names) in zip(axes[0], panels.items()):
        for key in names:
            steps, values = scalars[key]
            ax.plot(steps, [v if math.isfinite(v) else np.nan for v in values], label=key, linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.legend(fontsize=7)
    return _save(fig, path)


def compare_curves(runs: Dict[str, PathLike], path: PathLike, key: str = "val/net1/dice",
                   title: Optional[str] = None, start: int = 0) -> Path:
    """Draw scalar `key` of each run ({legend label: run directory}) on one axis, with each run's
    best value marked (max, or min for distances such as HD95 / ASD).  `start`: leave out the
    iterations before it (the first rise hides the differences that matter later).  A run without
    `key` is a DataError naming the run and the keys it does have."""
    if not runs:
        raise DataError("compare_curves: no runs given")
    lower_is_better = key.rsplit("/", 1)[-1] in ("hd95", "asd") or key.startswith("loss")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, run_dir in runs.items():
        scalars = read_scalars(run_dir)
        if key not in scalars:
            raise DataError(f"{run_dir}: no scalar {key!r} logged; it has {sorted(scalars)}")
        kept = [(step, v) for step, v in zip(*scalars[key]) if step >= start]
        if not kept:
            raise DataError(f"{run_dir}: no {key!r} value at or after iteration {start}")
        steps = [step for step, _ in kept]
        values = [v if math.isfinite(v) else np.nan for _, v in kept]
        (line,) = ax.plot(steps, values, label=label, linewidth=1.2)
        best = int(np.nanargmin(values) if lower_is_better else np.nanargmax(values))
        ax.plot([steps[best]], [values[best]], "o", color=line.get_color(), markersize=4)
        ax.annotate(f"{values[best]:.3f}", (steps[best], values[best]), fontsize=7,
                    textcoords="offset points", xytext=(3, 3), color=line.get_color())
    ax.set_title(title or key)
    ax.set_xlabel("iteration")
    ax.set_ylabel(key)
    ax.legend(fontsize=8)
    return _save(fig, path)


def spread_labels(points: Sequence[Tuple[float, float]], gap: float = 0.035,
                  reach: float = 0.3) -> List[Tuple[float, float]]:
    """Where to write each point's label (axes in [0, 1]): just right of the point, moved down until it is
    `gap` below every label already placed within `reach` in x, so volumes with close scores (the
    found ones cluster top left) keep readable names."""
    placed: List[Tuple[float, float]] = []
    out: List[Optional[Tuple[float, float]]] = [None] * len(points)
    for i in sorted(range(len(points)), key=lambda i: -points[i][1]):
        x, y = points[i][0] + 0.02, points[i][1]
        for px, py in sorted(placed, key=lambda p: -p[1]):
            if abs(px - x) < reach and y > py - gap:
                y = py - gap
        placed.append((x, y))
        out[i] = (x, y)
    return out


def case_scatter(before: Dict[str, float], after: Dict[str, float], path: PathLike,
                 names: Sequence[str] = ("A", "B"), annotate: int = 5) -> Path:
    """Each volume's Dice in run A (x) against run B (y), the diagonal for "no change", and the
    `annotate` volumes that moved most named: found volumes sit high on the left, lost ones low on
    the right.  `before` / `after` as `compare.read_case_dice` returns them; volumes without a defined
    Dice in both are left out."""
    from .compare import defined_in_both

    cases = defined_in_both(before, after)
    if not cases:
        raise DataError("case_scatter: the two runs share no volume")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    xs, ys = [before[c] for c in cases], [after[c] for c in cases]
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
    ax.scatter(xs, ys, s=14, color=CLASS_COLOURS[3])
    named = sorted(cases, key=lambda c: -abs(after[c] - before[c]))[:annotate]
    points = [(before[c], after[c]) for c in named]
    for c, point, text_at in zip(named, points, spread_labels(points)):
        moved = text_at[1] != point[1]  # spread_labels moves a label down only, off a crowded spot
        ax.annotate(c, point, xytext=text_at, fontsize=6, va="top",
                    arrowprops=dict(arrowstyle="-", lw=0.4) if moved else None)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"{names[0]}: volume Dice (mean {np.mean(xs):.3f})")
    ax.set_ylabel(f"{names[1]}: volume Dice (mean {np.mean(ys):.3f})")
    ax.set_title("Per-volume Dice (mean over classes)", fontsize=9)
    ax.grid(linewidth=0.3, alpha=0.5)
    return _save(fig, path)


def intensity_strip(coverage: Dict[str, Any], path: PathLike, title: Optional[str] = None) -> Path:
    """One lane per group (the labeled cases, the unlabeled training cases, then each evaluation split), a
    dot per case / volume at its 99.5th intensity percentile, the flagging threshold as a dashed line and
    the flagged volumes in red: whether the labeled cases span the intensities the network is evaluated
    on.  With a suggested `data.intensity_scale`, a bar from each labeled case down to its darkest scaled
    version shows what the training images then cover.  `coverage` as `data.intensity_coverage` returns it."""
    lanes = [("labeled", coverage["labeled"])]
    if coverage.get("unlabeled"):
        lanes.append(("unlabeled (training)", coverage["unlabeled"]))
    lanes += list(coverage["volumes"].items())
    if not coverage["labeled"]:
        raise DataError("intensity_strip: no labeled case to compare with")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.6 * len(lanes)))
    rng = np.random.default_rng(0)  # vertical jitter only, so overlapping dots stay visible
    for row, (lane, values) in enumerate(lanes):
        flagged = {name for name, _ in coverage["darker"].get(lane, [])}
        for name, value in values.items():
            colour = CLASS_COLOURS[3] if lane == "labeled" else CLASS_COLOURS[1] if name in flagged else "grey"
            ax.plot([value], [row + rng.uniform(-0.18, 0.18)], "o", markersize=4, color=colour, alpha=0.8)
    ax.axvline(coverage["threshold"], color="black", linestyle="--", linewidth=0.8)
    scale = coverage.get("suggested_intensity_scale")
    if scale:
        labeled = sorted(coverage["labeled"].values())
        for index, value in enumerate(labeled):  # one bar per labeled case, between its lane and the next
            ax.plot([value * scale[0], value * scale[1]], [0.25 + 0.5 * index / len(labeled)] * 2,
                    color=CLASS_COLOURS[3], linewidth=1.5, alpha=0.5)
        ax.text(0.005, 0.99, f"bars: data.intensity_scale {scale}", fontsize=7, color=CLASS_COLOURS[3],
                transform=ax.transAxes, va="top")
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels([f"{lane} ({len(values)})" for lane, values in lanes], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("99.5th intensity percentile of the stored image (red: flagged, below the dashed line)")
    ax.set_title(title or "Intensity coverage of the labeled cases", fontsize=9)
    return _save(fig, path)


def paper_comparison(points: Sequence[Dict[str, Any]], path: PathLike, metric: str = "Dice") -> Path:
    """Ours against the published value, one line per reproduced row: the paper's `metric` (black tick)
    joined to ours (dot; hollow for a schedule shorter than the paper's), rows grouped (e.g. by labeled
    data) and in the given order within a group.  Each point is a dict with "paper", "ours", "name"
    (the row's label), "group" and "shortened"."""
    if not points:
        raise DataError("paper_comparison: no rows with a published value to draw")
    plt = _pyplot()
    groups = list(dict.fromkeys(p["group"] for p in points))
    ordered = [p for g in groups for p in points if p["group"] == g]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.24 * len(ordered)))
    colours = plt.get_cmap("tab10")
    for row, p in enumerate(ordered):
        colour = colours(groups.index(p["group"]))
        ax.plot([p["paper"], p["ours"]], [row, row], color=colour, linewidth=1.0, alpha=0.6)
        ax.plot([p["paper"]], [row], marker="|", color="black", markersize=9)
        ax.plot([p["ours"]], [row], marker="o", markersize=5, color=colour,
                markerfacecolor="none" if p["shortened"] else colour)
    ax.set_yticks(range(len(ordered)))
    ax.set_yticklabels([f"{p['name']} ({p['group']})" for p in ordered], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"test {metric}")
    ax.grid(axis="x", linewidth=0.4, alpha=0.5)
    ax.set_title("Reproduced rows: ours (dot; hollow = shortened schedule) against the paper (|)", fontsize=9)
    return _save(fig, path)


def paper_comparison_of_runs(run_dirs: Sequence[PathLike], path: PathLike, split: str = "test") -> Optional[Path]:
    """`paper_comparison` of evaluated runs (seeds of one configuration pooled, as in the table); None, and no
    file, when no run has a published counterpart.  A row is drawn hollow when its `provenance.json`
    (written by scripts/reproduce.py) says its schedule was shortened.  Each row is named by its paper row,
    or by our label where two of our configurations meet one paper row within the same labeled data."""
    from .table import collect_runs

    return paper_comparison_of_groups(collect_runs([Path(d) for d in run_dirs], split), path)


def paper_comparison_of_groups(groups: List[Dict[str, Any]], path: PathLike) -> Optional[Path]:
    """`paper_comparison_of_runs` of runs already read by `metrics.table.collect_runs`."""
    from .table import pairs_of_groups

    def shortened(runs: Sequence[Path]) -> bool:
        return any(json.loads((r / "provenance.json").read_text()).get("shortened", False)
                   for r in runs if (r / "provenance.json").is_file())

    pairs = pairs_of_groups(groups)
    keys = [(p["paper_label"], p["labeled"]) for p in pairs]
    repeated = {key for key in keys if keys.count(key) > 1}
    points = [{"paper": p["paper"], "ours": p["ours"], "group": p["labeled"], "shortened": shortened(p["runs"]),
               "name": p["label"] if key in repeated else p["paper_label"]} for p, key in zip(pairs, keys)]
    return paper_comparison(points, path) if points else None
