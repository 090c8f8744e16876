"""The shared trainer: schedules, a tiny end-to-end run, non-finite losses, every registered method.

The first part holds the helpers test_resume.py shares (tiny config, test methods, the data
stand-ins); `python tests/test_trainer.py CONFIG RUN_DIR` trains one run (test_resume's child).
"""
import dataclasses
import json
import math
import os
import signal
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest
import torch
import torch.nn.functional as F

import ssl_mamba.data
import ssl_mamba.models
from ssl_mamba.config import ExperimentConfig, from_dict, load_config, save_config, validate
from ssl_mamba.data.batch import Batch
from ssl_mamba.engine.checkpoint import load_checkpoint, save_checkpoint
from ssl_mamba.engine.ema import ema_update, make_teacher
from ssl_mamba.engine.method import METHODS, Method, StepOutput
from ssl_mamba.engine.schedules import LRSchedule
from ssl_mamba.engine.step import TrainingDiverged
from ssl_mamba.engine.trainer import Trainer
from ssl_mamba.errors import ConfigError, DataError

K = 4
PATCH = 32

# ---------------------------------------------------------------------------------------------
# Test methods: a supervised one (with a NaN switch) and one with an EMA teacher (and a sleep
# option so test_resume can kill it mid-run).


@dataclass
class ProbeOptions:
    nan_at: int = -1  # 0-based iteration whose loss is NaN
    sleep: float = 0.0  # seconds per iteration
    term_at: int = -1  # 0-based iteration at which rank `term_rank` sends itself SIGTERM
    term_rank: int = 0
    fail_at: int = -1  # 0-based iteration whose training_step raises RuntimeError
    nan_rank: int = -1  # with nan_at: only this rank's loss is NaN (-1: every rank's)
    net1_only_rank: int = -1  # this rank trains net1 alone, so net2 gets no gradient there (a method bug)


def _sup_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    n = batch.n_labeled
    return F.cross_entropy(logits[:n], batch.labeled_label)


if "_test_probe" not in METHODS:

    @METHODS.register("_test_probe")
    class ProbeMethod(Method):
        """Supervised CE on the labeled rows; NaN loss at `nan_at`."""

        name = "_test_probe"
        num_networks = (1, 2)
        Options = ProbeOptions
        needs_unlabeled = False

        def training_step(self, batch: Batch, step: int) -> StepOutput:
            rank = int(os.environ.get("RANK", "0"))
            nets = list(self.students().values())
            if rank == self.options.net1_only_rank:
                nets = nets[:1]
            loss = sum(_sup_loss(net(batch.image), batch) for net in nets)
            if step == self.options.nan_at and self.options.nan_rank in (-1, rank):
                loss = loss * float("nan")
            if step == self.options.fail_at:
                raise RuntimeError(f"probe failure at step {step}")
            if step == self.options.term_at and rank == self.options.term_rank:
                os.kill(os.getpid(), signal.SIGTERM)
            # a tensor-valued log, read back by run_iteration after the backward, and a float one
            logs = {"loss/ce": loss.detach(), "probe/autocast": float(torch.is_autocast_enabled("cpu"))}
            return StepOutput(losses={"seg": loss}, logs=logs, images={"probe/image": batch.image[:2].clamp(0, 1)})

    @METHODS.register("_test_teacher")
    class TeacherProbe(Method):
        """CE + MSE to an EMA teacher on the unlabeled rows (teacher in train mode: dropout)."""

        name = "_test_teacher"
        Options = ProbeOptions

        def __init__(self, cfg, networks):
            super().__init__(cfg, networks)
            self.modules["ema1"] = make_teacher(self.modules["net1"])

        def training_step(self, batch: Batch, step: int) -> StepOutput:
            time.sleep(self.options.sleep)
            noisy = batch.unlabeled_image + 0.1 * torch.randn_like(batch.unlabeled_image)
            logits = self.modules["net1"](batch.image)
            with torch.no_grad():
                target = self.modules["ema1"](noisy).softmax(1)
            cons = F.mse_loss(logits[batch.n_labeled:].softmax(1), target)
            loss = _sup_loss(logits, batch) + 0.1 * cons
            return StepOutput(losses={"seg": loss}, logs={"loss/consistency": float(cons.detach())})

        def after_step(self, step: int) -> None:
            ema_update(self.modules["ema1"], self.modules["net1"], step, 0.99)


# ---------------------------------------------------------------------------------------------
# Config and data helpers.


def tiny_config(data_root: Path, method: str = "_test_probe", networks: Optional[List[str]] = None,
                max_iterations: int = 4, val_every: int = 2, checkpoint_every: int = 2,
                labeled_batch_size: Optional[int] = None, options: Optional[dict] = None, patch: int = PATCH,
                **train) -> ExperimentConfig:
    values = {
        "name": "tiny",
        "data": {"dataset": "phantom", "root": str(data_root), "num_classes": K, "patch_size": [patch, patch],
                 "labeled_cases": 2, "num_workers": 0},
        "model": {"networks": networks or ["test_unet"], "scan_backend": "torch"},
        "method": {"name": method, "batch_size": 4, "labeled_batch_size": labeled_batch_size,
                   "options": options or {}},
        "train": {"max_iterations": max_iterations, "val_every": val_every, "checkpoint_every": checkpoint_every,
                  "log_images_every": 2, "device": "cpu", "seed": 7, **train},
    }
    cfg = from_dict(ExperimentConfig, values, "test config")
    validate(cfg, "test config")
    return cfg


def write_config(cfg: ExperimentConfig, path: Path) -> None:
    save_config(cfg, path)


def read_jsonl(path: Path) -> List[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def read_events(run_dir: Path) -> dict:
    """{tag: [(step, kind)]} from the run's TensorBoard event files (TFRecord framing)."""
    import struct

    from tensorboardX.proto import event_pb2

    tags: dict = {}
    for path in sorted(Path(run_dir).glob("events.out.tfevents*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4  # length, its crc, payload, payload crc
            for value in event.summary.value:
                kind = "image" if value.HasField("image") else "scalar"
                tags.setdefault(value.tag, []).append((event.step, kind))
    return tags


def wait_for_checkpoint(path: Path, min_iteration: int, timeout: float, child) -> int:
    """Poll `path` until it holds iteration >= min_iteration; returns that iteration."""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise AssertionError(f"child exited early ({child.returncode}): {child.stderr.read().decode()[-2000:]}")
        if path.is_file():
            it = load_checkpoint(path)["iteration"]
            if it >= min_iteration:
                return it
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at iteration >= {min_iteration} within {timeout} s")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: tiny convs on a shared 2-core CI box are several times faster so,
    and the resume test's child process (OMP_NUM_THREADS=1) then sums in the same order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A tiny phantom dataset in the ACDC layout, generated once per session."""
    root = tmp_path_factory.mktemp("phantom")
    ssl_mamba.data.generate_phantom(root, n_train_patients=4, n_val_patients=2, n_test_patients=1, slices=(3, 4),
                                    size=(48, 64), seed=0)
    return root


# ---------------------------------------------------------------------------------------------
# Schedules.


def test_poly_schedule_matches_reference_values():
    poly = LRSchedule("poly", 0.01, 10000, 0.9)
    assert poly(0) == pytest.approx(0.01)
    assert poly(5000) == pytest.approx(0.00535887, abs=1e-8)
    assert poly(10000) == 0.0
    assert poly(12000) == 0.0  # clamped past the end


def test_cosine_and_constant_schedules():
    cos = LRSchedule("cosine", 0.02, 100)
    assert cos(0) == pytest.approx(0.02)
    assert cos(50) == pytest.approx(0.01)
    assert cos(25) == pytest.approx(0.01 * (1 + math.cos(math.pi / 4)))
    assert cos(100) == pytest.approx(0.0, abs=1e-12)
    assert LRSchedule("constant", 1e-4, 100)(73) == 1e-4
    with pytest.raises(ConfigError, match="step"):
        LRSchedule("step", 0.01, 100)


# ---------------------------------------------------------------------------------------------
# End-to-end runs.

RUN_FILES = ["config.yaml", "split.json", "train.log", "metrics.jsonl", "summary.json", "last.pt"]


def _check_run_dir(run_dir: Path, cfg: ExperimentConfig, nets: List[str]) -> dict:
    names = {p.name for p in run_dir.iterdir()}
    for f in RUN_FILES + [f"best_{n}.pth" for n in nets]:
        assert f in names, f"{f} missing from the run dir ({sorted(names)})"
    assert any(n.startswith("events.out.tfevents") for n in names)
    saved = load_config(run_dir / "config.yaml")  # equal up to the spelled-out option defaults
    assert dataclasses.replace(saved, method=cfg.method) == cfg
    assert saved.method.options == dataclasses.asdict(ProbeOptions(**cfg.method.options))
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, cfg.train.max_iterations + 1))
    for n in nets:
        val_steps = [r["step"] for r in rows if f"val/{n}/dice" in r]
        assert val_steps == [2, 4], "validation every train.val_every iterations and at the end"
    assert "iteration" in (run_dir / "train.log").read_text()
    return json.loads((run_dir / "summary.json").read_text())


def test_run_config_spells_out_every_method_option(tmp_path, phantom_root):
    """config.yaml records the defaults too, so a resumed or re-run folder trains as it began even
    after a release changes a default (mean teacher's teacher_mode did)."""
    import methods  # noqa: F401 - registers mean_teacher
    from methods.mean_teacher import MeanTeacherOptions

    cfg = tiny_config(phantom_root, method="mean_teacher", labeled_batch_size=2, options={"noise_std": 0.05},
                      max_iterations=1, val_every=1, checkpoint_every=1)
    Trainer(cfg, tmp_path / "run", progress=False).fit()
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.method.options == dataclasses.asdict(MeanTeacherOptions(noise_std=0.05))
    assert saved.method.options["teacher_mode"] == "train"
    assert dataclasses.replace(saved, method=cfg.method) == cfg


def test_resuming_a_checkpoint_from_before_the_time_split_counts_from_zero(tmp_path, phantom_root):
    """last.pt files written before validation / checkpoint seconds were kept (ninth session and
    earlier; the 3-case rows waiting to be resumed) hold only wall and train time: they resume."""
    cfg = tiny_config(phantom_root, max_iterations=2)
    run = tmp_path / "run"
    Trainer(cfg, run, progress=False).fit()
    state = load_checkpoint(run / "last.pt")
    state["elapsed"] = {k: state["elapsed"][k] for k in ("wall", "train")}
    save_checkpoint(state, run / "last.pt")
    write_config(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_iterations=4)), run / "config.yaml")
    summary = Trainer(load_config(run / "config.yaml"), run, resume=True, progress=False).fit()
    assert summary["iterations"] == 4 and summary["train_time_s"] > state["elapsed"]["train"]
    assert summary["validation_time_s"] > 0 and summary["checkpoint_time_s"] > 0  # iterations 3-4 only


def test_resuming_a_folder_without_recorded_options_says_which_defaults_apply(tmp_path, phantom_root, caplog):
    import methods  # noqa: F401 - registers mean_teacher

    cfg = tiny_config(phantom_root, method="mean_teacher", labeled_batch_size=2, max_iterations=2)
    run = tmp_path / "run"
    Trainer(cfg, run, progress=False).fit()
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_iterations=3))
    write_config(longer, run / "config.yaml")  # as an older release wrote it: options {}
    with caplog.at_level("WARNING", logger="ssl_mamba.engine.trainer"):
        Trainer(load_config(run / "config.yaml"), run, resume=True, progress=False).fit()
    warned = [r.getMessage() for r in caplog.records if "does not record the method options" in r.getMessage()]
    assert len(warned) == 1 and "'teacher_mode': 'train'" in warned[0], warned
    caplog.clear()
    again = dataclasses.replace(load_config(run / "config.yaml"), train=dataclasses.replace(longer.train, max_iterations=4))
    write_config(dataclasses.replace(again, method=dataclasses.replace(again.method, options={
        "teacher_mode": "train", "average_buffers": True, "noise_std": 0.1, "noise_clip": 0.2, "zero_before": 0})),
        run / "config.yaml")
    with caplog.at_level("WARNING", logger="ssl_mamba.engine.trainer"):
        Trainer(load_config(run / "config.yaml"), run, resume=True, progress=False).fit()
    assert not [r for r in caplog.records if "does not record" in r.getMessage()]


def test_resume_names_real_config_changes_only(tmp_path, phantom_root, caplog):
    """A checkpoint written before a config field existed (data.normalize) or with its method options
    unrecorded (as before the twelfth session) resumes without a 'differs' warning about them; a value that
    did change (train.max_iterations) is still named."""
    import methods  # noqa: F401 - registers mean_teacher

    cfg = tiny_config(phantom_root, method="mean_teacher", labeled_batch_size=2, max_iterations=2)
    run = tmp_path / "run"
    Trainer(cfg, run, progress=False).fit()
    state = load_checkpoint(run / "last.pt")
    assert state["config"]["method"]["options"]["teacher_mode"] == "train"  # resolved options recorded now
    del state["config"]["data"]["normalize"]
    state["config"]["method"]["options"] = {}
    save_checkpoint(state, run / "last.pt")
    longer = load_config(run / "config.yaml", ["train.max_iterations=3"])
    with caplog.at_level("WARNING", logger="ssl_mamba.engine.trainer"):
        Trainer(longer, run, resume=True, progress=False).fit()
    warned = [r.getMessage() for r in caplog.records if "differs from the checkpoint's" in r.getMessage()]
    assert warned == ["resuming with a config that differs from the checkpoint's in: train.max_iterations"], warned


def test_evaluating_one_network_of_a_run_never_changes_its_reported_row(tmp_path, phantom_root):
    """The run's row (metrics/test/summary.json, what `table` reads) is the network with the best
    validation Dice; `evaluate --network` of the other one writes that network's own report only."""
    from ssl_mamba.runs import evaluate_run

    run = tmp_path / "run"
    Trainer(tiny_config(phantom_root, networks=["test_unet", "test_unet"], max_iterations=2), run,
            progress=False).fit()
    summary = json.loads((run / "summary.json").read_text())
    summary["best_val_dice"] = {"net1": 0.9, "net2": 0.1}  # net1 is the reported network
    (run / "summary.json").write_text(json.dumps(summary))
    lines = evaluate_run(run, "test", "net2", progress=False)
    assert lines[0].startswith("net2 (test_unet): ") and "[reported]" not in lines[0]
    assert (run / "metrics" / "test" / "net2" / "summary.json").is_file()
    assert not (run / "metrics" / "test" / "summary.json").exists()
    lines = evaluate_run(run, "test", "net1", progress=False)
    assert lines[0].startswith("net1 (test_unet) [reported]: ")
    top = json.loads((run / "metrics" / "test" / "summary.json").read_text())
    assert top == json.loads((run / "metrics" / "test" / "net1" / "summary.json").read_text()) | {
        "network": "net1", "model": "test_unet"}


@pytest.mark.parametrize("nets", [["test_unet"], ["test_unet", "test_unet"]])
def test_tiny_run_writes_every_file_and_best_reloads(tmp_path, phantom_root, nets):
    cfg = tiny_config(phantom_root, networks=nets)
    summary = Trainer(cfg, tmp_path / "run", progress=False).fit()
    on_disk = _check_run_dir(tmp_path / "run", cfg, [f"net{i + 1}" for i in range(len(nets))])
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["iterations"] == 4 and summary["images_per_s"] > 0
    # where the wall time went: steps, validations (2, each timed in its log row) and last.pt writes (2)
    parts = [summary[f"{part}_time_s"] for part in ("train", "validation", "checkpoint")]
    assert min(parts) > 0 and sum(parts) <= summary["wall_time_s"]
    assert set(summary["best_val_dice"]) == {f"net{i + 1}" for i in range(len(nets))}
    assert summary["torch_version"] == torch.__version__
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    # lr is set after each step: poly lr(i) for the next iteration.
    assert rows[0]["lr/seg"] == pytest.approx(0.01 * (1 - 1 / 4) ** 0.9)
    best = torch.load(tmp_path / "run" / "best_net1.pth", weights_only=True)
    net = ssl_mamba.models.create_model(nets[0], num_classes=K)
    net.load_state_dict(best)  # strict: the plain state_dict of the network
    timed = [r for r in rows if "time/val_net1_s" in r]
    assert [r["step"] for r in timed] == [2, 4] and all(r["time/val_net1_s"] > 0 for r in timed)
    assert sum(r["time/val_net1_s"] for r in timed) <= summary["validation_time_s"] + 1e-9
    best_iter = summary["best_iteration"]["net1"]
    logged = [r["val/net1/dice"] for r in rows if r["step"] == best_iter][0]
    assert logged == pytest.approx(summary["best_val_dice"]["net1"])


def test_tensorboard_gets_losses_lr_val_and_images(tmp_path, phantom_root):
    Trainer(tiny_config(phantom_root), tmp_path / "run", progress=False).fit()
    tags = read_events(tmp_path / "run")
    assert [step for step, _ in tags["loss/seg"]] == [1, 2, 3, 4]
    assert [step for step, _ in tags["lr/seg"]] == [1, 2, 3, 4]
    assert [step for step, _ in tags["val/net1/dice"]] == [2, 4]
    assert "val/net1/hd95" in tags and "val/net1/class1/dice" in tags
    for tag in ("train/image", "train/label", "probe/image"):  # batch images + the method's own
        assert tags[tag] == [(2, "image"), (4, "image")], tag
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("probe/autocast\": 0.0") == 4


def test_bf16_autocast_wraps_the_training_step(tmp_path, phantom_root):
    cfg = tiny_config(phantom_root, amp="bf16", max_iterations=2)
    Trainer(cfg, tmp_path / "run", progress=False).fit()
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["probe/autocast"] for r in rows] == [1.0, 1.0]
    assert all(math.isfinite(r["loss/seg"]) for r in rows)


def test_optimizer_groups_resolve_overrides():
    from ssl_mamba.config import TrainConfig
    from ssl_mamba.engine.method import OptimizerGroup
    from ssl_mamba.engine.optim import build_all

    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    groups = [OptimizerGroup("seg", [p1]),
              OptimizerGroup("disc", [p2], {"type": "adam", "lr": 1e-4, "betas": (0.9, 0.99), "schedule": "constant"})]
    (sgd, adam), (poly, const) = build_all(groups, TrainConfig(max_iterations=100))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    assert sgd.defaults["weight_decay"] == 1e-4
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["betas"] == (0.9, 0.99)
    assert adam.defaults["weight_decay"] == 0.0  # a switched optimizer does not inherit SGD's decay
    assert poly(50) < 0.01 and const(50) == 1e-4
    with pytest.raises(ConfigError, match="'momentun'"):
        build_all([OptimizerGroup("seg", [p1], {"momentun": 0.5})], TrainConfig())


def test_nan_loss_stops_naming_iteration_and_keeps_checkpoint(tmp_path, phantom_root):
    cfg = tiny_config(phantom_root, options={"nan_at": 2}, max_iterations=4)
    with pytest.raises(TrainingDiverged, match=r"iteration 3 .*loss/ce"):
        Trainer(cfg, tmp_path / "run", progress=False).fit()

    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 2  # the last good one


def test_deferred_nan_is_caught_before_the_next_checkpoint(tmp_path, phantom_root):
    """Iteration 3 is no boundary, so its values are read back while iteration 4 runs (step.py's
    deferred read-back): the NaN must still be named as iteration 3's, no row for it or later may be
    logged, and no checkpoint may hold the NaN step's weights."""
    cfg = tiny_config(phantom_root, options={"nan_at": 2}, max_iterations=8, val_every=4, checkpoint_every=2)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    with pytest.raises(TrainingDiverged, match=r"iteration 3 .*loss/ce"):
        trainer.fit()

    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["iteration"] == 2
    weights = [v for v in state["method"].values() if v.is_floating_point()]
    assert weights and all(torch.isfinite(v).all() for v in weights)
    # the weights in memory had taken the NaN step and the next: the trainer is put back to last.pt
    assert trainer.iteration == 2
    for name, value in trainer.method.state_dict().items():
        assert torch.equal(value, state["method"][name]), name
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2]


def test_deferred_read_back_logs_what_the_synchronous_one_logs(tmp_path, phantom_root):
    """on_nonfinite=stop reads each iteration back while the next one runs; skip reads it back at once.
    With no NaN the two runs are the same run: equal rows (values, lrs, validation) and weights."""
    runs = {}
    for mode in ("stop", "skip"):
        cfg = tiny_config(phantom_root, max_iterations=7, val_every=3, checkpoint_every=5, on_nonfinite=mode)
        trainer = Trainer(cfg, tmp_path / mode, progress=False)
        assert trainer.defer_readback == (mode == "stop")
        trainer.fit()
        rows = [{k: v for k, v in row.items() if not k.startswith("time/")}  # seconds differ between runs
                for row in read_jsonl(tmp_path / mode / "metrics.jsonl")]
        runs[mode] = (rows, trainer.method.modules["net1"].state_dict())
    assert [r["step"] for r in runs["stop"][0]] == list(range(1, 8))
    assert runs["stop"][0] == runs["skip"][0]
    for name, value in runs["stop"][1].items():
        assert torch.equal(value, runs["skip"][1][name]), name


def test_a_failing_iteration_keeps_the_previous_iterations_row(tmp_path, phantom_root):
    """Iteration 3 is still queued (read back deferred) when iteration 4 fails: its row is logged anyway."""
    cfg = tiny_config(phantom_root, options={"fail_at": 3}, max_iterations=6, val_every=5, checkpoint_every=5)
    with pytest.raises(RuntimeError, match="probe failure at step 3"):
        Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]


def test_run_iteration_defers_its_read_back_until_asked():
    from ssl_mamba.engine.method import OptimizerGroup
    from ssl_mamba.engine.step import finish_readback, run_iteration

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)

    class OneGroup:
        def training_step(self, batch, step):
            loss = net(batch).pow(2).mean()
            return StepOutput(losses={"seg": loss}, logs={"loss/term": loss.detach() * 2, "weight/w": 0.5})

        def optimizer_groups(self):
            return [OptimizerGroup("seg", list(net.parameters()))]

        def after_step(self, step):
            pass

    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    result = run_iteration(OneGroup(), [opt], torch.randn(4, 3), 0, torch.device("cpu"), defer=True)
    assert result.pending is not None and result.losses == {}
    assert isinstance(result.logs["loss/term"], torch.Tensor)  # still the device value
    finish_readback(result)
    assert result.pending is None and result.logs["loss/term"] == pytest.approx(2 * result.losses["seg"])
    with pytest.raises(ValueError, match="on_nonfinite='stop'"):
        run_iteration(OneGroup(), [opt], torch.randn(4, 3), 1, torch.device("cpu"), on_nonfinite="skip", defer=True)


def test_a_nonfinite_step_changes_no_weight_and_keeps_no_gradient():
    """The loss is read back after its backward is queued; a NaN found there must still leave the
    weights as they were (skip: gradients dropped; stop: raised before the optimizer step)."""
    import copy

    from ssl_mamba.engine.method import OptimizerGroup
    from ssl_mamba.engine.step import run_iteration

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)

    class NanMethod:  # the parts of the Method contract run_iteration uses
        def training_step(self, batch, step):
            loss = net(batch).sum() * float("nan")
            return StepOutput(losses={"seg": loss}, logs={"loss/term": loss.detach(), "weight/w": 0.5})

        def optimizer_groups(self):
            return [OptimizerGroup("seg", list(net.parameters()))]

        def after_step(self, step):
            raise AssertionError("after_step ran on a non-finite step")

    before = copy.deepcopy(net.state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    result = run_iteration(NanMethod(), [opt], torch.randn(4, 3), 5, torch.device("cpu"), on_nonfinite="skip")
    assert result.skipped and "loss/term" in result.skipped and "iteration 6" in result.skipped
    assert all(p.grad is None for p in net.parameters())
    assert isinstance(result.logs["loss/term"], float) and result.logs["weight/w"] == 0.5
    with pytest.raises(TrainingDiverged, match="loss/term"):
        run_iteration(NanMethod(), [opt], torch.randn(4, 3), 6, torch.device("cpu"), on_nonfinite="stop")
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert not opt.state  # no optimizer step ever ran


def test_nan_loss_skip_counts_and_continues(tmp_path, phantom_root):
    cfg = tiny_config(phantom_root, options={"nan_at": 2}, max_iterations=4, on_nonfinite="skip")
    summary = Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert summary["skipped_steps"] == 1 and summary["iterations"] == 4
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["train/skipped_steps"] for r in rows] == [0, 0, 1, 1]
    assert rows[2]["loss/seg"] is None  # the NaN is logged as null, never as a number
    assert "step skipped" in (tmp_path / "run" / "train.log").read_text()


def test_bad_patch_size_fails_before_training(tmp_path, phantom_root):
    cfg = tiny_config(phantom_root)
    cfg.data.patch_size = [30, 30]
    with pytest.raises(ConfigError, match=r"data.patch_size \[30, 30\]"):
        Trainer(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_semi_method_needs_labeled_batch_size(tmp_path, phantom_root):
    cfg = tiny_config(phantom_root, method="_test_teacher", labeled_batch_size=None)
    with pytest.raises(ConfigError, match="labeled_batch_size"):
        Trainer(cfg, tmp_path / "run", progress=False)


def test_val_split_must_not_be_test(tmp_path, phantom_root):
    cfg = tiny_config(phantom_root)
    cfg.eval.val_split = "test"
    with pytest.raises(ConfigError, match="val_split"):
        Trainer(cfg, tmp_path / "run", progress=False)


# ---------------------------------------------------------------------------------------------
# Every method registered by `import methods`.


def _registered_methods() -> List[str]:
    import methods  # noqa: F401

    return [m for m in METHODS.names() if not m.startswith("_test")]


METHOD_SETUPS = {  # networks, options and patch for tiny runs; default: test_unet(s) at PATCH
    "cross_teaching": (["test_unet", "test_mamba_unet"], {}, PATCH),
    "cps": (["test_unet", "test_unet"], {}, PATCH),
    # the discriminator's 5 stride-2 convs + 2x2 pooling need 64 pixels
    "adversarial": (["test_unet"], {"discriminator": "test_discriminator"}, 64),
}


@pytest.mark.parametrize("method", _registered_methods())
def test_every_registered_method_trains(tmp_path, phantom_root, method):
    cls = METHODS.get(method)
    nets, options, patch = METHOD_SETUPS.get(method, (["test_unet"] * cls.num_networks[0], {}, PATCH))
    lbs = 2 if cls.needs_unlabeled else None
    cfg = tiny_config(phantom_root, method=method, networks=nets, labeled_batch_size=lbs, options=options,
                      patch=patch, max_iterations=3, val_every=3, checkpoint_every=3)
    summary = Trainer(cfg, tmp_path / "run", progress=False).fit()
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    losses = {k: v for r in rows for k, v in r.items() if k.startswith("loss/")}
    assert losses and all(v is not None and math.isfinite(v) for v in losses.values()), losses
    assert summary["iterations"] == 3 and summary["skipped_steps"] == 0
    for name in summary["best_val_dice"]:
        assert (tmp_path / "run" / f"best_{name}.pth").is_file()
    assert (tmp_path / "run" / "last.pt").is_file()


if __name__ == "__main__":  # test_resume's child process: train CONFIG into RUN_DIR
    Trainer(load_config(sys.argv[1]), Path(sys.argv[2]), progress=False).fit()


@pytest.mark.parametrize("key", ["train.cuda_graphs", "eval.cuda_graphs"])
def test_cuda_graphs_on_a_cpu_device_fails_before_training(tmp_path, phantom_root, key):
    cfg = tiny_config(phantom_root)
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, True)
    with pytest.raises(ConfigError, match=f"{key} needs a CUDA device"):
        Trainer(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_cuda_graphs_for_a_method_that_runs_its_student_twice_fails_before_training(tmp_path, phantom_root):
    import methods  # noqa: F401 - registers co_training

    cfg = tiny_config(phantom_root, method="co_training", labeled_batch_size=2, cuda_graphs=True)
    with pytest.raises(ConfigError, match="method 'co_training' runs a student more than once.*cuda_graphs=false"):
        Trainer(cfg, tmp_path / "run", progress=False)


def test_low_memory_scan_off_cuda_fails_before_training(tmp_path, phantom_root):
    with pytest.raises(ConfigError, match="train.low_memory_scan .* train.device resolves to cpu"):
        Trainer(tiny_config(phantom_root, low_memory_scan=True), tmp_path / "run", progress=False)


def test_set_low_memory_scan_switches_the_triton_backward_to_its_persistent_grid():
    from ssl_mamba.ops import set_low_memory_scan

    triton_ss2d = pytest.importorskip("ssl_mamba.ops.triton_ss2d")
    if triton_ss2d.triton is None:
        pytest.skip("triton is not installed")
    before = triton_ss2d.block_config()
    try:
        set_low_memory_scan(True)
        assert triton_ss2d.block_config()["bwd_programs"] == -1
        set_low_memory_scan(False)
        assert triton_ss2d.block_config()["bwd_programs"] == 0
    finally:
        triton_ss2d.set_block_config(**before)


def test_git_commit_marks_a_tree_that_differs_from_its_commit(tmp_path):
    from ssl_mamba.engine.trainer import git_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    assert git_commit(tmp_path) is None  # not a checkout
    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = git_commit(tmp_path)
    assert head and len(head) == 40
    (tmp_path / "b.txt").write_text("untracked files do not count\n")
    assert git_commit(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == head + "-dirty"


def test_compile_refuses_students_without_compilable_blocks(tmp_path, phantom_root):
    with pytest.raises(ConfigError, match="train.compile: networks net1 have no compilable blocks"):
        Trainer(tiny_config(phantom_root, compile=True), tmp_path / "run", progress=False)


def test_compile_off_cuda_fails_before_training(tmp_path, phantom_root):
    cfg = tiny_config(phantom_root, networks=["test_mamba_unet"], compile=True)
    with pytest.raises(ConfigError, match="train.compile .* train.device resolves to cpu"):
        Trainer(cfg, tmp_path / "run", progress=False)


def test_eval_compile_off_cuda_fails_before_training(tmp_path, phantom_root):
    cfg = tiny_config(phantom_root, networks=["test_mamba_unet"])
    cfg.eval.compile = True
    with pytest.raises(ConfigError, match="eval.compile .* train.device resolves to cpu"):
        Trainer(cfg, tmp_path / "run", progress=False)


def test_compiled_block_counts_reach_train_log(tmp_path, phantom_root, monkeypatch):
    """train.compile compiles at construction, before fit() opens train.log; the counts must still
    land in the file (they were lost there, so a GPU test looking for them failed)."""
    import ssl_mamba.models.compile as compile_module

    monkeypatch.setattr(compile_module, "compile_blocks", lambda net, train=True, eval=False: 7)
    cfg = tiny_config(phantom_root, max_iterations=2)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    # train.compile itself is refused off CUDA: switch it on only around the compile step
    trainer.cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=True))
    trainer._compile_networks()
    trainer.cfg = cfg
    trainer.fit()
    assert "compiled blocks per network {'net1': 7}" in (tmp_path / "run" / "train.log").read_text()


def test_evaluate_run_applies_eval_overrides_keeps_the_runs_report_and_refuses_training_keys(tmp_path, phantom_root):
    """`ssl-mamba evaluate --run R --set eval.X=... --out O` evaluates with the override (it used to be ignored
    silently) and writes report and figures to O: the run's own report and figures/test stay as they were.
    Keys the networks were trained with are refused, naming the key."""
    from click.testing import CliRunner

    from ssl_mamba.cli import main

    run = tmp_path / "run"
    Trainer(tiny_config(phantom_root, max_iterations=2), run, progress=False).fit()
    out = tmp_path / "lcc"
    result = CliRunner().invoke(main, ["evaluate", "--run", str(run), "--no-progress", "--out", str(out),
                                       "--set", "eval.postprocess=largest_component"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["settings"]["postprocess"] == "largest_component"
    assert not (run / "metrics" / "test").exists() and not (run / "figures" / "test").exists()
    assert (out / "figures" / "net1" / "overlays.png").is_file() and f"figures: {out / 'figures'}" in result.output
    refused = CliRunner().invoke(main, ["evaluate", "--run", str(run), "--set", "model.widths=[4, 8]"])
    assert refused.exit_code != 0 and "--set model.widths=[4, 8]: evaluating a run can change eval.*" in refused.output


def test_train_resume_with_evaluate_applies_the_eval_overrides(tmp_path, phantom_root):
    """`train --resume RUN --set eval.X=... --evaluate`: config.yaml is the run's first one, so the test
    evaluation must be given the eval overrides (the training keys among them stay with training)."""
    from click.testing import CliRunner

    from ssl_mamba.cli import main

    run = tmp_path / "run"
    Trainer(tiny_config(phantom_root, max_iterations=2), run, progress=False).fit()
    result = CliRunner().invoke(main, ["train", "--resume", str(run), "--no-progress", "--evaluate",
                                       "--set", "train.log_images_every=0",
                                       "--set", "eval.postprocess=largest_component"])
    assert result.exit_code == 0, result.output
    settings = json.loads((run / "metrics" / "test" / "summary.json").read_text())["settings"]
    assert settings["postprocess"] == "largest_component"


def test_start_hints_at_intensity_scale_when_labeled_cases_are_all_bright(tmp_path, phantom_root, acdc_root, caplog):
    """ACDC at 3 labeled cases: all three are brighter than the darkest unlabeled training cases, and the
    run's start says so with `data info --intensity`'s range (MT + UNet missed such volumes); not when the
    images are already rescaled, and not on a phantom whose cases are alike."""
    def hints(cfg, name):
        trainer = Trainer(cfg, tmp_path / name, progress=False)
        caplog.clear()
        with caplog.at_level("WARNING", logger="ssl_mamba"):
            trainer._hint_intensity_scale()
        return [r.getMessage() for r in caplog.records if "data.intensity_scale" in r.getMessage()]

    acdc = tiny_config(acdc_root)
    acdc = dataclasses.replace(acdc, data=dataclasses.replace(acdc.data, dataset="acdc", labeled_cases=3))
    (hint,) = hints(acdc, "bright")
    assert "the 3 labeled cases (99.5th intensity percentile 0.60-1.00)" in hint and "(0.28)" in hint
    assert "consider data.intensity_scale: [0.25, 1.0]" in hint and "--labeled-cases 3 --intensity" in hint
    scaled = dataclasses.replace(acdc, data=dataclasses.replace(acdc.data, intensity_scale=[0.25, 1.0]))
    assert hints(scaled, "scaled") == []
    assert hints(tiny_config(phantom_root), "phantom") == []


def test_intensity_scale_auto_takes_the_suggested_range_at_the_start(tmp_path, phantom_root, acdc_root, caplog):
    """data.intensity_scale: auto resolves, from the training images, to the range `data info --intensity`
    suggests (ACDC at 3 cases: [0.25, 1.0]); the stream scales by it and the config the run writes holds
    the numbers, so a resume and the tables see what it trained with.  On a phantom whose cases are alike
    it resolves to null, and the log says why."""
    def started(cfg, name):
        trainer = Trainer(cfg, tmp_path / name, progress=False)
        caplog.clear()
        with caplog.at_level("INFO", logger="ssl_mamba"):
            trainer._log_start()
        (line,) = [r.getMessage() for r in caplog.records if "intensity_scale" in r.getMessage()]
        return trainer, line

    acdc = tiny_config(acdc_root)
    acdc = dataclasses.replace(acdc, data=dataclasses.replace(acdc.data, dataset="acdc", labeled_cases=3,
                                                               intensity_scale="auto"))
    trainer, line = started(acdc, "acdc")
    assert trainer.cfg.data.intensity_scale == [0.25, 1.0]
    assert trainer.stream.dataset.intensity_scale == (0.25, 1.0)
    assert trainer.method.resolved_config().data.intensity_scale == [0.25, 1.0]
    assert line.startswith("data.intensity_scale auto -> [0.25, 1.0] (labeled cases' 99.5th intensity "
                           "percentile 0.60-1.00, darkest 5% of the unlabeled 0.28)"), line
    assert acdc.data.intensity_scale == "auto"  # the caller's config is not changed

    phantom = tiny_config(phantom_root)
    phantom = dataclasses.replace(phantom, data=dataclasses.replace(phantom.data, intensity_scale="auto"))
    trainer, line = started(phantom, "phantom")
    assert trainer.cfg.data.intensity_scale is None and trainer.stream.dataset.intensity_scale is None
    assert line.endswith("the labeled cases cover the unlabeled, so no scaling"), line


def trainer_on_a_phantom_with_a_nan_image(tmp_path, phantom_root) -> Trainer:
    """A trainer on a copy of the phantom whose first unlabeled training slice then gets a NaN pixel."""
    import h5py

    root = tmp_path / "phantom"
    shutil.copytree(phantom_root, root)
    trainer = Trainer(tiny_config(root), tmp_path / "run", progress=False)
    name = trainer.source.train_slice_names[trainer.split.unlabeled_indices[0]]
    with h5py.File(trainer.source.slice_path(name), "r+") as f:
        image = f["image"][()]
        image[0, 0] = float("nan")
        f["image"][...] = image
    return trainer


def test_intensity_scale_auto_stops_on_an_unreadable_training_image(tmp_path, phantom_root):
    """The start hint only warns on a NaN image; a run that asked for the range cannot be given one, so it
    stops before training with the file's name (`data info --check` lists every such file)."""
    cfg = trainer_on_a_phantom_with_a_nan_image(tmp_path, phantom_root).cfg
    auto = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, intensity_scale="auto"))
    with pytest.raises(DataError, match="image has NaN or inf values"):
        Trainer(auto, tmp_path / "auto", progress=False)


def test_validation_scores_distances_at_its_cadence_and_selects_the_same_best(tmp_path, phantom_root):
    """eval.val_distances_every=2 with a validation per iteration: HD95 / ASD logged at every second
    validation and the last, Dice at all, and the same Dice curve and best checkpoints as every=1."""
    runs = {}
    for every in (1, 2):
        cfg = tiny_config(phantom_root, max_iterations=5, val_every=1, checkpoint_every=5, log_images_every=0)
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, val_distances_every=every))
        summary = Trainer(cfg, tmp_path / f"every{every}", progress=False).fit()
        runs[every] = (summary, read_jsonl(tmp_path / f"every{every}" / "metrics.jsonl"))
    (full, full_rows), (sparse, sparse_rows) = runs[1], runs[2]
    assert [r["step"] for r in sparse_rows if "val/net1/hd95" in r] == [2, 4, 5]
    assert [r["step"] for r in sparse_rows if "val/net1/class2/asd" in r] == [2, 4, 5]
    assert [r["val/net1/dice"] for r in sparse_rows] == [r["val/net1/dice"] for r in full_rows]
    assert [r["val/net1/hd95"] for r in sparse_rows if "val/net1/hd95" in r] == [
        r["val/net1/hd95"] for r in full_rows if r["step"] in (2, 4, 5)]
    assert (sparse["best_val_dice"], sparse["best_iteration"]) == (full["best_val_dice"], full["best_iteration"])


def test_intensity_hint_is_skipped_with_a_warning_when_a_training_image_is_not_finite(tmp_path, phantom_root, caplog):
    """The hint reads every training image; one with a NaN (which `data info --check` names) must not stop
    the run before its first iteration with a DataError of the hint's own: it says why it is skipped."""
    trainer = trainer_on_a_phantom_with_a_nan_image(tmp_path, phantom_root)
    caplog.clear()
    with caplog.at_level("WARNING", logger="ssl_mamba"):
        trainer._hint_intensity_scale()
    (skipped,) = [r.getMessage() for r in caplog.records if "intensity" in r.getMessage()]
    assert "image has NaN or inf values" in skipped and "data info" in skipped


def test_intensity_hint_names_a_data_info_command_that_runs_for_slice_and_fraction_splits(tmp_path, acdc_root,
                                                                                         caplog):
    """`data info --intensity` needs --labeled-cases: a run split by labeled_slices / labeled_fraction is
    pointed at the cases that hold its labeled slices (ACDC: 68 slices and 5% are the first 3 cases)."""
    base = tiny_config(acdc_root)
    for i, rule in enumerate(({"labeled_slices": 68}, {"labeled_fraction": 0.05})):
        data = dataclasses.replace(base.data, dataset="acdc", labeled_cases=None, **rule)
        trainer = Trainer(dataclasses.replace(base, data=data), tmp_path / f"run{i}", progress=False)
        caplog.clear()
        with caplog.at_level("WARNING", logger="ssl_mamba"):
            trainer._hint_intensity_scale()
        (hint,) = [r.getMessage() for r in caplog.records if "data.intensity_scale" in r.getMessage()]
        assert f"ssl-mamba data info {acdc_root} --labeled-cases 3 --intensity" in hint, (rule, hint)
