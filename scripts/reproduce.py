"""Reproduce paper-table rows and assemble the results table.

    python scripts/reproduce.py run configs/acdc/fully_unet.yaml configs/acdc/semi_mamba_unet_7cases.yaml \
        --set data.root=.pack/acdc --jobs 2 [--iterations 3000] [--seeds 1337 2 3] [--commit HASH]
    python scripts/reproduce.py run CONFIGS --jobs 4 --gpus 2   # two rows per GPU of a 2-GPU machine
    python scripts/reproduce.py run A.yaml B.yaml --jobs 2 --gpus 4 --gpus-per-row 2   # each row on 2 GPUs (DDP)
    python scripts/reproduce.py run CONFIGS --cuda-graphs   # train graphs for each row whose method allows them
    python scripts/reproduce.py table            # rewrites the table in results/README.md
    python scripts/reproduce.py collect fetched/runs/published/*   # rows published on the GPU machine
    python scripts/reproduce.py table --results results/diagnostics   # the diagnostics' own table

`run` trains each row (`ssl-mamba train`, resuming a row whose run directory already has a
checkpoint, so a run cut off by a time limit continues exactly), evaluates it on the test split
(`ssl-mamba evaluate`; a row on several GPUs scores its networks side by side, one per GPU), and
copies the light files of the run (resolved config, split, logs, metrics, figures; no checkpoints)
into `results/<row>/` with a provenance.json (commit, card, wall time, data pack dtype, iterations,
whether the schedule was shortened, and source_sha256, a fingerprint of the code that ran:
`python scripts/reproduce.py source-hash` prints the current checkout's; a run trained in several
invocations, e.g. resumed in a later device session, also lists each segment's first iteration,
commit and fingerprint, and says whether they differ).
`table` regenerates the table in results/README.md from the committed `results/*/` folders
alone, with the papers' numbers beside ours (`ssl-mamba table --compare paper`).  Rows of configs in a
`diagnostics` folder (configs/diagnostics: runs that vary a paper row to find a cause) publish under
results/diagnostics/, which has its own table, and `collect` files them there too.
"""
import argparse
import concurrent.futures
import contextlib
import gzip
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEGMENTS = "segments.jsonl"  # one line per training invocation of a run (record_segment)
LIGHT_FILES = ["config.yaml", "split.json", "summary.json", "train.log", SEGMENTS]
# Published gzipped: a 30,000-iteration row's log of every step is ~7 MB as text, ~1.3 MB gzipped,
# and the committed results travel with every device call (64 MiB in all).
METRICS, METRICS_GZ = "metrics.jsonl", "metrics.jsonl.gz"
# The published per-step log keeps every validation line and every METRICS_EVERY-th training line:
# a 30k-iteration row's full log is 1.4-2 MB gzipped, and the tracked tree travels with every device
# call (64 MiB in all), so ten such rows would crowd out the data.  The run folder keeps the full log.
METRICS_EVERY = 10
# The code a run executes: what `source_sha256` in provenance.json fingerprints.
SOURCE_GLOBS = ["ssl_mamba/**/*.py", "methods/**/*.py", "configs/**/*.yaml", "scripts/*.py", "setup.py"]
BEGIN, END = "<!-- table:begin (scripts/reproduce.py table) -->", "<!-- table:end -->"
# A config kept in a folder of this name varies a paper row to find a cause (configs/diagnostics/): its
# row publishes under <results>/diagnostics, whose own table keeps it out of the paper table.
DIAGNOSTICS = "diagnostics"


def row_folder(results: Path, row: str, diagnostic: bool) -> Path:
    """Where row `row` is filed: results/<row>, or results/diagnostics/<row> for a diagnostic.  A row
    named like the diagnostics folder would replace it whole, so it is refused."""
    if row == DIAGNOSTICS:
        raise SystemExit(f"a row may not be named {DIAGNOSTICS!r} (the folder of the diagnostic rows): rename it")
    return (results / DIAGNOSTICS if diagnostic else results) / row


def cli(*args: str) -> List[str]:
    return [sys.executable, "-m", "ssl_mamba.cli", *args]


def train_command(processes: int, *args: str) -> List[str]:
    """`ssl-mamba train ...` in one process, or data-parallel over `processes` GPUs with torchrun
    (--standalone: each row gets its own rendezvous on a free port, so rows can run side by side)."""
    if processes == 1:
        return cli(*args)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "ssl_mamba.cli", *args]


def run_name(config: Path, seed: Optional[int]) -> str:
    """The run (and results/) folder of a row at a seed: the config's name at its own seed,
    `<name>_seed<k>` at any other, so seeds of one row never share (or resume) a run."""
    from ssl_mamba.config import load_config

    cfg = load_config(config)
    return cfg.name if seed is None or seed == cfg.train.seed else f"{cfg.name}_seed{seed}"


def check_existing_run(run_dir: Path, seed: Optional[int]) -> None:
    """Refuse to resume or reuse a run directory that was trained at another seed."""
    from ssl_mamba.config import load_config

    if seed is None or not (run_dir / "config.yaml").is_file():
        return
    had = load_config(run_dir / "config.yaml").train.seed
    if had != seed:
        raise SystemExit(f"{run_dir} holds a run at seed {had}, not {seed}: remove it or use another --runs")


class RowsStopped(Exception):
    """A stop signal came before this command could start."""


_STOP = threading.Event()  # set by SIGTERM / SIGINT to this script
_CHILDREN: set = set()
_CHILDREN_LOCK = threading.Lock()


def run_child(cmd: List[str], log, env: Optional[dict]) -> None:
    """Run one train / evaluate command.  After a stop request no new command starts, and the
    running ones get SIGTERM, on which a training writes last.pt and ends (resumable)."""
    with _CHILDREN_LOCK:
        if _STOP.is_set():
            raise RowsStopped(" ".join(cmd))
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        _CHILDREN.add(child)
    try:
        code = child.wait()
    finally:
        with _CHILDREN_LOCK:
            _CHILDREN.discard(child)
    if code:
        raise subprocess.CalledProcessError(code, cmd)


def request_stop(signum=signal.SIGTERM, _frame=None) -> None:
    """Signal handler: stop starting commands and ask the running ones to stop cleanly."""
    with _CHILDREN_LOCK:
        _STOP.set()
        for child in _CHILDREN:
            child.send_signal(signal.SIGTERM)


def train_and_evaluate(config: Path, seed: Optional[int], runs: Path, overrides: List[str],
                       log_dir: Path, code: Optional[dict] = None, gpus: Optional["GpuSlots"] = None) -> Path:
    """Train (or resume) one row at one seed, then evaluate it; returns its run directory.
    `code` ({"commit", "source_sha256"}) is recorded as a training segment before training;
    `gpus` hands the row its GPUs of a multi-GPU machine for its whole run (`GpuSlots.per_row` of
    them: with more than one the row trains data-parallel)."""
    if gpus is not None:
        with gpus.take() as env:
            return _train_and_evaluate(config, seed, runs, overrides, log_dir, code, env, gpus.per_row)
    return _train_and_evaluate(config, seed, runs, overrides, log_dir, code, None)


def _train_and_evaluate(config: Path, seed: Optional[int], runs: Path, overrides: List[str], log_dir: Path,
                        code: Optional[dict], env: Optional[dict], processes: int = 1) -> Path:
    run_dir = runs / run_name(config, seed)
    check_existing_run(run_dir, seed)
    if seed is not None:
        overrides = overrides + [f"train.seed={seed}"]
    sets = [a for o in overrides for a in ("--set", o)]
    log = (log_dir / f"{run_dir.name}.out").open("a")
    if not (run_dir / "summary.json").is_file():
        record_segment(run_dir, code or {})
        if (run_dir / "last.pt").is_file():
            cmd = train_command(processes, "train", "--resume", str(run_dir), "--no-progress")
        else:
            cmd = train_command(processes, "train", "-c", str(config), "--run-dir", str(run_dir), "--no-progress", *sets)
        run_child(cmd, log, env)
    missing = unevaluated_networks(run_dir)
    if missing:
        evaluate_on_test(run_dir, missing, log, env)
    return run_dir


def unevaluated_networks(run_dir: Path) -> List[str]:
    """The run's trained networks (a best_<net>.pth) still without a test report, all of them while the
    run's own report (its reported network's) is missing: a stop or failure between two networks'
    evaluations is finished by the next invocation instead of publishing the row without one of them."""
    from ssl_mamba.config import load_config
    from ssl_mamba.runs import network_names, trained_networks

    cfg = load_config(run_dir / "config.yaml")
    names, trained = network_names(cfg), trained_networks(run_dir, cfg)
    test = run_dir / "metrics" / "test"
    if not (test / "summary.json").is_file():
        return trained or names  # none trained: evaluate says which checkpoint is missing
    return [net for net in trained if len(names) > 1 and not (test / net / "summary.json").is_file()]


def evaluate_on_test(run_dir: Path, networks: List[str], log, env: Optional[dict]) -> None:
    """`ssl-mamba evaluate --network` on the test split for each of `networks` (each writes its own
    report, the reported network the run's row as well).  A row holding several GPUs scores them side by
    side, one per GPU at a time, instead of one after the other on the first GPU."""
    gpus = (env or {}).get("CUDA_VISIBLE_DEVICES", "").split(",")
    if len(networks) < 2 or len(gpus) < 2:
        for net in networks:
            run_child(evaluate_command(run_dir, net), log, env)
        return
    free: "queue.Queue[str]" = queue.Queue()
    for gpu in gpus:
        free.put(gpu)

    def on_a_free_gpu(net: str) -> None:
        gpu = free.get()
        try:
            run_child(evaluate_command(run_dir, net), log, {**env, "CUDA_VISIBLE_DEVICES": gpu})
        finally:
            free.put(gpu)

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(networks), len(gpus))) as pool:
        for future in [pool.submit(on_a_free_gpu, net) for net in networks]:
            future.result()


def evaluate_command(run_dir: Path, network: str) -> List[str]:
    # no progress bar: side by side, two bars would interleave in the row's one log
    return cli("evaluate", "--run", str(run_dir), "--split", "test", "--network", network, "--no-progress")


class GpuSlots:
    """Rows spread over the GPUs of one machine: `take()` lends a row the `per_row` least busy GPUs
    (as CUDA_VISIBLE_DEVICES in the environment of its train and evaluate commands) until it ends.
    Under a CUDA_VISIBLE_DEVICES of its own (a lease lane's "2,3") the GPUs are those it names."""

    def __init__(self, count: int, per_row: int = 1):
        if count < 1:
            raise SystemExit(f"--gpus {count}: need at least 1")
        if not 1 <= per_row <= count:
            raise SystemExit(f"--gpus-per-row {per_row}: must be between 1 and --gpus ({count})")
        # the rows' CUDA_VISIBLE_DEVICES replaces this process's: "0,1" under "2,3" would take GPUs 0 and 1
        visible = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
        if visible and len(visible) < count:
            raise SystemExit(f"--gpus {count}: CUDA_VISIBLE_DEVICES={','.join(visible)} leaves only {len(visible)}")
        self.ids = visible[:count] if visible else [str(i) for i in range(count)]
        self.busy = [0] * count
        self.per_row = per_row
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def take(self):
        with self.lock:
            chosen = sorted(sorted(range(len(self.busy)), key=self.busy.__getitem__)[:self.per_row])
            for gpu in chosen:
                self.busy[gpu] += 1
        try:
            yield {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(self.ids[gpu] for gpu in chosen)}
        finally:
            with self.lock:
                for gpu in chosen:
                    self.busy[gpu] -= 1


def record_segment(run_dir: Path, code: dict) -> None:
    """Append to `<run>/segments.jsonl` which code trains the run from which iteration on.

    A long row may be trained in several device calls or sessions (resumed from last.pt, which
    travels with the run directory), possibly by different commits; publish() lists the segments in
    provenance.json and flags a row whose segments ran different code."""
    from ssl_mamba.engine.checkpoint import load_checkpoint

    last = run_dir / "last.pt"
    start = int(load_checkpoint(last)["iteration"]) if last.is_file() else 0
    run_dir.mkdir(parents=True, exist_ok=True)
    # (no card here: asking torch for it would open a CUDA context in this parent process; the
    # trainer's train.log names the card at each start)
    record = {"from_iteration": start, "commit": code.get("commit"), "source_sha256": code.get("source_sha256"),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with (run_dir / SEGMENTS).open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_segments(run_dir: Path) -> List[dict]:
    path = run_dir / SEGMENTS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


_START_LINE = re.compile(r"(?:starting|resuming at iteration (\d+)) .*, device \w+ \(([^)]*)\)")


def cards_by_segment(train_log: Path) -> List[dict]:
    """[{"from_iteration", "card"}] from the trainer's start / resume lines in train.log.

    segments.jsonl cannot name the card (see record_segment); a row resumed on another machine
    (H100 one session, H200 the next) must not be credited to the last card alone."""
    if not train_log.is_file():
        return []
    found = (_START_LINE.search(line) for line in train_log.read_text(errors="replace").splitlines())
    return [{"from_iteration": int(m.group(1) or 0), "card": m.group(2)} for m in found if m]


def card_label(provenance: dict) -> str:
    """The card column: every distinct card a row trained on, in order."""
    names = list(dict.fromkeys(seg["card"] for seg in provenance.get("cards", [])))
    return " + ".join(names) if len(names) > 1 else str(provenance.get("card", "?"))


def source_sha256(root: Path = REPO) -> str:
    """SHA-256 over the library's code and configs (sorted relative paths and contents).

    `--commit` is only a label (the GPU machine's copy has no git history, and the copy is of the
    working tree when the call was sent); this fingerprint says which code actually ran: check a
    row with `git checkout <commit> && python scripts/reproduce.py source-hash`."""
    digest = hashlib.sha256()
    files = sorted({f for pattern in SOURCE_GLOBS for f in root.glob(pattern) if f.is_file()
                    and "__pycache__" not in f.parts})
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def pack_dtype(data_root: str) -> Optional[str]:
    from ssl_mamba.data import open_dataset

    meta = open_dataset(data_root).metadata
    return meta.get("dtype") if meta.get("kind") == "pack" else None


def thinned_log(text: str, every: int) -> str:
    """metrics.jsonl lines: each one with a validation value ("val/..." keys) or a step divisible by
    `every`, and the last; a torn last line (a killed run) is dropped."""
    lines = [line for line in text.splitlines() if line.strip()]
    kept = []
    for index, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) % every == 0 or index == len(lines) - 1 or any(k.startswith("val/") for k in record):
            kept.append(line)
    return "\n".join(kept) + "\n"


def publish(run_dir: Path, results: Path, commit: Optional[str], full_iterations: int,
            source: Optional[str] = None, concurrent_rows: int = 1, diagnostic: bool = False) -> Path:
    """Copy a finished run's light files into results/<name>/ (results/diagnostics/<name>/ for a
    `diagnostic` row) with a provenance record.

    concurrent_rows: how many rows trained at once on the card (`--jobs`); above 1 the wall time
    and img/s are those of a shared GPU, and the table says so."""
    from ssl_mamba.config import load_config
    from ssl_mamba.utils.io import atomic_write_bytes, atomic_write_json

    cfg = load_config(run_dir / "config.yaml")
    dest = row_folder(results, run_dir.name, diagnostic)
    dest.mkdir(parents=True, exist_ok=True)
    for name in LIGHT_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dest / name)
    if (run_dir / METRICS).is_file():
        kept = thinned_log((run_dir / METRICS).read_text(), METRICS_EVERY)
        atomic_write_bytes(dest / METRICS_GZ, gzip.compress(kept.encode(), mtime=0))
        (dest / METRICS).unlink(missing_ok=True)  # an earlier publication's plain copy
    shutil.copytree(run_dir / "metrics", dest / "metrics", dirs_exist_ok=True)
    for png in (run_dir / "figures").rglob("*.png"):
        target = dest / "figures" / png.relative_to(run_dir / "figures")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(png, target)
    summary = json.loads((run_dir / "summary.json").read_text())
    segments = read_segments(run_dir)
    extra = {}
    if segments:
        extra["segments"] = segments
        extra["mixed_code"] = len({seg.get("source_sha256") for seg in segments}) > 1
    cards = cards_by_segment(run_dir / "train.log")
    if len({seg["card"] for seg in cards}) > 1:
        extra["cards"] = cards
    atomic_write_json(dest / "provenance.json", {
        "commit": commit or summary.get("git_commit"),
        "source_sha256": source,
        "card": summary.get("device_name"),
        "torch": summary.get("torch_version"),
        "wall_time_s": summary.get("wall_time_s"),
        "images_per_s": summary.get("images_per_s"),
        "seed": cfg.train.seed,
        "iterations": cfg.train.max_iterations,
        "protocol_iterations": full_iterations,
        "shortened": cfg.train.max_iterations < full_iterations,
        "data_pack_dtype": pack_dtype(cfg.data.root),
        "concurrent_rows": concurrent_rows,
        "processes": summary.get("processes", 1),  # > 1: data-parallel over that many GPUs
        "amp": cfg.train.amp,  # the training precision of the last segment: none (fp32 / TF32) | bf16
        "metrics_every": METRICS_EVERY,  # the published metrics.jsonl.gz's training-line stride
        "date": time.strftime("%Y-%m-%d"),
        "diagnostic": diagnostic,  # not a paper row: `collect` files it under results/diagnostics
        **extra,
    })
    return dest


def command_run(args: argparse.Namespace) -> None:
    from ssl_mamba.config import load_config

    runs, results = Path(args.runs), Path(args.results)
    runs.mkdir(parents=True, exist_ok=True)
    source = source_sha256()  # taken before training: the code this invocation runs
    overrides = list(args.set)
    if args.iterations:
        overrides.append(f"train.max_iterations={args.iterations}")
    configs = {Path(c): load_config(c) for c in args.configs}
    full = {path: cfg.train.max_iterations for path, cfg in configs.items()}
    per_row = {path: overrides + (graph_overrides(cfg.method.name) if args.cuda_graphs else [])
               for path, cfg in configs.items()}
    jobs = [(Path(c), seed) for c in args.configs for seed in (args.seeds or [None])]
    for sig in (signal.SIGTERM, signal.SIGINT):  # a time limit or Ctrl-C: rows stop resumably
        signal.signal(sig, request_stop)
    code = {"commit": args.commit, "source_sha256": source}
    if args.gpus_per_row > 1 and not args.gpus:
        raise SystemExit("--gpus-per-row needs --gpus (the GPUs to hand out)")
    gpus = GpuSlots(args.gpus, args.gpus_per_row) if args.gpus else None
    cards_per_row = args.gpus_per_row if args.gpus else 1
    # rows per card: --jobs rows of cards_per_row cards each over --gpus cards, rounded up
    shared = args.concurrent_rows or -(-min(args.jobs, len(jobs)) * cards_per_row // (args.gpus or 1))
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(train_and_evaluate, config, seed, runs, per_row[config], runs, code, gpus):
                   (config, seed) for config, seed in jobs}
        for future in concurrent.futures.as_completed(futures):
            config, seed = futures[future]
            try:
                run_dir = future.result()
            except RowsStopped:
                print(f"not started (stop requested): {config} (seed {seed})", flush=True)
                continue
            except subprocess.CalledProcessError as exc:
                what = "STOPPED (resume with the same command)" if _STOP.is_set() else "FAILED"
                print(f"{what} {config} (seed {seed}): {exc} (log: {runs / (run_name(config, seed) + '.out')})",
                      flush=True)
                continue
            dest = publish(run_dir, results, args.commit, full[config], source, shared,
                           diagnostic=config.parent.name == DIAGNOSTICS)
            print(f"published {dest}", flush=True)
    if _STOP.is_set():
        raise SystemExit("stopped by a signal: the unfinished rows resume with the same command")


def graph_overrides(method: str) -> List[str]:
    """--cuda-graphs: train and eval CUDA graphs for a row whose method can be graphed (`Method.graphable`),
    eval graphs alone otherwise (said on stdout), so one command can run every row of a table."""
    import methods  # noqa: F401 - registers the methods
    from ssl_mamba.engine.method import METHODS

    if METHODS.get(method).graphable:
        return ["train.cuda_graphs=true", "eval.cuda_graphs=true"]
    print(f"--cuda-graphs: method {method!r} runs a student twice per iteration; its rows train without "
          "train.cuda_graphs", flush=True)
    return ["eval.cuda_graphs=true"]


def provenance_table(rows: List[Path]) -> str:
    """Where each row came from: schedule (full or shortened), card, wall time, commit, data dtype and
    training precision."""
    lines = ["| run | iterations | card | wall time | img/s | commit | data, precision |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        p = json.loads((row / "provenance.json").read_text()) if (row / "provenance.json").is_file() else {}
        iters = f"{p.get('iterations')}" + (f" (shortened from {p['protocol_iterations']})" if p.get("shortened") else "")
        wall = f"{p['wall_time_s'] / 60:.1f} min" if p.get("wall_time_s") else "?"
        if p.get("concurrent_rows", 1) > 1:  # the card was shared: wall time and img/s are not speeds
            wall += f" ({p['concurrent_rows']} rows at once)"
        if p.get("processes", 1) > 1:  # data-parallel: img/s of all the row's GPUs together
            wall += f" on {p['processes']} GPUs"
        speed = f"{p['images_per_s']:.0f}" if p.get("images_per_s") else "?"
        data = f"pack {p['data_pack_dtype']}" if p.get("data_pack_dtype") else "h5 files"
        data += ", " + training_precision(row, p)
        if len(p.get("segments", [])) > 1:  # resumed across calls: say so, and whether the code changed
            wall += f", {len(p['segments'])} segments" + (" of different code" if p.get("mixed_code") else "")
        lines.append(f"| {row.name} | {iters} | {card_label(p)} | {wall} | {speed} | "
                     f"{str(p.get('commit', '?'))[:10]} | {data} |")
    return "\n".join(lines)


def training_precision(row: Path, provenance: dict) -> str:
    """fp32 (TF32 matmuls, `train.amp: none`) or bf16 autocast; rows published before provenance.json
    recorded it fall back to their summary.json."""
    amp = provenance.get("amp")
    if amp is None and (row / "summary.json").is_file():
        amp = json.loads((row / "summary.json").read_text()).get("amp")
    return {"none": "fp32", None: "?"}.get(amp, amp)


PUBLISHED_FILES = ["provenance.json", "summary.json", "config.yaml", "split.json", "train.log",
                   "metrics/test/summary.json", "metrics/test/per_case.csv"]


def check_published_row(row: Path) -> dict:
    """A folder `run` published on another machine is complete before it replaces a committed row:
    SystemExit naming the folder and what it lacks otherwise.  Returns its provenance."""
    missing = [name for name in PUBLISHED_FILES if not (row / name).is_file()]
    if not (row / METRICS_GZ).is_file() and not (row / METRICS).is_file():
        missing.append(METRICS_GZ)
    if missing:
        raise SystemExit(f"{row}: not a complete published row (missing {', '.join(missing)}); nothing was copied")
    provenance = json.loads((row / "provenance.json").read_text())
    for key in ("commit", "source_sha256", "card", "iterations"):
        if not provenance.get(key):
            raise SystemExit(f"{row / 'provenance.json'}: no {key!r}; nothing was copied")
    return provenance


def published_rows_in(paths: List[Path]) -> List[Path]:
    """The row folders named on the command line, a published `diagnostics` folder standing for the
    row folders in it (those with a provenance.json), so `collect fetched/runs/published/*` takes the
    diagnostics too."""
    rows = []
    for path in paths:
        if path.name != DIAGNOSTICS or (path / "provenance.json").is_file():  # a row (one so named is refused)
            rows.append(path)
            continue
        inside = sorted(p.parent for p in path.glob("*/provenance.json")) if path.is_dir() else []
        if not inside:
            raise SystemExit(f"{path}: no published row folders in it; nothing was copied")
        rows += inside
    return rows


def command_collect(args: argparse.Namespace) -> None:
    """Copy rows published elsewhere (`run --results runs/published` on the GPU machine, fetched
    back) over their folders in results/ (diagnostic rows: results/diagnostics/), each replaced
    whole, then regenerate the tables they belong to."""
    results = Path(args.results)
    rows = published_rows_in([Path(r) for r in args.rows])
    # every row is checked before any is copied; rows published before provenance recorded
    # "diagnostic" are diagnostics when they came from a diagnostics folder
    diagnostic = {row: check_published_row(row).get("diagnostic", row.parent.name == DIAGNOSTICS) for row in rows}
    dests = {row: row_folder(results, row.name, diagnostic[row]) for row in rows}
    for row, dest in dests.items():
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged = dest.parent / f".{row.name}.collecting"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(row, staged)
        shutil.rmtree(dest, ignore_errors=True)
        staged.rename(dest)  # the old folder is gone only once the new one is complete
        other = row_folder(results, row.name, not diagnostic[row])
        if other.is_dir():  # filed the other way before: one row, one table
            shutil.rmtree(other)
            print(f"removed {other} (the row is now filed as {dest})")
        print(f"collected {row} -> {dest}")
    for folder in sorted({dest.parent for dest in dests.values()} | {results}):
        if any((p / "metrics" / "test" / "summary.json").is_file() for p in folder.iterdir()):
            command_table(argparse.Namespace(results=str(folder)))


def command_table(args: argparse.Namespace) -> None:
    from ssl_mamba.metrics.figures import paper_comparison_of_groups
    from ssl_mamba.metrics.table import collect_runs, format_table
    from ssl_mamba.utils.io import atomic_write_text

    results = Path(args.results)
    rows = sorted(p for p in results.iterdir()  # (a ".<row>.collecting" folder is a copy in progress)
                  if not p.name.startswith(".") and (p / "metrics" / "test" / "summary.json").is_file())
    if not rows:
        raise SystemExit(f"no evaluated runs under {results}")
    groups = collect_runs(rows, "test")  # read once, for the table and the figure
    table = format_table(groups, fmt="markdown", compare="paper") + "\n\n" + provenance_table(rows)
    readme = results / "README.md"
    title = "Diagnostics" if results.name == DIAGNOSTICS else "Results"
    text = readme.read_text() if readme.is_file() else f"# {title}\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} lacks the table markers {BEGIN} ... {END}")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    atomic_write_text(readme, f"{head}{BEGIN}\n{table}\n{END}{tail}")
    print(table)
    figure = paper_comparison_of_groups(groups, results / FIGURE)
    print(f"figure: {figure}" if figure else "no figure: no row has a published Dice to compare with")


FIGURE = Path("figures") / "ours_vs_paper.png"  # under results/, regenerated with the table


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train + evaluate rows, publish them into results/")
    run.add_argument("configs", nargs="+")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    run.add_argument("--iterations", type=int, help="shortened schedule (recorded as such in provenance.json)")
    run.add_argument("--seeds", type=int, nargs="+", help="train each row at these seeds (the table shows mean ± std)")
    run.add_argument("--jobs", type=int, default=1, help="rows trained at once (they share the GPU)")
    run.add_argument("--gpus", type=int,
                     help="spread the rows over this many GPUs of the machine (each row on the least busy one)")
    run.add_argument("--gpus-per-row", type=int, default=1,
                     help="GPUs each row trains on, data-parallel through torchrun (with --gpus)")
    run.add_argument("--concurrent-rows", type=int,
                     help="rows sharing a card when several reproduce commands run at once "
                          "(default: --jobs / --gpus, rounded up)")
    run.add_argument("--cuda-graphs", action="store_true",
                     help="train.cuda_graphs for the rows whose method allows it, eval.cuda_graphs for all (CUDA)")
    run.add_argument("--runs", default="runs/reproduce")
    run.add_argument("--results", default=str(REPO / "results"))
    run.add_argument("--commit", help="commit to record (the GPU machine's copy has no git history)")
    collect = sub.add_parser("collect", help="copy published rows (fetched from the GPU machine) into results/ "
                                             "(diagnostics: results/diagnostics/) and regenerate their tables")
    collect.add_argument("rows", nargs="+", help="published row folders, e.g. fetched/runs/published/* (a "
                                                 "'diagnostics' folder stands for the rows in it)")
    collect.add_argument("--results", default=str(REPO / "results"))
    table = sub.add_parser("table", help="regenerate results/README.md's table from results/*/")
    table.add_argument("--results", default=str(REPO / "results"))
    sub.add_parser("source-hash", help="print the fingerprint of this checkout's code (provenance source_sha256)")
    args = parser.parse_args(argv)
    commands = {"run": command_run, "collect": command_collect, "table": command_table,
                "source-hash": lambda _: print(source_sha256())}
    commands[args.command](args)


if __name__ == "__main__":
    main()
