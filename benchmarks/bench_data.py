"""Data pipeline throughput and pack sizes.

- CPU: samples/s of one process (one core) reading a training slice and running the faithful
  RandomGenerator to 224x224 (`SliceDataset` with augment="cpu"), on real ACDC slices if present,
  else on a generated phantom; reading alone is timed too.
- Batched: samples/s of `batched_affine` on batches of 24 at 224x224, on CUDA when available,
  else on CPU tensors (labelled as such).
- Packs (--pack): `pack_dataset` of the dataset in uint16 and uint8, file size and max abs error.

Results are appended to benchmarks/RESULTS.md ("## Data pipeline speed", "## Data packs").

    .venv/bin/python benchmarks/bench_data.py [--data ../shared/datasets/ACDC] [--samples 300] [--pack] [--no-write]
"""
import argparse
import datetime
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from ssl_mamba.data import SliceDataset, batched_affine, generate_phantom, open_dataset, pack_dataset
from ssl_mamba.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    return (f"{datetime.date.today()}, commit {commit.strip()}, {cpu}, {os.cpu_count()} logical CPUs, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def cpu_rate(source, samples: int, augment: str) -> float:
    """Samples per second of one process running SliceDataset.__getitem__."""
    ds = SliceDataset(source, (224, 224), 256, augment)
    n = len(ds)
    start = time.perf_counter()
    for i in range(samples):
        ds[(i % n, i)]
    return samples / (time.perf_counter() - start)


def read_rate(source, samples: int) -> float:
    names = source.train_slice_names
    start = time.perf_counter()
    for i in range(samples):
        source.read_slice(names[i % len(names)])
    return samples / (time.perf_counter() - start)


def batched_rate(device: str, batches: int = 20, batch: int = 24) -> float:
    img = torch.rand(batch, 1, 224, 224, device=device)
    lab = torch.randint(0, 4, (batch, 224, 224), device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    batched_affine(img, lab, gen)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        batched_affine(img, lab, gen)
    if device == "cuda":
        torch.cuda.synchronize()
    return batches * batch / (time.perf_counter() - start)


def append_section(title: str, line: str) -> None:
    path = ROOT / "benchmarks" / "RESULTS.md"
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    if title in text:
        head, rest = text.split(title, 1)
        nxt = rest.find("\n## ")
        body, tail = (rest, "") if nxt < 0 else (rest[:nxt], rest[nxt:])
        text = head + title + body.rstrip("\n") + "\n" + line + "\n" + tail
    else:
        text = text.rstrip("\n") + f"\n\n{title}\n\n{line}\n"
    atomic_write_text(path, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "ACDC"))
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--pack", action="store_true", help="also pack the dataset (uint16, uint8) and report sizes")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = Path(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        if data.exists():  # an SSL4MIS folder, a pack file or a folder of pack parts
            label = f"real slices ({data})"
        else:
            data = Path(tmp) / "phantom"
            generate_phantom(data, n_train_patients=8, size=(208, 256))
            label = f"generated phantom slices ({data} not found)"
        source = open_dataset(data)
        reads = read_rate(source, args.samples)
        cpu = cpu_rate(source, args.samples, "cpu")
        plain = cpu_rate(source, args.samples, "none")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        batched = batched_rate(device)
        speed = (f"- {machine()}: {label}, one process, 1 torch thread, {args.samples} samples to 224x224: "
                 f"read only {reads:.0f} samples/s; read + faithful CPU RandomGenerator **{cpu:.0f} samples/s "
                 f"per core**; read + resize only {plain:.0f} samples/s.  Batched affine (`augment: gpu`) on "
                 f"{'CUDA ' + torch.cuda.get_device_name() if device == 'cuda' else 'CPU tensors (no GPU here)'}, "
                 f"batches of 24 at 224x224: {batched:.0f} samples/s.")
        print(speed)
        if not args.no_write:
            append_section("## Data pipeline speed", speed)
        if args.pack:
            sizes = []
            for dtype in ("uint16", "uint8"):
                start = time.perf_counter()
                meta = pack_dataset(data, Path(tmp) / f"pack_{dtype}.npz", dtype=dtype)
                sizes.append(f"{dtype}: {meta['bytes'] / 2**20:.1f} MiB "
                             f"({'fits' if meta['bytes'] <= 64 * 2**20 else 'does NOT fit'} 64 MiB), "
                             f"max abs error {meta['max_abs_error']:.2e}, packed in {time.perf_counter() - start:.0f} s")
            line = (f"- {machine()}: {label}, {meta['slices']} slices + {meta['volumes']} volumes, "
                    f"one .npz (deflate): " + "; ".join(sizes) + ".")
            print(line)
            if not args.no_write:
                append_section("## Data packs", line)


if __name__ == "__main__":
    main()
