"""Time scoring the 40 ACDC test volumes (380 slices): metrics only, no network.

The prediction is the label shifted by (1, 2) pixels in-plane, with the myocardium (class 2)
eroded by one voxel, so every class has real boundary errors; `--fragmented N` adds N scattered
3x3 false-positive blobs per volume, as a collapsing network predicts (DAN late in its 30k rows).
Timings:

- ours: `case_metrics` (all 8 metrics per class, one surface-distance pass per class);
- ours with distance transforms only (the surface distances before the k-d tree choice);
- ours without the surface distances (`distances=False`: what validation scores between
  `eval.val_distances_every`), and the `eval.postprocess: largest_component` step alone;
- medpy, what the SSL4MIS test script computes: medpy dc + hd95 + asd per class (three surface
  passes per class, each over the full volume), i.e. fewer metrics than ours;
- the agreement between the two on HD95 and the one-directional ASD is checked (max abs diff).

The result is appended to benchmarks/RESULTS.md under "## Evaluation speed" (machine, commit, date).

    .venv/bin/python benchmarks/bench_eval.py [--data ../shared/datasets/ACDC] [--repeats 3] [--no-write]
"""
import argparse
import datetime
import math
import os
import platform
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
from scipy.ndimage import binary_erosion

from ssl_mamba.metrics import case_metrics
from ssl_mamba.metrics.postprocess import keep_largest_component
from ssl_mamba.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Evaluation speed"
K = 4


def load_volumes(data: Path):
    names = (data / "test.list").read_text().split()
    labels = []
    for name in names:
        with h5py.File(data / "data" / f"{name}.h5", "r") as f:
            labels.append(f["label"][:])
    return names, labels


def fake_prediction(label: np.ndarray, blobs: int = 0, rng: np.random.Generator = None) -> np.ndarray:
    pred = np.roll(label, shift=(1, 2), axis=(1, 2))
    myo = pred == 2
    pred[myo & ~binary_erosion(myo, structure=np.ones((1, 3, 3), bool))] = 0  # (S, H, W): erode in-plane only
    for _ in range(blobs):  # scattered false positives of a random class
        s, y, x = rng.integers(0, pred.shape[0]), rng.integers(0, pred.shape[1] - 3), rng.integers(0, pred.shape[2] - 3)
        pred[s, y:y + 3, x:x + 3] = rng.integers(1, K)
    return pred


def best_time(score, repeats: int):
    """(best wall time of `repeats` calls of score(), the last call's result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = score()
        best = min(best, time.perf_counter() - start)
    return best, result


def time_ours(pairs, repeats: int, distances: bool = True):
    return best_time(lambda: [case_metrics(p, g, K, asd_mode="medpy_asd", distances=distances) for p, g in pairs],
                     repeats)


def time_transforms_only(pairs, repeats: int) -> float:
    from ssl_mamba.metrics import surface

    saved = surface.TREE_ABOVE_CROP_PER_SURFACE_VOXEL
    surface.TREE_ABOVE_CROP_PER_SURFACE_VOXEL = math.inf
    try:
        return time_ours(pairs, repeats)[0]
    finally:
        surface.TREE_ABOVE_CROP_PER_SURFACE_VOXEL = saved


def time_medpy(pairs, repeats: int):
    from medpy.metric import binary

    return best_time(lambda: [{c: (binary.dc(p == c, g == c), binary.hd95(p == c, g == c),
                                   binary.asd(p == c, g == c)) for c in range(1, K)} for p, g in pairs], repeats)


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def append_section(entry: str) -> None:
    """Add `entry` at the end of the Evaluation speed section (created if missing); other sections stay."""
    path = ROOT / "benchmarks" / "RESULTS.md"
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n"
    start = text.index(SECTION) + len(SECTION)
    nxt = text.find("\n## ", start)
    end = len(text) if nxt < 0 else nxt
    body = text[start:end].rstrip("\n")
    text = text[:start] + body + "\n\n" + entry.rstrip("\n") + "\n" + ("" if nxt < 0 else "\n" + text[nxt + 1:])
    atomic_write_text(path, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "ACDC")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only, do not touch RESULTS.md")
    parser.add_argument("--note", default="", help="free text appended to the entry (e.g. machine load)")
    parser.add_argument("--fragmented", type=int, default=0, metavar="N",
                        help="scattered 3x3 false-positive blobs per volume in the prediction")
    args = parser.parse_args()

    names, labels = load_volumes(args.data)
    rng = np.random.default_rng(0)
    pairs = [(fake_prediction(g, args.fragmented, rng), g) for g in labels]
    slices = sum(g.shape[0] for g in labels)
    ours_s, ours = time_ours(pairs, args.repeats)
    transforms_s = time_transforms_only(pairs, args.repeats)
    overlap_s = time_ours(pairs, args.repeats, distances=False)[0]
    component_s = best_time(lambda: [keep_largest_component(p, K) for p, _ in pairs], args.repeats)[0]
    medpy_s, ref = time_medpy(pairs, args.repeats)
    hd_diff = max(abs(o[c]["hd95"] - r[c][1]) for o, r in zip(ours, ref) for c in range(1, K))
    asd_diff = max(abs(o[c]["asd"] - r[c][2]) for o, r in zip(ours, ref) for c in range(1, K))
    mean_dice = float(np.mean([o[c]["dice"] for o in ours for c in range(1, K)]))
    entry = (
        f"- {datetime.date.today().isoformat()}, commit {commit()}, {machine()}: scoring {len(names)} ACDC test "
        f"volumes ({slices} slices, 3 classes, fake prediction with mean Dice {mean_dice:.4f}"
        + (f", {args.fragmented} scattered false-positive blobs per volume" if args.fragmented else "")
        + f"), best of {args.repeats}: **ours {ours_s:.2f} s** ({1000 * ours_s / len(names):.1f} ms/volume) for all "
        f"8 metrics (with distance transforms only, as before the k-d tree choice: {transforms_s:.2f} s; without "
        f"HD95 / ASD, as validation between eval.val_distances_every: {overlap_s:.2f} s; the largest-component "
        f"post-processing alone: {component_s:.2f} s); "
        f"medpy dc+hd95+asd (SSL4MIS test script) {medpy_s:.2f} s ({medpy_s / ours_s:.1f}x slower). "
        f"Max |diff| vs medpy: HD95 {hd_diff:.1e}, ASD {asd_diff:.1e}." + (f" {args.note}" if args.note else "")
    )
    print(entry)
    if not args.no_write:
        append_section(entry)


if __name__ == "__main__":
    main()
