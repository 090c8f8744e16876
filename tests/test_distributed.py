"""Data-parallel training (issue 9) on the CPU: gloo, 2 processes, tiny models, a few iterations.

* The sharded sampler's ranks together hold exactly the 1-process global batch.
* A 2-process run equals a 1-process run with the same global batch: a CE-only method to float
  precision (averaged gradients of equal shards), cross teaching (two networks, Dice) within a
  tolerance (SSL4MIS's Dice over a shard is not the Dice over the global batch).  The network
  has no BatchNorm and no dropout, the two things that legitimately differ per rank.
* Mean teacher (BatchNorm, dropout, noise, EMA teacher) keeps identical replicas on both ranks
  (the trainer checks it at every checkpoint) and resumes bit-exactly.
* `torchrun -m ssl_mamba.cli train` runs end to end and writes its files once.
"""
import datetime
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import methods  # noqa: F401  (registers the real methods in this process and in spawned children)
from ssl_mamba.config import load_config
from ssl_mamba.data.samplers import ShardedSampler, ShuffleSampler, TwoStreamSampler
from ssl_mamba.engine.checkpoint import load_checkpoint
from ssl_mamba.engine.distributed import (DistContext, GradSync, broadcast_state, check_grad_mismatch, check_replicas,
                                          convert_sync_bn, shard_sizes)
from ssl_mamba.engine.trainer import Trainer, TrainingInterrupted
from ssl_mamba.errors import ConfigError, DataError, UserError
from ssl_mamba.models import MODELS, register_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_trainer as th  # noqa: E402
from test_trainer import one_thread, phantom_root  # noqa: E402,F401  (shared fixtures)

WORLD = 2
# A rank left waiting in a collective (the other stopped or raised alone) fails the test in a minute
# instead of gloo's default 30 minutes.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=90)


class PlainNet(nn.Module):
    """conv-ReLU-conv-ReLU-1x1: no BatchNorm, no dropout, so each row's output ignores the rest of the batch."""

    input_multiple = 1

    def __init__(self, in_chans: int = 1, num_classes: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(8, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


if "_test_plain" not in MODELS:
    register_model("_test_plain")(PlainNet)


# ---------------------------------------------------------------------------------------------
# Sharding (no processes needed).


@pytest.mark.parametrize("make", [
    lambda: TwoStreamSampler(range(10), range(10, 40), batch_size=8, labeled_batch_size=4, seed=3),
    lambda: ShuffleSampler(range(10), batch_size=6, seed=3),
])
def test_shards_together_are_the_global_batch(make):
    base = make()
    n_labeled = getattr(base, "labeled_batch_size", 6)
    shards = [ShardedSampler(make(), n_labeled, len(base.batch_at(0)), r, WORLD) for r in range(WORLD)]
    for b in range(7):
        glob = base.batch_at(b)
        local = [s.batch_at(b) for s in shards]
        half = n_labeled // WORLD
        for r, rows in enumerate(local):
            assert rows[:half] == glob[:n_labeled][r::WORLD], "labeled rows must come first, rank r keeps r::world"
            assert rows[half:] == glob[n_labeled:][r::WORLD]
        assert sorted(local[0] + local[1]) == sorted(glob)  # same slices with the same sample seeds
    # Position lives in the wrapped sampler: a resumed shard continues where it stopped.
    it = iter(shards[1])
    first = [next(it) for _ in range(3)]
    resumed = ShardedSampler(make(), n_labeled, len(base.batch_at(0)), 1, WORLD)
    resumed.load_state_dict(shards[1].state_dict())
    assert next(iter(resumed)) == shards[1].batch_at(3) and first[2] == shards[1].batch_at(2)


def test_batch_must_divide_by_the_world_size():
    with pytest.raises(ConfigError, match=r"labeled_batch_size 3.*divide by the number of processes \(2\)"):
        shard_sizes(6, 3, 2)
    assert shard_sizes(8, 4, 2) == (2, 2)
    with pytest.raises(DataError, match="unlabeled part"):
        ShardedSampler(TwoStreamSampler(range(10), range(10, 40), 7, 4, 0), 4, 7, 0, 2)


def test_sync_bn_is_a_cuda_switch():
    modules = nn.ModuleDict({"net1": nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))})
    with pytest.raises(ConfigError, match="train.sync_bn.*needs CUDA"):
        convert_sync_bn(modules, torch.device("cpu"))
    assert isinstance(modules["net1"][1], nn.BatchNorm2d)


def test_single_process_context_checks_nothing():
    check_replicas(nn.Linear(2, 2), DistContext(), iteration=1)  # world 1: a no-op, no process group needed


# ---------------------------------------------------------------------------------------------
# Two processes with torch.multiprocessing (gloo).


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, jobs: list, out_dir: str) -> None:
    """One rank: join the gloo group, run every (config, run_dir, resume) job, then a replica check."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=COLLECTIVE_TIMEOUT)
    try:
        for cfg_path, run_dir, resume in jobs:
            Trainer(load_config(cfg_path, []), run_dir, resume=resume, progress=False).fit()
        net = nn.Linear(3, 2)
        nn.init.constant_(net.weight, 0.5)
        if rank == 1:
            with torch.no_grad():
                net.weight[1, 2] += 1e-6
        try:
            check_replicas(net, DistContext(rank, WORLD), iteration=9)
        except UserError as exc:
            Path(out_dir, f"replica_error_{rank}.txt").write_text(str(exc))
        # Both ranks past their last collective before either tears the group down: otherwise a
        # rank still receiving the gather's last message sees its peer's sockets close and gloo
        # aborts the process ("terminate called without an active exception", seen under load).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _collectives_worker(rank: int, port: int, out_dir: str) -> None:
    """One rank of the GradSync / broadcast_state check; writes what it saw to out_dir."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=COLLECTIVE_TIMEOUT)
    try:
        sync = GradSync(DistContext(rank, WORLD), torch.device("cpu"))
        a, b, c = (nn.Parameter(torch.zeros(2, 3)), nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(1)))
        frozen = nn.Parameter(torch.zeros(5), requires_grad=False)
        a.grad = torch.full((2, 3), float(rank + 1))
        c.grad = torch.full((1,), 8.0) if rank == 1 else None  # only rank 1 used c: a method bug
        sync.reduce_grads([a, b, c, frozen])
        first = float(sync.take_grad_mismatch())
        try:
            check_grad_mismatch(first)
            message = ""
        except UserError as exc:
            message = str(exc)
        c.grad = torch.full((1,), float(rank))  # now every rank has c's gradient: agreement again
        sync.reduce_grads([a, b, c])
        second = float(sync.take_grad_mismatch())
        # a bf16 parameter whose gradients are float32 (torch's grad_dtype), present on rank 0 only: the
        # missing gradient's zeros must have the gradient's dtype, or the ranks' buffers differ in size
        mixed = nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
        if hasattr(mixed, "grad_dtype"):
            mixed.grad_dtype = torch.float32
            mixed.grad = torch.full((3,), 2.0) if rank == 0 else None
            sync.reduce_grads([a, mixed])
        mixed_seen = mixed.grad.tolist() if mixed.grad is not None else None
        mixed_mismatch = float(sync.take_grad_mismatch())
        buffers = nn.BatchNorm1d(3)
        buffers.running_mean.fill_(float(rank + 1))
        buffers.num_batches_tracked.fill_(10 * (rank + 1))
        broadcast_state(buffers, DistContext(rank, WORLD), buffers_only=True)
        seen = {"a": a.grad.tolist(), "b_none": b.grad is None, "c": c.grad.tolist(), "first": first,
                "message": message, "second": second, "running_mean": buffers.running_mean.tolist(),
                "tracked": int(buffers.num_batches_tracked), "mixed": mixed_seen, "mixed_mismatch": mixed_mismatch}
        Path(out_dir, f"collectives_{rank}.json").write_text(th.json.dumps(seen))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_gradient_average_flags_ranks_that_disagree_without_waiting(tmp_path):
    """reduce_grads averages every gradient in one flat buffer whose size does not depend on which
    parameters have gradients (so a method bug cannot hang the collective), leaves a gradient that no
    rank has as None, and counts parameters that have a gradient on some ranks only; the count is a
    device value, checked when the iteration is read back.  broadcast_state gives every rank rank 0's
    buffers, floats and integers alike."""
    mp.spawn(_collectives_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        seen = th.json.loads((tmp_path / f"collectives_{rank}.json").read_text())
        assert seen["a"] == [[1.5] * 3] * 2  # (1 + 2) / 2
        assert seen["b_none"]
        assert seen["first"] == 1.0 and "1 parameter(s) have one on some ranks only" in seen["message"]
        assert seen["second"] == 0.0 and seen["c"] == [0.5]
        assert seen["running_mean"] == [1.0] * 3 and seen["tracked"] == 10
        if hasattr(torch.nn.Parameter(torch.zeros(1)), "grad_dtype"):
            assert seen["mixed"] == ([1.0] * 3 if rank == 0 else None) and seen["mixed_mismatch"] == 1.0


def _config(tmp: Path, root: Path, name: str, **kwargs) -> str:
    path = tmp / f"{name}.yaml"
    th.write_config(th.tiny_config(root, **kwargs), path)
    return str(path)


def _close(a: dict, b: dict, atol: float, rtol: float) -> float:
    """Largest |a - b| over the state dicts, asserting allclose on each tensor."""
    worst = 0.0
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=atol, rtol=rtol), key
        worst = max(worst, float((a[key].float() - b[key].float()).abs().max()))
    return worst


def _moved(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _initial(cfg_path: str, run_dir: Path) -> dict:
    """The method's state before the first step (a built, never-fitted trainer)."""
    state = Trainer(load_config(cfg_path, []), run_dir, progress=False).method.state_dict()
    return {k: v.clone() for k, v in state.items()}


def test_two_processes_match_one_and_keep_replicas(tmp_path, phantom_root):
    plain = dict(networks=["_test_plain"], max_iterations=3, val_every=3, checkpoint_every=3, lr=0.5,
                 log_images_every=0)
    cross = dict(plain, networks=["_test_plain", "_test_plain"], method="cross_teaching", labeled_batch_size=2,
                 lr=0.1)
    teacher = dict(method="mean_teacher", networks=["test_unet"], labeled_batch_size=2, schedule="constant",
                   val_every=2, checkpoint_every=2, log_images_every=0)
    configs = {
        "probe": _config(tmp_path, phantom_root, "probe", **plain),
        "cross": _config(tmp_path, phantom_root, "cross", **cross),
        "mt4": _config(tmp_path, phantom_root, "mt4", max_iterations=4, **teacher),
        "mt2": _config(tmp_path, phantom_root, "mt2", max_iterations=2, **teacher),
    }
    d = {name: str(tmp_path / f"ddp_{name}") for name in ("probe", "cross", "mt4", "mt_resumed")}
    jobs = [(configs["probe"], d["probe"], False), (configs["cross"], d["cross"], False),
            (configs["mt4"], d["mt4"], False), (configs["mt2"], d["mt_resumed"], False),
            (configs["mt4"], d["mt_resumed"], True)]
    mp.spawn(_worker, args=(free_port(), jobs, str(tmp_path)), nprocs=WORLD, join=True)

    # The replica check catches a 1e-6 difference, on every rank.
    for rank in range(WORLD):
        assert "rank 1's 'weight' differs" in (tmp_path / f"replica_error_{rank}.txt").read_text()

    # 1 process, same global batch.
    for name in ("probe", "cross"):
        Trainer(load_config(configs[name], []), tmp_path / f"one_{name}", progress=False).fit()
    init = {name: _initial(configs[name], tmp_path / f"init_{name}") for name in ("probe", "cross")}

    one, two = (load_checkpoint(tmp_path / "one_probe" / "last.pt")["method"],
                load_checkpoint(Path(d["probe"]) / "last.pt")["method"])
    assert _moved(one, init["probe"]) > 1e-2, "the reference run must actually train"
    assert _close(one, two, atol=1e-5, rtol=1e-4) < 1e-5  # CE is a row mean: equal shards average exactly
    loss1 = [r["loss/seg"] for r in th.read_jsonl(tmp_path / "one_probe" / "metrics.jsonl")]
    loss2 = [r["loss/seg"] for r in th.read_jsonl(Path(d["probe"]) / "metrics.jsonl")]
    assert loss1 == pytest.approx(loss2, rel=1e-5) and len(loss2) == 3

    one, two = (load_checkpoint(tmp_path / "one_cross" / "last.pt")["method"],
                load_checkpoint(Path(d["cross"]) / "last.pt")["method"])
    assert any(k.startswith("net2.") for k in two)
    # Sharded Dice != global Dice: close, and far closer than the distance travelled by training.
    assert _close(one, two, atol=5e-3, rtol=0.0) < 0.1 * _moved(one, init["cross"])
    rows1 = th.read_jsonl(tmp_path / "one_cross" / "metrics.jsonl")
    rows2 = th.read_jsonl(Path(d["cross"]) / "metrics.jsonl")
    assert [r["loss/seg"] for r in rows1] == pytest.approx([r["loss/seg"] for r in rows2], rel=2e-2)
    assert [r["step"] for r in rows2] == [1, 2, 3]  # one writer

    straight = load_checkpoint(Path(d["mt4"]) / "last.pt")
    resumed = load_checkpoint(Path(d["mt_resumed"]) / "last.pt")
    assert len(straight["rng_ranks"]) == WORLD and any(k.startswith("ema1.") for k in straight["method"])
    for key, value in straight["method"].items():
        assert torch.equal(value, resumed["method"][key]), f"{key} differs after a 2-process resume"
    summary = th.json.loads((Path(d["mt4"]) / "summary.json").read_text())
    assert summary["processes"] == WORLD and summary["iterations"] == 4


def test_torchrun_cli_trains_once(tmp_path, phantom_root):
    cfg = _config(tmp_path, phantom_root, "cli", method="supervised", max_iterations=2, val_every=2,
                  checkpoint_every=2)
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "ssl_mamba.cli", "train", "-c", cfg, "--run-dir", str(run_dir),
           "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = th.json.loads((run_dir / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["iterations"] == 2
    assert [r["step"] for r in th.read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]
    assert (run_dir / "last.pt").is_file() and (run_dir / "best_net1.pth").is_file()


def _validation_worker(rank: int, port: int, cfg_path: str, run_dir: str, out_dir: str) -> None:
    """One rank validating a built, never-fitted trainer; writes the volumes it read, the files it
    saved and what it saw; then validates again with rank 1's first volume unreadable."""
    import ssl_mamba.engine.trainer as trainer_module

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=COLLECTIVE_TIMEOUT)
    try:
        trainer = Trainer(load_config(cfg_path, []), Path(run_dir), progress=False)
        read, saved, original, save = [], [], trainer.source.read_volume, trainer_module.save_network
        trainer.source.read_volume = lambda name: (read.append(name), original(name))[1]
        trainer_module.save_network = lambda net, path: (saved.append(Path(path).name), save(net, path))[1]
        scalars = {k: v for k, v in trainer._validate().items() if not k.startswith("time/")}
        seen = {"read": read, "saved": saved, "scalars": scalars, "best": trainer.best}
        broken = trainer.val_names[1]  # rank 1's first volume

        def unreadable(name):
            if name == broken:
                raise DataError(f"{name}: cannot read the volume")
            return original(name)

        trainer.source.read_volume = unreadable
        try:
            trainer._validate()
            seen["failure"] = None
        except UserError as exc:
            seen["failure"] = f"{type(exc).__name__}: {exc}"

        def disk_full(net, path):
            raise OSError(f"No space left on device: {Path(path).name}")

        trainer.source.read_volume, trainer.best = original, {}  # an improvement: best_net1.pth is written
        trainer_module.save_network = disk_full if rank == 0 else trainer_module.save_network
        try:
            trainer._validate()
            seen["write_failure"] = None
        except Exception as exc:  # rank 0: the OSError itself; rank 1: a UserError naming rank 0
            seen["write_failure"] = f"{type(exc).__name__}: {exc}"
        Path(out_dir, f"validated_{rank}.json").write_text(th.json.dumps(seen))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ranks_share_the_validation_volumes_and_agree_with_one_process(tmp_path, phantom_root):
    """Each rank predicts and scores every second validation volume (no rank idles while another
    validates); after sharing the scores every rank holds the one-process validation exactly, for
    both networks of cross teaching, and the same best; only rank 0 writes best_<net>.pth.  A volume
    that fails on one rank, or a best_<net>.pth rank 0 cannot write, fails the validation on both, each
    with the failing rank's error (no rank is left waiting for the other)."""
    cfg = _config(tmp_path, phantom_root, "val", networks=["_test_plain", "_test_plain"], method="cross_teaching",
                  labeled_batch_size=2)
    mp.spawn(_validation_worker, args=(free_port(), cfg, str(tmp_path / "ddp"), str(tmp_path)), nprocs=WORLD,
             join=True)
    one = Trainer(load_config(cfg, []), tmp_path / "one", progress=False)
    names = list(one.val_names)
    expected = {k: v for k, v in one._validate().items() if not k.startswith("time/")}
    assert len(names) >= 2 and expected["val/net1/dice"] > 0 and expected["val/net2/dice"] > 0
    seen = [th.json.loads((tmp_path / f"validated_{rank}.json").read_text()) for rank in range(WORLD)]
    for rank in range(WORLD):
        assert seen[rank]["read"] == names[rank::WORLD] * 2  # net1's share, then net2's
        assert seen[rank]["scalars"] == expected
        assert seen[rank]["best"] == {k: dict(v) for k, v in one.best.items()}
    assert seen[0]["saved"] == ["best_net1.pth", "best_net2.pth"] and seen[1]["saved"] == []
    assert seen[1]["failure"] == f"DataError: {names[1]}: cannot read the volume"
    assert seen[0]["failure"] == f"UserError: validation of net1 failed on rank 1: {seen[1]['failure']}"
    # rank 0 cannot write best_net1.pth (a full disk): both ranks stop there, rank 1 with rank 0's error
    assert seen[0]["write_failure"] == "OSError: No space left on device: best_net1.pth"
    assert seen[1]["write_failure"] == f"UserError: writing best_net1.pth failed on rank 0: {seen[0]['write_failure']}"


def _fit_worker(rank: int, port: int, cfg_path: str, run_dir: str, out_dir: str) -> None:
    """One rank of a two-process run; writes how it ended ("finished" or the error) to ended_<rank>.txt."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=COLLECTIVE_TIMEOUT)
    try:
        try:
            Trainer(load_config(cfg_path, []), Path(run_dir), progress=False).fit()
            outcome = "finished"
        except UserError as exc:  # TrainingInterrupted, TrainingDiverged, a gradient mismatch
            outcome = f"{type(exc).__name__}: {exc}"
        Path(out_dir, f"ended_{rank}.txt").write_text(outcome)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("on_nonfinite, stops_after", [("stop", 4), ("skip", 3)])
def test_a_signal_to_one_rank_stops_every_rank_after_the_same_iteration(tmp_path, phantom_root, on_nonfinite,
                                                                        stops_after):
    """torchrun forwards a time limit's SIGTERM to every rank, but not at the same instant: the request
    travels with a per-step all-reduce, so all ranks stop after one iteration and write one last.pt
    there (a rank that stopped alone would leave the other waiting in a collective).  The signal comes
    during iteration 3.  The synchronous path (on_nonfinite=skip) agrees on it within that iteration;
    the deferred read-back (the default) when iteration 3's values are read, while iteration 4 runs."""
    cfg = _config(tmp_path, phantom_root, "stop", max_iterations=8, checkpoint_every=100, val_every=100,
                  log_images_every=0, options={"term_at": 2, "term_rank": 1}, on_nonfinite=on_nonfinite)
    run_dir = tmp_path / "run"
    mp.spawn(_fit_worker, args=(free_port(), cfg, str(run_dir), str(tmp_path)), nprocs=WORLD, join=True)
    ended = [(tmp_path / f"ended_{r}.txt").read_text() for r in range(WORLD)]
    assert f"stopped by SIGTERM after iteration {stops_after};" in ended[1], ended
    assert f"stopped by a signal to another rank after iteration {stops_after};" in ended[0], ended
    assert load_checkpoint(run_dir / "last.pt")["iteration"] == stops_after


@pytest.mark.parametrize("case", ["nan_on_one_rank", "gradient_on_one_rank"])
def test_a_fault_on_one_rank_stops_every_rank_with_its_error(tmp_path, phantom_root, case):
    """With the deferred read-back the values every rank checks are the ranks' means, so a NaN loss on
    rank 1 alone, or a parameter (net2's) that has a gradient on rank 0 only, raises the same error on
    both ranks at the same iteration; neither leaves the other waiting in a collective, and last.pt
    (iteration 2) is not overwritten by the faulty iterations."""
    options = {"nan_at": 2, "nan_rank": 1} if case == "nan_on_one_rank" else {"net1_only_rank": 1}
    cfg = _config(tmp_path, phantom_root, case, networks=["_test_plain", "_test_plain"], max_iterations=6,
                  checkpoint_every=2, val_every=100, log_images_every=0, options=options)
    run_dir = tmp_path / "run"
    mp.spawn(_fit_worker, args=(free_port(), cfg, str(run_dir), str(tmp_path)), nprocs=WORLD, join=True)
    ended = [(tmp_path / f"ended_{r}.txt").read_text() for r in range(WORLD)]
    expected = ("TrainingDiverged: non-finite loss at iteration 3" if case == "nan_on_one_rank"
                else "UserError: ranks disagree on which parameters received gradients")
    assert all(e.startswith(expected) for e in ended), ended
    if case == "nan_on_one_rank":
        assert load_checkpoint(run_dir / "last.pt")["iteration"] == 2

