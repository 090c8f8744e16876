"""The shared trainer: builds an experiment from its config, trains it, validates, checkpoints.

`Trainer(cfg, run_dir).fit()` trains `cfg.method.name` on the networks of `cfg.model.networks`
and returns the final summary (also written to `summary.json`).  The run directory gets
`config.yaml`, `split.json`, `train.log`, TensorBoard events, `metrics.jsonl`, `last.pt`
(every train.checkpoint_every iterations and at the end), `best_<net>.pth` (by mean validation
Dice, strict improvement) and `summary.json`.  `Trainer(cfg, run_dir, resume=True)` continues
from `last.pt` and produces the same weights as an uninterrupted run.

Under torchrun (WORLD_SIZE > 1) the same code trains data-parallel: see `distributed.py` for
the batch, gradient, BatchNorm and randomness semantics.  Every rank validates a share of the
volumes; only rank 0 logs and writes files; every rank reads `last.pt` on resume.
"""
import contextlib
import dataclasses
import os
import platform
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Union

import torch
from torch import nn

from ..config import INTENSITY_SCALE_AUTO, ExperimentConfig, from_dict, save_config, to_dict
from ..errors import ConfigError, DataError, UserError
from ..ops import resolve_backend, set_low_memory_scan
from ..utils.io import atomic_write_json
from ..utils.log import get_logger
from . import distributed as ddp
from .checkpoint import (capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint, save_network,
                         seed_everything)
from .cuda_graphs import GraphedNetworks, graph_method
from .method import METHODS, Method
from .optim import build_all, set_lr
from .run_log import RunLogger
from .step import IterationResult, TrainingDiverged, autocast_context, finish_readback, run_iteration

if TYPE_CHECKING:  # scoring (scipy) loads at the first validation
    from ..metrics import EvalResult

log = get_logger("engine.trainer")

LAST = "last.pt"
SUMMARY = "summary.json"


def resolve_device(name: str) -> torch.device:
    """train.device: auto -> cuda if available else cpu; an unavailable cuda is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available here; use auto or cpu")
    return device


def configure_precision(tf32: bool) -> None:
    """train.tf32: allow TF32 tensor cores for fp32 matmuls and convolutions (no effect on CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def configure_determinism(deterministic: bool) -> None:
    """train.deterministic: deterministic algorithms (warn only) and fixed cuDNN kernels."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)  # process-wide: reset it too
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def git_commit(where: Optional[Path] = None) -> Optional[str]:
    """The commit of the ssl-mamba checkout (or of the checkout holding `where`), with "-dirty"
    appended when tracked files differ from it (a copied or edited tree: the hash alone would claim
    code that did not run); None outside a git checkout."""
    cwd = where or Path(__file__).resolve().parent

    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if not head:
        return None
    changed = git("status", "--porcelain", "--untracked-files=no")
    return head + "-dirty" if changed else head


# Signals that end a training run cleanly: the iteration in progress finishes, last.pt is written.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STOP_VOTE = "_stop_requested"  # key added to the per-step scalar all-reduce under torchrun


@dataclasses.dataclass
class QueuedIteration:
    """An iteration whose work is queued: what its log row needs besides the values it reads back."""

    iteration: int  # 1-based, as logged
    result: IterationResult
    batch: object
    lrs: Dict[str, float]  # each group's lr when the iteration finished, as the row logs it


class TrainingInterrupted(UserError):
    """A stop signal ended training after writing last.pt; `--resume` continues exactly."""


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def build_networks(cfg: ExperimentConfig) -> List[nn.Module]:
    """create_model for each model.networks name (+ load_pretrained where model.pretrained is set)."""
    from ..models import create_model, load_pretrained

    nets = []
    for i, name in enumerate(cfg.model.networks):
        kwargs = {"scan_backend": cfg.model.scan_backend} if "mamba" in name else {}
        net = create_model(name, in_chans=1, num_classes=cfg.data.num_classes, **kwargs)
        path = cfg.model.pretrained[i] if cfg.model.pretrained else None
        if path:
            report = load_pretrained(net, path)
            log.info("network %d (%s): loaded pretrained weights from %s: %s", i + 1, name, path, report)
        nets.append(net)
    return nets


def check_model_names(names: List[str]) -> None:
    """Unknown backbone names fail before any data is read (the registry lists the known ones)."""
    from ..models import MODELS

    for name in names:
        MODELS.get(name)


def check_patch_size(method: Method, patch_size: List[int]) -> None:
    """Every network that declares `check_input_size` must accept the training patch."""
    h, w = patch_size
    for name, net in method.modules.items():
        check = getattr(net, "check_input_size", None)
        if check is None:
            continue
        try:
            check(h, w)
        except (UserError, ValueError, AssertionError) as exc:
            raise ConfigError(f"data.patch_size {list(patch_size)} does not suit network {name!r}: {exc}") from None


class Trainer:
    """Builds and runs one experiment in `run_dir` (see the module docstring)."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Union[str, Path], resume: bool = False,
                 progress: bool = True):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self._check_run_dir()
        self.dist = ddp.init_distributed(cfg.train.device)
        self.progress = progress and self.dist.is_main
        self.device = ddp.rank_device(resolve_device(cfg.train.device), self.dist)
        configure_determinism(cfg.train.deterministic)
        configure_precision(cfg.train.tf32)
        seed_everything(cfg.train.seed)
        self._build()
        ddp.seed_rank(cfg.train.seed, self.dist)

    # ---- construction -------------------------------------------------------------------------
    def _check_run_dir(self) -> None:
        last = self.run_dir / LAST
        if self.resume and not last.is_file():
            raise UserError(f"cannot resume: {last} does not exist (start the run without resume)")
        if not self.resume and (last.is_file() or (self.run_dir / SUMMARY).is_file()):
            raise UserError(f"run directory {self.run_dir} already holds a run; resume it or choose another name")

    def _build(self) -> None:
        """Data, networks, method, optimizers: every check runs before the first iteration."""
        cfg = self.cfg
        from ..data import build_train_stream, make_split, normalized_source, open_dataset

        if cfg.eval.val_split == "test":
            raise ConfigError("eval.val_split is 'test': model selection must never see the test split; use val")
        # Names first (cheap, and the most common typo), then the data, then the networks.
        method_class = METHODS.get(cfg.method.name)
        check_model_names(cfg.model.networks)
        self.source = normalized_source(open_dataset(cfg.data.root), cfg.data.normalize)
        self.split = make_split(self.source, labeled_cases=cfg.data.labeled_cases,
                                labeled_slices=cfg.data.labeled_slices, labeled_fraction=cfg.data.labeled_fraction)
        self.val_names = list(self.source.volume_names(cfg.eval.val_split))
        if not self.val_names:
            raise DataError(f"{cfg.data.root}: the {cfg.eval.val_split!r} split has no volumes to validate on")
        self.intensities: Optional[dict] = None  # training_intensities, when data.intensity_scale is auto
        if cfg.data.intensity_scale == INTENSITY_SCALE_AUTO:
            self.cfg = cfg = self._resolve_intensity_scale(cfg)
        self.method: Method = method_class(cfg, build_networks(cfg))
        check_patch_size(self.method, cfg.data.patch_size)
        self.method.to(self.device)
        if cfg.train.sync_bn:
            ddp.convert_sync_bn(self.method.modules, self.device)
        ddp.broadcast_state(self.method.modules, self.dist)
        self.groups = self.method.optimizer_groups()
        self.optimizers, self.schedules = build_all(self.groups, cfg.train)
        labeled_batch_size = self._labeled_batch_size()
        if self.dist.enabled:
            ddp.shard_sizes(cfg.method.batch_size, labeled_batch_size, self.dist.world_size)
        self.sync = ddp.GradSync(self.dist, self.device) if self.dist.enabled else None
        self.stream = build_train_stream(cfg.data, self.source, self.split, cfg.method.batch_size,
                                         labeled_batch_size, cfg.train.seed, self.device,
                                         self.dist.rank, self.dist.world_size)
        self.graphs: Optional[GraphedNetworks] = None  # captured at the first iteration (train.cuda_graphs)
        self.eval_graphs: dict = {}  # eval network -> its EvalGraphs, grown at validations (eval.cuda_graphs)
        self.compiled_blocks: Dict[str, int] = {}  # network -> blocks compiled (train.compile / eval.compile)
        self.compile_cache_loaded: Optional[int] = None  # artifacts loaded from train.compile_cache
        self.compile_cache_saved = False  # written after the first validation (and again at the end)
        self._configure_gpu_switches()
        self.stop_signal: Optional[signal.Signals] = None  # set by SIGTERM / SIGINT during fit()
        self.iteration = 0
        self.best: Dict[str, Dict[str, float]] = {}
        self.skipped = 0
        # seconds: wall clock; the training steps; validations; last.pt writes (summary.json splits a run's time)
        self.elapsed = {"wall": 0.0, "train": 0.0, "validation": 0.0, "checkpoint": 0.0}
        # read each iteration's values back while the next one runs (step.py); the sync path stays for
        # on_nonfinite=skip, which must drop the gradients before the step
        self.defer_readback = cfg.train.on_nonfinite == "stop"
        self.stop_agreed = False  # under torchrun with deferred read-back: a resolved iteration's stop vote
        self.queued: Optional[QueuedIteration] = None  # the previous iteration, logged once its values arrive
        self.last_losses: Dict[str, float] = {}

    def _resolve_intensity_scale(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """data.intensity_scale: auto -> the range `ssl-mamba data info --intensity` suggests from this
        run's training images (or null when the labeled cases cover the unlabeled), so config.yaml, a
        resume and the tables see numbers.  Every rank reads the same images and finds the same range.
        Unlike the start hint, an unreadable training image stops the run: it asked for the range."""
        from ..data import training_intensities

        self.intensities = training_intensities(self.source, self.split)
        data = dataclasses.replace(cfg.data, intensity_scale=self.intensities["suggested_intensity_scale"])
        return dataclasses.replace(cfg, data=data)

    def _configure_gpu_switches(self) -> None:
        """Check the GPU switches (cuda_graphs, compile, low_memory_scan) against the networks, the
        device and the backend (a switch that silently does nothing is worse than an error), then
        apply low_memory_scan and compile."""
        cfg, cuda = self.cfg, self.device.type == "cuda"
        self._check_compilable()
        if cfg.train.cuda_graphs and not self.method.graphable:
            raise ConfigError(f"train.cuda_graphs: method {cfg.method.name!r} runs a student more than once per "
                              "iteration, which a captured graph cannot; set train.cuda_graphs=false")
        for key, on in (("train.cuda_graphs", cfg.train.cuda_graphs), ("eval.cuda_graphs", cfg.eval.cuda_graphs),
                        ("train.compile", cfg.train.compile), ("eval.compile", cfg.eval.compile)):
            if on and not cuda:
                raise ConfigError(f"{key} needs a CUDA device; train.device resolves to {self.device}")
        if cfg.train.cuda_graphs and cfg.train.sync_bn and self.dist.enabled:
            raise ConfigError("train.cuda_graphs cannot capture SyncBatchNorm's collectives; set train.sync_bn=false")
        if cfg.train.low_memory_scan and not (cuda and resolve_backend(cfg.model.scan_backend,
                                                                       self.device) == "triton"):
            raise ConfigError("train.low_memory_scan changes the triton scan backend's backward, which runs on CUDA; "
                              f"here train.device resolves to {self.device} and model.scan_backend "
                              f"{cfg.model.scan_backend!r} does not run triton")
        set_low_memory_scan(cfg.train.low_memory_scan)
        if cfg.train.compile or cfg.eval.compile:
            self._load_compile_cache()
            self._compile_networks()

    def _check_compilable(self) -> None:
        """train.compile / eval.compile need networks with compilable blocks."""
        from ..models.compile import compile_units

        for switch, on, nets in (("train.compile", self.cfg.train.compile, self.method.students()),
                                 ("eval.compile", self.cfg.eval.compile, self.method.eval_networks())):
            if on and not any(compile_units(net) for net in nets.values()):
                raise ConfigError(f"{switch}: networks {', '.join(nets)} have no compilable blocks "
                                  f"(VSS blocks or patch layers); set {switch}=false")

    def _compile_networks(self) -> None:
        """train.compile / eval.compile: compile the students' (training) and the validated networks'
        (eval) blocks in place, after the method made its teacher copies."""
        from ..models.compile import compile_blocks

        t, e = self.cfg.train.compile, self.cfg.eval.compile
        students, validated = self.method.students(), self.method.eval_networks()
        networks = {**(students if t else {}), **(validated if e else {})}
        # logged by _log_start: train.log opens in fit(), after construction
        self.compiled_blocks = {name: compile_blocks(net, train=t and name in students, eval=e and name in validated)
                                for name, net in networks.items()}

    def _load_compile_cache(self) -> None:
        """train.compile_cache: its artifacts into this process's caches before anything compiles (logged
        by _log_start, once train.log is open)."""
        if self.cfg.train.compile_cache:
            from .compile_cache import load_compile_cache

            self.compile_cache_loaded = load_compile_cache(self.cfg.train.compile_cache)

    def _compile_cache_state(self) -> str:
        """What the load found, for train.log (its own warning came before the file opened)."""
        if self.compile_cache_loaded is not None:
            return f"{self.compile_cache_loaded} artifacts loaded"
        if Path(self.cfg.train.compile_cache).is_file():
            return "not loaded (unreadable, or another torch): compiling from scratch, then rewritten"
        return "none loaded (written after the first validation)"

    def _save_compile_cache(self) -> None:
        """Rank 0 writes train.compile_cache: what was compiled so far (the first validation has compiled
        the train and eval blocks; the end, or a stop, adds any later compile).  A failed write only warns."""
        path = self.cfg.train.compile_cache
        if not path or not self.dist.is_main:
            return
        from .compile_cache import save_compile_cache

        try:
            size = save_compile_cache(path)
        except Exception as exc:  # noqa: BLE001 - a full disk, torch's serializer: the run goes on, compiling as before
            log.warning("compile cache %s not written (%s: %s)", path, type(exc).__name__, exc)
            return
        if size == 0:  # nothing compiled (and nothing loaded was used) yet: the next validation tries again
            log.info("compile cache %s not written: nothing compiled yet", path)
            return
        self.compile_cache_saved = True
        log.info("compile cache %s written (%.1f MB)", path, size / 1e6)

    def _eval_graphs(self, name: str, net: nn.Module):
        """The network's validation `metrics.graphs.EvalGraphs` (eval.cuda_graphs on CUDA), kept
        across validations; None otherwise."""
        if not self.cfg.eval.cuda_graphs:
            return None
        from ..metrics.graphs import EvalGraphs

        if name not in self.eval_graphs:
            self.eval_graphs[name] = EvalGraphs(net)
        return self.eval_graphs[name]

    def _capture_graphs(self, batch) -> GraphedNetworks:
        t = self.cfg.train
        students, teachers = self.method.students(), self.method.no_grad_networks()
        sample = self.method.graph_input(batch)  # once: the log and the capture share it
        log.info("capturing CUDA graphs of %s for input %s%s", ", ".join(students), list(sample.shape),
                 f"; {', '.join(teachers)} replayed per input shape" if teachers else "")
        return graph_method(self.method, batch, lambda: autocast_context(self.device, t.amp, cache=False),
                            sample=sample)

    def _labeled_batch_size(self) -> int:
        m = self.cfg.method
        if not self.method.needs_unlabeled:
            return m.batch_size
        if m.labeled_batch_size is None or m.labeled_batch_size >= m.batch_size:
            raise ConfigError(
                f"method {m.name!r} trains on unlabeled data: set method.labeled_batch_size below "
                f"method.batch_size ({m.batch_size}), got {m.labeled_batch_size}"
            )
        return m.labeled_batch_size

    # ---- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The checkpoint; in a data-parallel run a collective (every rank's RNG state is gathered)."""
        extra = {"rng_ranks": ddp.gather_objects(capture_rng_state(), self.dist)} if self.dist.enabled else {}
        return {
            **extra,
            "iteration": self.iteration,
            "method": self.method.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "schedules": [s.state_dict() for s in self.schedules],
            "rng": capture_rng_state(),
            "stream": self.stream.state_dict(),
            "best": self.best,
            "skipped": self.skipped,
            "elapsed": dict(self.elapsed),
            "config": to_dict(self.method.resolved_config()),
        }

    def load_state_dict(self, state: dict) -> None:
        current = to_dict(self.method.resolved_config())
        changed = changed_keys(_with_defaults(state.get("config", {}), current), current)
        if changed:
            log.warning("resuming with a config that differs from the checkpoint's in: %s", ", ".join(changed))
        self.method.load_state_dict(state["method"])
        if len(state["optimizers"]) != len(self.optimizers):
            raise UserError(f"checkpoint has {len(state['optimizers'])} optimizer(s); this method has "
                            f"{len(self.optimizers)}: was the method changed?")
        for opt, opt_state in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(opt_state)
        self.stream.load_state_dict(state["stream"])
        restore_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        self._restore_rank_rng(state)
        self.best = dict(state["best"])
        self.skipped = int(state["skipped"])
        self.elapsed = {**self.elapsed, **state["elapsed"]}  # checkpoints before the split lack some keys
        self._apply_lr()

    def _restore_rank_rng(self, state: dict) -> None:
        """Each rank's own RNG state; a checkpoint from another world size reseeds ranks > 0."""
        if not self.dist.enabled:
            return
        mine = ddp.replicate_rng(state.get("rng_ranks"), self.dist)
        if mine is not None:
            restore_rng_state(mine)
            return
        log.warning("checkpoint RNG states do not match %d processes: ranks draw fresh random streams "
                    "(the resume is not bit-exact)", self.dist.world_size)
        ddp.seed_rank(self.cfg.train.seed + self.iteration, self.dist)

    def _apply_lr(self) -> None:
        """Set each group's lr for the next iteration from its schedule (pure in the iteration)."""
        for opt, schedule in zip(self.optimizers, self.schedules):
            set_lr(opt, schedule(self.iteration))

    def _save_last(self) -> None:
        tick = time.perf_counter()
        state = self.state_dict()
        ddp.check_replicas(self.method.modules, self.dist, self.iteration)
        self._write_on_main(lambda: save_checkpoint(state, self.run_dir / LAST), f"writing {LAST}")
        self.elapsed["checkpoint"] += time.perf_counter() - tick  # the last.pt just written holds the time before it

    def _write_on_main(self, write, what: str) -> None:
        """Rank 0 writes; every rank learns whether it could (a full disk on rank 0 fails every rank at
        once, instead of leaving the others waiting in their next collective)."""
        ddp.gather_results(lambda: write() if self.dist.is_main else None, self.dist, what)

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to train.max_iterations (validating and checkpointing) and return the summary."""
        main = self.dist.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        start_wall = time.perf_counter()
        resume_step = None
        if self.resume:
            self.load_state_dict(load_checkpoint(self.run_dir / LAST, map_location=self.device))
            resume_step = self.iteration
        else:
            if main:
                save_config(self.method.resolved_config(), self.run_dir / "config.yaml")
                atomic_write_json(self.run_dir / "split.json", self.split.to_dict())
            self._apply_lr()
        self.logger = RunLogger(self.run_dir, resume_step) if main else None
        try:
            self._log_start()
            with self._stop_signals():
                self._loop(start_wall)
            summary = self._finish(start_wall)
            ddp.barrier(self.dist)  # every rank past its last collective before the group is torn down
            return summary
        except TrainingDiverged as exc:
            log.error("%s", exc)
            self._save_compile_cache()  # the compiled code is sound whatever the weights did: keep it for the retry
            self._rewind_after_divergence()
            raise
        except TrainingInterrupted as exc:
            log.warning("%s", exc)
            self._save_compile_cache()  # a stop before the first validation has compiled too: keep it for --resume
            raise
        finally:
            if self.logger is not None:
                self.logger.close()
            close = getattr(self.stream, "close", None)
            if close is not None:
                close()
            ddp.shutdown(self.dist)

    def _rewind_after_divergence(self) -> None:
        """A deferred read-back names the NaN one iteration late, after the weights in memory took the
        NaN step and the next: put the trainer back to last.pt, so a caller who catches the error holds
        the state that resuming would give (the synchronous path stops before the bad step)."""
        if self.defer_readback and (self.run_dir / LAST).is_file():
            self.load_state_dict(load_checkpoint(self.run_dir / LAST, map_location=self.device))
            log.info("the trainer's state in memory is last.pt's again (iteration %d)", self.iteration)

    def _log_start(self) -> None:
        if not self.dist.is_main:
            return
        cfg = self.cfg
        sizes = {k: sum(p.numel() for p in m.parameters()) for k, m in self.method.modules.items()}
        verb = f"resuming at iteration {self.iteration}" if self.resume else "starting"
        log.info("%s %s: method %s, networks %s, parameters %s, device %s (%s), %d labeled / %d unlabeled slices",
                 verb, cfg.name, cfg.method.name, cfg.model.networks, sizes, self.device, device_name(self.device),
                 len(self.split.labeled_indices), len(self.split.unlabeled_indices))
        if self.resume:
            self._warn_unrecorded_options()
        elif self.intensities is not None:
            self._log_resolved_intensity_scale()
        else:
            self._hint_intensity_scale()
        if self.compiled_blocks:
            log.info("compiled blocks per network %s (compiling at first use)", self.compiled_blocks)
        if cfg.train.compile_cache:
            log.info("compile cache %s: %s", cfg.train.compile_cache, self._compile_cache_state())
        if self.dist.enabled:
            log.info("data parallel: %d processes, global batch %d (%d per process), BatchNorm statistics %s",
                     self.dist.world_size, cfg.method.batch_size, cfg.method.batch_size // self.dist.world_size,
                     "synchronised (SyncBatchNorm)" if cfg.train.sync_bn else "per process")

    def _log_resolved_intensity_scale(self) -> None:
        found, scale = self.intensities, self.cfg.data.intensity_scale
        labeled = found["labeled"].values()
        darkest = ("no unlabeled cases" if found["unlabeled_quantile"] is None
                   else f"darkest 5% of the unlabeled {found['unlabeled_quantile']:.2f}")
        log.info("data.intensity_scale auto -> %s (labeled cases' 99.5th intensity percentile %.2f-%.2f, %s)%s",
                 scale, min(labeled), max(labeled), darkest,
                 "" if scale else ": the labeled cases cover the unlabeled, so no scaling")

    def _hint_intensity_scale(self) -> None:
        """With few labels, the labeled cases can all be brighter than part of the unlabeled (and the
        evaluation) images, whose volumes a network then misses (results/README.md, fifteenth session):
        say so at the start, from the training images alone, when nothing rescales them yet."""
        d = self.cfg.data
        if d.intensity_scale or d.normalize != "none" or not self.split.unlabeled_indices:
            return
        from ..data import training_intensities

        try:
            found = training_intensities(self.source, self.split)
        except DataError as exc:  # a hint only: the run goes on as it would without it
            log.warning("intensity check skipped: %s (`ssl-mamba data info %s --check` lists every such file)",
                        exc, d.root)
            return
        scale = found["suggested_intensity_scale"]
        if scale is None:
            return
        labeled = found["labeled"].values()
        # --intensity needs --labeled-cases: a labeled_slices / labeled_fraction split is named by the cases
        # holding its labeled slices (the same split for labeled_fraction, whole cases, or a cut last case)
        command = f"ssl-mamba data info {d.root} --labeled-cases {len(self.split.labeled_cases)}"
        log.warning("the %d labeled cases (99.5th intensity percentile %.2f-%.2f) are all clearly brighter than "
                    "the darkest 5%% of the unlabeled training cases (%.2f): test volumes as dark may be missed; "
                    "consider data.intensity_scale: %s, or auto to take it at the start (`%s --intensity` shows "
                    "the coverage)",
                    len(labeled), min(labeled), max(labeled), found["unlabeled_quantile"], scale, command)

    @contextlib.contextmanager
    def _stop_signals(self):
        """While training, SIGTERM / SIGINT (a time limit's `timeout`, Ctrl-C) ask the loop to stop
        after the iteration in progress and write last.pt, so no work since the last periodic
        checkpoint is lost; a second Ctrl-C interrupts at once.  Only in the main
        thread (under torchrun each rank's request is all-reduced, so all stop after one iteration)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

        def request_stop(signum, _frame):
            self.stop_signal = signal.Signals(signum)
            # a second Ctrl-C interrupts at once; repeated SIGTERMs (a timeout's to the process group,
            # then a parent's forward) only ask again
            signal.signal(signal.SIGINT, previous[signal.SIGINT])

        for sig in STOP_SIGNALS:
            signal.signal(sig, request_stop)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_vote(self) -> Dict[str, float]:
        """Under torchrun with deferred read-back: this rank's stop request, averaged with the iteration's
        values (`step.run_iteration`'s votes) and read back with them on every rank alike (`stop_agreed`),
        so all ranks stop after the same iteration: usually the one after the request's (whose values
        are read while it runs), at most two after."""
        return {STOP_VOTE: float(self.stop_signal is not None)}

    def _agree_across_ranks(self, result: IterationResult, stop: bool) -> bool:
        """Under torchrun: the buffers from rank 0 and, on the synchronous path, the logged scalars
        averaged and whether any rank was asked to stop (the request rides on that all-reduce, so all
        ranks stop after the same iteration; the deferred path votes through `_stop_vote`).  A single
        process keeps its own answer."""
        if self.sync is None:
            return stop
        ddp.broadcast_state(self.method.modules, self.dist, buffers_only=True)
        if self.defer_readback:
            return False
        logs = self.sync.mean_scalars({**result.logs, STOP_VOTE: float(stop)})
        stop = logs.pop(STOP_VOTE) > 0
        result.logs = logs
        return stop

    def _stop(self, checkpointed: bool) -> None:
        if not checkpointed:
            self._save_last()
        by = self.stop_signal.name if self.stop_signal is not None else "a signal to another rank"
        raise TrainingInterrupted(f"stopped by {by} after iteration {self.iteration}; {self.run_dir / LAST} "
                                  f"holds it: continue with `ssl-mamba train --resume {self.run_dir}`")

    def _warn_unrecorded_options(self) -> None:
        """A run folder written before config.yaml spelled out the method options resumes with
        today's defaults for them, which may differ from the ones it began with (mean teacher's
        teacher_mode changed from eval to train): say which values now apply."""
        recorded = set(self.cfg.method.options)
        applied = {k: v for k, v in dataclasses.asdict(self.method.options).items() if k not in recorded}
        if applied:
            log.warning("%s/config.yaml does not record the method options %s; the run resumes with the "
                        "current defaults %s, which may differ from those it was started with (set them with "
                        "--set method.options.KEY=VALUE)", self.run_dir, sorted(applied), applied)

    def _loop(self, start_wall: float) -> None:
        from tqdm import tqdm

        t = self.cfg.train
        bar = tqdm(total=t.max_iterations, initial=self.iteration, disable=not self.progress,
                   desc=self.cfg.name, dynamic_ncols=True)
        stream = iter(self.stream)
        wall0 = self.elapsed["wall"]
        try:
            while self.iteration < t.max_iterations:
                tick = time.perf_counter()
                self.method.train()
                batch = next_batch(stream)
                if t.cuda_graphs and self.graphs is None:
                    self.graphs = self._capture_graphs(batch)
                result = run_iteration(self.method, self.optimizers, batch, self.iteration, self.device,
                                       t.amp, t.on_nonfinite, self.sync, self.graphs, defer=self.defer_readback,
                                       votes=self._stop_vote if self.sync and self.defer_readback else None)
                stop = self._agree_across_ranks(result, self.stop_signal is not None)
                self.iteration += 1
                self._apply_lr()
                self.elapsed["train"] += time.perf_counter() - tick
                self._finish_iteration(QueuedIteration(self.iteration, result, batch, self._lrs()), stop)
                self.elapsed["wall"] = wall0 + time.perf_counter() - start_wall
                bar.update(1)
                if self.last_losses:
                    bar.set_postfix(loss=f"{sum(self.last_losses.values()):.4f}", refresh=False)
        except Exception:
            self._log_queued_after_failure()
            raise
        finally:
            bar.close()

    def _finish_iteration(self, done: QueuedIteration, stop: bool) -> None:
        """Log the previous iteration if its values were deferred, then this one (now, or at the next
        iteration when its values are still on their way), then checkpoint / stop when due."""
        t = self.cfg.train
        checkpoint = done.iteration % t.checkpoint_every == 0 or done.iteration == t.max_iterations
        self._log_queued()  # its values have arrived while this iteration's work was queued
        stop = stop or self.stop_agreed
        boundary = checkpoint or stop or self._validates(done.iteration) or self._logs_images(done.iteration)
        if done.result.pending is not None and not boundary:
            self.queued = done  # validation and checkpoints only ever see resolved iterations
        else:
            self._after_iteration(done)
        stop = stop or self.stop_agreed
        if checkpoint:
            self._save_last()
        if stop and self.iteration < t.max_iterations:
            self._stop(checkpointed=checkpoint)

    def _log_queued_after_failure(self) -> None:
        """An iteration that fails (a data error, say) must not take the previous, finished one's row
        with it: log that row before the failure propagates."""
        try:
            self._log_queued()
        except Exception as exc:  # noqa: BLE001 - it diverged too, or the device is gone: report, keep the first
            log.error("the iteration before the failure could not be logged either: %s", exc)

    def _lrs(self) -> Dict[str, float]:
        return {group.name: opt.param_groups[0]["lr"] for group, opt in zip(self.groups, self.optimizers)}

    def _validates(self, iteration: int) -> bool:
        return iteration % self.cfg.train.val_every == 0 or iteration == self.cfg.train.max_iterations

    def _logs_images(self, iteration: int) -> bool:
        every = self.cfg.train.log_images_every
        return every > 0 and iteration % every == 0

    def _log_queued(self) -> None:
        queued, self.queued = self.queued, None
        if queued is not None:
            self._after_iteration(queued)

    def _after_iteration(self, done: QueuedIteration) -> None:
        """Wait for the iteration's values if they are still on their way (counted as training time),
        raise if a loss is not finite, then log it and validate when due."""
        tick = time.perf_counter()
        finish_readback(done.result)
        self.elapsed["train"] += time.perf_counter() - tick
        self.stop_agreed = self.stop_agreed or done.result.logs.pop(STOP_VOTE, 0.0) > 0
        self.last_losses = done.result.losses
        val = self._validate() if self._validates(done.iteration) else {}
        if val and not self.compile_cache_saved:
            self._save_compile_cache()
        if self.dist.is_main:
            self._log_iteration(done, val)

    def _log_iteration(self, done: QueuedIteration, val: Dict[str, float]) -> None:
        result = done.result
        if result.skipped:
            self.skipped += 1
            log.warning("%s; step skipped (%d so far)", result.skipped, self.skipped)
        scalars = {f"loss/{name}": v for name, v in result.losses.items()}
        scalars.update(result.logs)
        scalars.update({f"lr/{name}": lr for name, lr in done.lrs.items()})
        scalars["train/skipped_steps"] = self.skipped
        scalars.update(val)
        self.logger.scalars(done.iteration, scalars)
        if self._logs_images(done.iteration):
            pictures = batch_images(done.batch, self.cfg.data.num_classes)
            self.logger.images(done.iteration, {**pictures, **result.images})

    # ---- validation -----------------------------------------------------------------------------
    def _validate(self) -> Dict[str, float]:
        """Evaluate every eval network on the validation volumes; keep best_<net>.pth on improvement.

        Under torchrun a collective: every rank calls it at the same iteration (an iteration that
        validates is never left queued, so the failure path cannot validate on one rank alone)."""
        scalars: Dict[str, float] = {}
        distances = self._val_distances_due()
        for name, net in self.method.eval_networks().items():
            tick = time.perf_counter()
            res = self._evaluate_on_val(name, net, distances)
            dice = float(res.mean_dice)
            scalars.update(val_scalars(name, res, distances))
            best = self.best.get(name)
            if best is None or dice > best["dice"]:
                self.best[name] = {"dice": dice, "iteration": self.iteration}
                self._write_on_main(lambda: save_network(net, self.run_dir / f"best_{name}.pth"),
                                    f"writing best_{name}.pth")
            seconds = time.perf_counter() - tick
            self.elapsed["validation"] += seconds
            scalars[f"time/val_{name}_s"] = seconds
            if self.dist.is_main:
                log.info("iteration %d: %s val mean Dice %.4f (best %.4f at %d; %.1f s)", self.iteration, name,
                         dice, self.best[name]["dice"], self.best[name]["iteration"], seconds)
        self.method.train()
        return scalars

    def _val_distances_due(self) -> bool:
        """eval.val_distances_every: whether this validation scores HD95 / ASD (every N-th, and the last)."""
        every = self.cfg.eval.val_distances_every
        if every == 0:
            return False
        done = self.iteration == self.cfg.train.max_iterations
        return done or (self.iteration // self.cfg.train.val_every) % every == 0

    def _evaluate_on_val(self, name: str, net: nn.Module, distances: bool = True) -> "EvalResult":
        """The network's scores on the validation volumes.

        Data-parallel ranks hold identical replicas: each scores every world_size-th volume and they
        share the scores, so no rank idles while another validates, and every rank ends with the same
        result (and so the same best; rank 0 writes the files).  A failure on one rank fails all."""
        from ..metrics import evaluate_volumes, merge_results

        share = self.val_names[self.dist.rank::self.dist.world_size]

        def evaluate_share():
            net.eval()
            try:
                with torch.no_grad():
                    return evaluate_volumes(net, self.source, share, self.cfg.data.num_classes,
                                            self.cfg.data.patch_size, self.cfg.eval, self.device,
                                            graphs=self._eval_graphs(name, net), distances=distances)
            finally:
                net.train()

        parts = ddp.gather_results(evaluate_share, self.dist, f"validation of {name}")
        return parts[0] if len(parts) == 1 else merge_results(parts, self.val_names, self.cfg.data.num_classes)

    # ---- the end --------------------------------------------------------------------------------
    def _finish(self, start_wall: float) -> dict:
        self._save_compile_cache()  # again: compiles after the first validation (a new shape) join it
        cfg = self.cfg
        images = self.iteration * cfg.method.batch_size
        train_time = self.elapsed["train"]
        summary = {
            "name": cfg.name,
            "method": cfg.method.name,
            "networks": list(cfg.model.networks),
            "iterations": self.iteration,
            "best_val_dice": {k: v["dice"] for k, v in self.best.items()},
            "best_iteration": {k: v["iteration"] for k, v in self.best.items()},
            "skipped_steps": self.skipped,
            "wall_time_s": self.elapsed["wall"],
            "train_time_s": train_time,
            "validation_time_s": self.elapsed["validation"],
            "checkpoint_time_s": self.elapsed["checkpoint"],
            "images_per_s": images / train_time if train_time > 0 else None,
            "device": str(self.device),
            "device_name": device_name(self.device),
            "amp": cfg.train.amp,
            "processes": self.dist.world_size,
            "torch_version": torch.__version__,
            "git_commit": git_commit(),
        }
        if self.dist.is_main:
            atomic_write_json(self.run_dir / SUMMARY, summary)
            log.info("finished %s after %d iterations in %.1f s (%.1f img/s); best val Dice %s", cfg.name,
                     self.iteration, summary["wall_time_s"], summary["images_per_s"] or 0.0,
                     summary["best_val_dice"])
        ddp.barrier(self.dist)  # every rank returns once rank 0's files are complete
        return summary


def val_scalars(net_name: str, result: object, distances: bool = True) -> Dict[str, float]:
    """val/<net>/<metric> for the mean over classes, val/<net>/class<c>/<metric> per class (without HD95
    and ASD when this validation did not score them, so their curves have no gaps of nulls)."""
    from ..metrics.case import DISTANCE_METRICS

    def kept(metrics: dict) -> dict:
        return {k: v for k, v in metrics.items() if distances or k not in DISTANCE_METRICS}

    out = {f"val/{net_name}/{k}": float(v) for k, v in kept(getattr(result, "mean", None) or {}).items()}
    for cls, metrics in (getattr(result, "per_class", None) or {}).items():
        out.update({f"val/{net_name}/class{cls}/{k}": float(v) for k, v in kept(metrics).items()})
    out[f"val/{net_name}/dice"] = float(result.mean_dice)
    return out


def next_batch(stream):
    """The next batch, drawn without touching the global torch RNG.

    Creating a DataLoader iterator draws a base seed from the global generator; that happens
    at the first batch of a run *and* at the first batch after a resume, which would shift every
    later dropout / noise draw.  The stream is a pure function of (seed, batch number) anyway.
    """
    with torch.random.fork_rng(devices=[]):
        return next(stream)


def batch_images(batch, num_classes: int) -> Dict[str, torch.Tensor]:
    """The batch's images (min-max scaled per image) and labels (class / (K-1)) as (N, 1, H, W) in [0, 1]."""
    image = batch.image[:4].detach().float()
    lo = image.amin(dim=(1, 2, 3), keepdim=True)
    hi = image.amax(dim=(1, 2, 3), keepdim=True)
    label = batch.label[:4, None].float() / max(num_classes - 1, 1)  # (N, H, W) -> (N, 1, H, W)
    return {"train/image": (image - lo) / (hi - lo).clamp_min(1e-8), "train/label": label}


def _with_defaults(saved: dict, current: dict) -> dict:
    """A checkpoint's config with the fields added since it was written filled with their defaults (the
    values it trained with), so a resume does not report them as changed.  Checkpoints before the twelfth
    session stored method options as given (often none): an option they leave out had its default, which
    config.yaml spells out (`Method.resolved_config`, what `current` holds), so it is taken from there
    (`_warn_unrecorded_options` already names a default that config.yaml had to supply)."""
    try:
        filled = to_dict(from_dict(ExperimentConfig, saved, "checkpoint config"))
    except Exception:  # noqa: BLE001 - a config this release cannot read: compare it as it is
        return saved
    filled["method"]["options"] = {**current["method"]["options"], **filled["method"]["options"]}
    return filled


def changed_keys(old: dict, new: dict, prefix: str = "") -> List[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "options":
            out.extend(changed_keys(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(prefix + key)
    return out
