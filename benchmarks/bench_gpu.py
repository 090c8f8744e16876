"""GPU benchmark of the SS2D scan backends and the Mamba-UNet training step (one device call).

Run on the GPU machine from the repository root:
    python3 benchmarks/bench_gpu.py --out $OUT --commit <sha>
Phases (each recorded in the JSON even when a later one fails):
  1. build mamba-ssm's selective_scan_cuda (sm_90 only) from the sdist in .sdist/ (background thread);
  2. device copy bandwidth; correctness of the Triton op vs the torch reference on the GPU;
  3. the scan op alone at Mamba-UNet's first stage (B=24, 56x56, D=192, N=16): Triton tile sweep
     (the default first), the kernels alone (fwd, bwd: no projections or casts), fp32 / bf16 of the
     whole op for the best tiles, and the baseline (cross-scan copies + mamba-ssm fp32 kernel + merge);
  4. Mamba-UNet train step (CE + Dice, SGD momentum) at batch 24 and 16, and inference img/s, for
     the baseline, ours (best tiles) fp32 and bf16 autocast, and optionally the torch reference scan
     (--torch-ref; ~100 s per step); the library's cross-teaching step (UNet + Mamba-UNet, batch
     16, as Semi-Mamba-UNet trains) on ours; a kernel profile of the b24 step.
The run is time-boxed (--budget seconds): phases that would not fit are recorded as skipped.
Prints a table last and writes gpu-<date><--tag>.json under --out.
"""
import argparse
import datetime
import glob
import json
import os
import sys
import threading
import time
import traceback
import types
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ssl_mamba.ops import cross_merge, cross_scan, ss2d_scan  # noqa: E402
from ssl_mamba.ops import triton_ss2d  # noqa: E402
from ssl_mamba.ops.triton_ss2d import set_block_config, ss2d_scan_triton  # noqa: E402

RESULTS = {}
_BUILD = {}
_RUN = {"t0": time.time(), "budget": 480.0, "tag": ""}
# The shipped default first, as the control of the sweep (the library's own tunables, read before
# anything changes them, so a new default needs no second copy here); the model runs use the sweep's
# fastest correct config (segments stay automatic).
DEFAULT = triton_ss2d.block_config()
# The defaults up to v16 (4096 programs, fp32 direction buffers): the A/B control of the v17 defaults.
V16_TILES = dict(target_programs=4096, narrow_buffers=0)
# The persistent backward (train.low_memory_scan) against one program per work item (NOTES-gpu.md,
# fourth session); the model runs time both as well (model_b24_ours_bf16_lowmem).
SWEEP = [DEFAULT,  # in priority order: the time box drops the tail
         dict(DEFAULT, bwd_programs=-1)]


# Seconds the compile phases leave for the phases after them (the baseline first): in v14 the ten
# phases after the compile ones took 91 s.
AFTER_COMPILE_S = 120


def time_left() -> float:
    return _RUN["budget"] - (time.time() - _RUN["t0"])


def cfg_key(cfg: dict) -> str:
    return (f"d{cfg['block_d']}_w{cfg['fwd_warps']}{cfg['bwd_warps']}_c{cfg['chunk']}_s{cfg['stages']}"
            f"_at{int(cfg['atomic_merge'])}_seg{cfg['segments']}_v{cfg['vector_steps']}"
            f"_bd{cfg['bwd_block_d']}_nreg{cfg['bwd_maxnreg']}_bp{cfg['bwd_programs']}_tp{cfg['target_programs']}"
            f"_nb{int(cfg.get('narrow_buffers', 0))}")


def save(out_dir: Path) -> None:
    """Write what has been measured so far (each phase calls this)."""
    name = f"gpu-{datetime.date.today().isoformat()}{_RUN['tag']}.json"
    (out_dir / name).write_text(json.dumps(RESULTS, indent=1, default=str))


def build_mamba_ssm() -> None:
    """Compile mamba-ssm's selective_scan_cuda for sm_90 and make its Python interface importable."""
    t0 = time.time()
    try:
        from torch.utils.cpp_extension import load
        src = Path(glob.glob(str(REPO / ".sdist" / "mamba_ssm-*"))[0])
        csrc = src / "csrc" / "selective_scan"
        build_dir = Path("/tmp/ssm_build")
        build_dir.mkdir(exist_ok=True)
        os.environ.setdefault("MAX_JOBS", "16")
        mod = load(name="selective_scan_cuda",
                   sources=[str(csrc / "selective_scan.cpp")] + sorted(str(p) for p in csrc.glob("*.cu")),
                   extra_cflags=["-O3", "-std=c++17"],
                   extra_cuda_cflags=["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__",
                                      "-U__CUDA_NO_HALF_CONVERSIONS__", "-U__CUDA_NO_BFLOAT16_OPERATORS__",
                                      "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_BFLOAT162_OPERATORS__",
                                      "-U__CUDA_NO_BFLOAT162_CONVERSIONS__", "--expt-relaxed-constexpr",
                                      "--expt-extended-lambda", "--use_fast_math", "-lineinfo",
                                      "-gencode", "arch=compute_90,code=sm_90"],
                   build_directory=str(build_dir), verbose=False)
        sys.modules["selective_scan_cuda"] = mod
        pkg = types.ModuleType("mamba_ssm")  # skip the package __init__ (it imports every model)
        pkg.__path__ = [str(src / "mamba_ssm")]
        sys.modules["mamba_ssm"] = pkg
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        _BUILD["fn"] = selective_scan_fn
        _BUILD["seconds"] = round(time.time() - t0, 1)
    except Exception as exc:  # recorded, the rest of the benchmark goes on
        _BUILD["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        _BUILD["trace"] = traceback.format_exc()[-3000:]


def baseline_ss2d(x, xpw, dtw, dtb, A_logs, Ds):
    """The original forward_corev0: four fp32 copies, mamba-ssm's kernel, merge."""
    b, h, w, d = x.shape
    k, n, r = 4, A_logs.shape[1], dtw.shape[2]
    xs = cross_scan(x.permute(0, 3, 1, 2))  # (B, 4, D, L)
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, xpw)
    dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, dtw)
    ys = _BUILD["fn"](xs.float().reshape(b, -1, h * w), dts.contiguous().float().reshape(b, -1, h * w),
                      -torch.exp(A_logs.float()), Bs.float().contiguous(), Cs.float().contiguous(), Ds.float(),
                      z=None, delta_bias=dtb.float().reshape(-1), delta_softplus=True).view(b, k, d, h * w)
    return cross_merge(ys, h, w).view(b, d, h, w).permute(0, 2, 3, 1)


SCANS = {
    "torch": lambda *a: ss2d_scan(*a, backend="torch"),
    "mamba_ssm": baseline_ss2d,
    "triton": ss2d_scan_triton,
}


def cuda_time(fn, warmup: int = 5, iters: int = 20) -> list:
    """Per-call milliseconds (CUDA events), after warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return times


def median(xs: list) -> float:
    return float(sorted(xs)[len(xs) // 2])


def scan_inputs(b, h, w, d, n, r, dtype=torch.float32, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    dev = dict(device="cuda", dtype=torch.float32)
    x = F.silu(torch.randn(b, h, w, d, generator=g, **dev)).to(dtype)
    xpw = (torch.rand(4, r + 2 * n, d, generator=g, **dev) * 2 - 1) / d ** 0.5
    dtw = (torch.rand(4, d, r, generator=g, **dev) * 2 - 1) / r ** 0.5
    dt = torch.exp(torch.rand(4, d, generator=g, **dev) * 4.6 - 6.9)
    dtb = dt + torch.log(-torch.expm1(-dt))
    A_logs = torch.log(torch.arange(1, n + 1, **dev)).repeat(4 * d, 1)
    Ds = torch.ones(4 * d, **dev)
    return [x, xpw, dtw, dtb, A_logs, Ds]


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


NAMES = ["y", "x", "x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds"]
ODD_SHAPES = ((2, 12, 20, 64, 16, 4), (1, 7, 9, 96, 16, 6))  # the second: L = 63, 3 channel blocks, dt_rank 6


def scan_errors(shape, dtype) -> tuple:
    """Ours vs the torch reference scan (fp32 inputs; `dtype` bf16 runs ours under autocast): the
    relative error of the output and of every gradient, and whether any of them has a NaN."""
    ins = scan_inputs(*shape, seed=1)
    gy = torch.randn(*shape[:4], device="cuda")
    ref_in = [t.clone().requires_grad_() for t in ins]
    yref = SCANS["torch"](*ref_in)
    gref = torch.autograd.grad(yref, ref_in, gy)
    tin = [t.clone().requires_grad_() for t in ins]
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y = ss2d_scan_triton(tin[0].to(dtype), *tin[1:])
    g = torch.autograd.grad(y, tin, gy.to(y.dtype))
    errs = dict(zip(NAMES, [rel(y, yref)] + [rel(a, b) for a, b in zip(g, gref)]))
    return errs, bool(torch.isnan(y).any() or any(torch.isnan(t).any() for t in g))


def with_config(fn, **cfg):
    """fn() under a Triton variant, the current config restored afterwards."""
    old = set_block_config(**cfg)
    try:
        return fn()
    finally:
        set_block_config(**old)


def check_correctness() -> dict:
    """The worst relative error per tensor over both odd shapes, fp32 and bf16."""
    out = {}
    for shape in ODD_SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            errs, nan = scan_errors(shape, dtype)
            key = str(dtype).split(".")[-1]
            worst = out.setdefault(key, {})
            for name, err in errs.items():
                worst[name] = max(worst.get(name, 0.0), err)
            out[key + "_nan"] = out.get(key + "_nan", False) or nan
    return out


def fp32_worst_error() -> float:
    """The largest fp32 relative error at the second odd shape (NaN counts as infinite): the sweep's
    quick check that a variant computes the right thing."""
    errs, nan = scan_errors(ODD_SHAPES[1], torch.float32)
    return float("inf") if nan else max(errs.values())


def copy_bandwidth() -> float:
    """Device-to-device copy, GB/s counting bytes read plus written."""
    a = torch.empty(2 * 1024 ** 3 // 4, device="cuda")
    a.uniform_()
    b = torch.empty_like(a)
    ms = median(cuda_time(lambda: b.copy_(a), 3, 10))
    return 2 * a.numel() * 4 / ms / 1e6


def op_bench(backend: str, dtype, ins, gy) -> dict:
    """Forward and forward+backward ms of one SS2D scan backend."""
    x = ins[0].to(dtype).detach().requires_grad_()
    params = [p.detach().requires_grad_() for p in ins[1:]]
    fn = SCANS[backend]

    def fwd():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            fn(x, *params)

    def fwd_bwd():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = fn(x, *params)
        y.backward(gy.to(y.dtype))

    return {"fwd_ms": median(cuda_time(fwd, 3, 20)), "fwd_bwd_ms": median(cuda_time(fwd_bwd, 3, 20))}


def kernel_bench(ins, gy) -> dict:
    """The fused kernels alone (no x_dbl projection, casts or partial sums outside the Function's
    kernels): forward, and forward + backward through the autograd Function, on fp32 inputs."""
    args = [t.detach().requires_grad_() for t in triton_ss2d.kernel_inputs(*ins)]

    def fwd():
        with torch.no_grad():
            triton_ss2d._SS2DScanFn.apply(*args)

    def fwd_bwd():
        triton_ss2d._SS2DScanFn.apply(*args).backward(gy)

    return {"fwd_ms": median(cuda_time(fwd, 3, 20)), "fwd_bwd_ms": median(cuda_time(fwd_bwd, 3, 20))}


def profile_step(bf16: bool, batch: int = 24, top: int = 25, graphs: bool = False, compiled: bool = False,
                 cfg: dict = None) -> dict:
    """Where a Mamba-UNet train step's GPU time goes (ours): torch.profiler over 3 steps, the top
    kernels by total CUDA time, names shortened.  With `graphs` the kernels run inside CUDA graph
    replays, which CUPTI still reports one by one (a total near zero would say it did not)."""
    return with_config(lambda: _profile_step(bf16, batch, top, graphs, compiled), **(cfg or {}))


def _profile_step(bf16: bool, batch: int, top: int, graphs: bool, compiled: bool) -> dict:
    from torch.profiler import ProfilerActivity, profile
    net, _, step = mamba_unet_training("triton", bf16, batch, graphs=graphs, compiled=compiled)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        cuda_us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if cuda_us:
            rows.append((ev.key[:90], round(cuda_us / 3e3, 3), ev.count // 3))
    rows.sort(key=lambda r: -r[1])
    del net, step
    torch.cuda.empty_cache()
    return {"total_ms_per_step": round(sum(r[1] for r in rows), 2),
            "top": [{"kernel": k, "ms_per_step": ms, "calls_per_step": c} for k, ms, c in rows[:top]]}


def op_floor_bytes(b, h, w, d, n, r, elt: int) -> int:
    """Fewest bytes the fused forward must move: x, dt (4D per position), B/C/dt_raw, y."""
    pos = b * h * w
    return pos * (d * elt + 4 * d * elt + 4 * (r + 2 * n) * elt + d * elt)


def sweep_tiles(ins, gy) -> dict:
    """Time each SWEEP variant of ours fp32 (v1 first, as the control); keep the fastest fwd+bwd."""
    res = {}
    for cfg in SWEEP:
        if time_left() < 220:
            res[cfg_key(cfg)] = {"skipped": "time box"}
            continue
        set_block_config(**cfg)
        try:
            res[cfg_key(cfg)] = dict(op_bench("triton", torch.float32, ins, gy), fp32_err=fp32_worst_error())
        except Exception as exc:
            res[cfg_key(cfg)] = {"error": str(exc)[:300]}
    ok = {cfg_key(c): c for c in SWEEP if res[cfg_key(c)].get("fp32_err", 1.0) <= 1e-5}
    best = min(ok, key=lambda k: res[k]["fwd_bwd_ms"])
    set_block_config(**ok[best])  # the model runs use the fastest correct config
    res["best"] = best
    res["best_config"] = ok[best]
    return res


def dice_ce(logits, label, k=4):
    """0.5 (CE + soft Dice) as in SSL4MIS supervised training."""
    ce = F.cross_entropy(logits, label)
    p = logits.softmax(1)
    oh = F.one_hot(label, k).permute(0, 3, 1, 2).to(p.dtype)
    inter = (p * oh).sum((0, 2, 3))
    dice = 1 - (2 * inter + 1e-5) / (p.pow(2).sum((0, 2, 3)) + oh.sum((0, 2, 3)) + 1e-5)
    return 0.5 * (ce + dice.mean())


def model_bench(backend: str, bf16: bool, batch: int, iters: int = 20, cfg: dict = None,
                graphs: bool = False, compiled: bool = False, eval_compiled: bool = False,
                opaque_scan: bool = False) -> dict:
    """Train-step ms (median of `iters`), img/s, peak GiB, and inference img/s of Mamba-UNet.

    cfg: Triton variant to use for this measurement (the current one is restored afterwards);
    graphs: the network's forward and backward CUDA-graphed by the library (train.cuda_graphs);
    compiled: torch.compile around everything but the scan (see mamba_unet_training);
    eval_compiled: the eval-mode forward too (eval.compile), which the inference columns then time;
    opaque_scan: compile with the scan as a graph break (the path before the custom ops), for A/B.
    """
    return with_config(lambda: _model_bench(backend, bf16, batch, iters, graphs, compiled, eval_compiled,
                                            opaque_scan), **(cfg or {}))


def mamba_unet_training(backend: str, bf16: bool, batch: int, graphs: bool = False, compiled: bool = False,
                        eval_compiled: bool = False, opaque_scan: bool = False):
    """A full-size Mamba-UNet on `backend`'s scan with SGD and synthetic 224x224 data: (net, img,
    step), step() being one train iteration (0.5 (CE + Dice), backward, SGD) returning the loss.
    graphs: capture the network with the library's `engine.cuda_graphs` (as train.cuda_graphs does).
    compiled: torch.compile (inductor, static shapes) of each block and patch layer, as train.compile
    does: the Triton scan is traced as two custom ops, so the sums and casts around its kernels fuse
    with the norms and gating; the other backends, and any with `opaque_scan`, break the graph at the
    scan (the path measured up to run v16)."""
    from ssl_mamba.engine.cuda_graphs import GraphedNetworks
    from ssl_mamba.engine.step import autocast_context
    import ssl_mamba.layers.ss2d as ss2d_mod
    from ssl_mamba.models import create_model
    scan = SCANS[backend]
    if (compiled or eval_compiled) and (backend != "triton" or opaque_scan):
        scan = torch.compiler.disable(scan)
    ss2d_mod.ss2d_scan = lambda *a, backend=None: scan(*a)
    torch.manual_seed(0)
    net = create_model("mamba_unet", num_classes=4).cuda()
    if backend == "mamba_ssm":  # the baseline is the original path: SS2D saves its regions' insides
        for module in net.modules():
            if isinstance(module, ss2d_mod.SS2D):
                module.recompute = False
    if compiled or eval_compiled:
        from ssl_mamba.models.compile import compile_blocks
        compile_blocks(net, train=compiled, eval=eval_compiled)  # as train.compile / eval.compile do
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    img = torch.randn(batch, 1, 224, 224, device="cuda")
    lab = torch.randint(0, 4, (batch, 224, 224), device="cuda")
    amp = lambda: autocast_context(img.device, "bf16" if bf16 else "none", cache=not graphs)  # noqa: E731
    captured = GraphedNetworks({"net1": net}, img, amp) if graphs else None

    def step():
        if captured is not None:
            captured.new_iteration()
        with amp():
            loss = dice_ce(net(img).float(), lab)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return net, img, step


def _model_bench(backend: str, bf16: bool, batch: int, iters: int, graphs: bool, compiled: bool,
                 eval_compiled: bool = False, opaque_scan: bool = False) -> dict:
    t0 = time.time()
    # what earlier phases left allocated is not this phase's: `peak_own_gib` subtracts it (the
    # summary records both it and the absolute `peak_gib`)
    start = torch.cuda.memory_allocated()
    net, img, step = mamba_unet_training(backend, bf16, batch, graphs, compiled, eval_compiled, opaque_scan)
    step()  # the first call compiles when `compiled`; timed separately
    torch.cuda.synchronize()
    first_s = time.time() - t0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    warm = 5 if iters >= 10 else 1
    times = cuda_time(step, warm, iters)
    loss = float(step())
    peak = torch.cuda.max_memory_allocated() / 1024 ** 3
    # what the process holds: for a graphed network its activations live in the graph's private
    # pool, which max_memory_allocated does not count once the capture is over
    peak_reserved = torch.cuda.max_memory_reserved() / 1024 ** 3
    net.eval()

    def infer_ms(forward, batch_img) -> float:
        def run():
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                forward(batch_img)
        # batch 1 is host-bound and cheap: four times the samples steady its median on a busy host
        repeats = max(iters // 2, 3) * (4 if batch_img.shape[0] == 1 else 1)
        return median(cuda_time(run, warm, repeats))

    inf_ms = infer_ms(net, img)
    inf1_ms = infer_ms(net, img[:1])  # one slice at a time, as SSL4MIS-style evaluation runs
    # the same through the library's eval.cuda_graphs path (one graph per input shape)
    from ssl_mamba.metrics.graphs import EvalGraphs
    eval_graphs = EvalGraphs(net)
    try:
        graphed = {"infer_graphs_img_s": batch * 1000 / infer_ms(eval_graphs, img),
                   "infer_b1_graphs_img_s": 1000 / infer_ms(eval_graphs, img[:1])}
    except Exception as exc:  # recorded; the rest of the measurement stands
        graphed = {"infer_graphs_error": f"{type(exc).__name__}: {exc}"[:300]}
    ms = median(times)
    del net, step, eval_graphs
    torch.cuda.empty_cache()
    return {"train_ms": ms, "train_img_s": batch * 1000 / ms, "peak_gib": peak, "peak_reserved_gib": peak_reserved,
            "allocated_at_start_gib": start / 1024 ** 3, "peak_own_gib": peak - start / 1024 ** 3,
            "first_step_s": first_s, "infer_img_s": batch * 1000 / inf_ms, "infer_b1_img_s": 1000 / inf1_ms, **graphed,
            "loss_finite": bool(torch.isfinite(torch.tensor(loss)))}


def method_step_bench(config: str = "configs/acdc/semi_mamba_unet_7cases.yaml", batch: int = 16,
                      bf16: bool = False, networks=None, size: int = 224, iters: int = 20,
                      device: str = "cuda", graphs: bool = False, compiled: bool = False,
                      teachers: bool = True) -> dict:
    """One training iteration of a library method as the trainer runs it (`engine.step.run_iteration`:
    the method's training_step, each optimizer group's backward and step, after_step, with the losses
    read back and checked while the next iteration is queued, as the trainer does since the ninth session),
    on synthetic data: by default Semi-Mamba-UNet's cross teaching, UNet + Mamba-UNet, batch 16
    (8 labeled).  `networks` / `size` / `device` let it run small on a CPU as a smoke check;
    `graphs` captures the students as train.cuda_graphs does (and, with `teachers`, replays an EMA
    teacher's forward), `compiled` compiles their blocks as train.compile does."""
    import dataclasses

    from ssl_mamba.config import load_config
    from ssl_mamba.data.batch import Batch
    from ssl_mamba.engine.method import METHODS
    from ssl_mamba.engine.optim import build_all
    from ssl_mamba.engine.cuda_graphs import graph_method
    from ssl_mamba.engine.step import autocast_context, finish_readback, run_iteration
    from ssl_mamba.engine.trainer import build_networks
    import methods  # noqa: F401 - registers the methods

    cfg = load_config(REPO / config)
    if networks:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, networks=list(networks)))
    torch.manual_seed(0)
    method = METHODS.get(cfg.method.name)(cfg, build_networks(cfg)).to(device)
    optimizers, _ = build_all(method.optimizer_groups(), cfg.train)
    g = torch.Generator(device=device).manual_seed(0)
    data = Batch(image=torch.randn(batch, 1, size, size, generator=g, device=device),
                 label=torch.randint(0, cfg.data.num_classes, (batch, size, size), generator=g, device=device),
                 n_labeled=batch // 2 if method.needs_unlabeled else batch)
    if compiled:
        from ssl_mamba.models.compile import compile_blocks
        for net in method.students().values():
            compile_blocks(net)
    method.train()
    dev, amp = torch.device(device), "bf16" if bf16 else "none"
    captured = None
    if graphs:
        captured = graph_method(method, data, lambda: autocast_context(dev, amp, cache=False), teachers)

    queued = []

    def step():  # this iteration queued, then the previous one's values read back (the trainer's order)
        result = run_iteration(method, optimizers, data, 1000, dev, amp, graphs=captured, defer=True)
        if queued:
            finish_readback(queued.pop())
        queued.append(result)

    if device != "cuda":
        t0 = time.time()
        for _ in range(iters):
            step()
        ms = (time.time() - t0) * 1000 / iters
        return {"step_ms": ms, "img_s": batch * 1000 / ms, "method": cfg.method.name, "networks": cfg.model.networks}
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    ms = median(cuda_time(step, 3, iters))
    peak = torch.cuda.max_memory_allocated() / 1024 ** 3
    peak_reserved = torch.cuda.max_memory_reserved() / 1024 ** 3
    del method, optimizers
    torch.cuda.empty_cache()
    return {"step_ms": ms, "img_s": batch * 1000 / ms, "peak_gib": peak, "peak_reserved_gib": peak_reserved,
            "method": cfg.method.name,
            "networks": cfg.model.networks}


def release_phase_memory() -> None:
    """Give back what a phase left allocated, so the next phase's peak is its own: graphed networks
    sit in reference cycles (their forward closes over the net) and compiled ones in dynamo's code
    caches; in run v13 the phases after the compile phases carried ~1 GiB of such leftovers."""
    import gc
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()


def phase(key: str, fn, out_dir: Path, need_s: float = 0.0):
    """Run one measurement, record its result or error; skip it if under need_s seconds are left."""
    t0 = time.time()
    if _RUN.get("only") and not any(key == w[:-1] if w.endswith("$") else w in key for w in _RUN["only"]):
        return
    if time_left() < need_s:
        RESULTS[key] = {"skipped": f"time box ({time_left():.0f} s left, needs {need_s:.0f})"}
        print(f"[skip] {key}", flush=True)
        save(out_dir)
        return
    try:
        RESULTS[key] = fn()
    except Exception as exc:
        RESULTS[key] = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
    release_phase_memory()
    print(f"[{time.time() - t0:6.1f}s] {key}: {json.dumps(RESULTS[key], default=str)[:400]}", flush=True)
    save(out_dir)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--tag", default="", help="suffix of the JSON name, e.g. -v3")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run")
    ap.add_argument("--torch-ref", action="store_true", help="also time the torch reference scan (slow)")
    ap.add_argument("--no-sweep", action="store_true", help="time only the default tiles (saves ~40 s)")
    ap.add_argument("--only", default="",
                    help="comma list: run only the phases whose name contains one of these (NAME$: exactly)")
    args = ap.parse_args()
    _RUN.update(budget=args.budget, tag=args.tag, only=[w for w in args.only.split(",") if w])
    out_dir = Path(args.out)
    builder = threading.Thread(target=build_mamba_ssm, daemon=True)
    builder.start()
    import triton
    RESULTS["card"] = torch.cuda.get_device_name()
    RESULTS["commit"] = args.commit
    RESULTS["date"] = datetime.date.today().isoformat()
    RESULTS["versions"] = {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda}
    set_block_config(**DEFAULT)
    phase("correctness", check_correctness, out_dir)
    shape = (24, 56, 56, 192, 16, 6)
    ins = scan_inputs(*shape)
    gy = torch.randn(*shape[:4], device="cuda")
    if not args.no_sweep:
        phase("tile_sweep_fp32", lambda: sweep_tiles(ins, gy), out_dir)
    RESULTS["tile_config"] = triton_ss2d.block_config()
    phase("correctness_best", check_correctness, out_dir)
    phase("op_triton_fp32", lambda: op_bench("triton", torch.float32, ins, gy), out_dir)
    phase("op_triton_bf16", lambda: op_bench("triton", torch.bfloat16, ins, gy), out_dir)
    phase("op_kernels_fp32", lambda: kernel_bench(ins, gy), out_dir, 60)
    compile_phases(out_dir)  # while mamba-ssm builds: inductor's first compile takes ~1 min
    builder.join(timeout=max(time_left() - 150, 1))
    RESULTS["mamba_ssm_build"] = {k: v for k, v in _BUILD.items() if k != "fn"}
    print("build:", RESULTS["mamba_ssm_build"], flush=True)
    phase("copy_gbps", copy_bandwidth, out_dir)
    if "fn" in _BUILD:
        phase("op_mamba_ssm_fp32", lambda: op_bench("mamba_ssm", torch.float32, ins, gy), out_dir, 30)
    del ins, gy
    torch.cuda.empty_cache()
    for batch, need in ((24, 20), (16, 20)):
        if "fn" in _BUILD:
            phase(f"model_b{batch}_baseline_fp32", lambda: model_bench("mamba_ssm", False, batch), out_dir, need)
        phase(f"model_b{batch}_ours_fp32", lambda: model_bench("triton", False, batch), out_dir, need)
        phase(f"model_b{batch}_ours_bf16", lambda: model_bench("triton", True, batch), out_dir, need)
        phase(f"model_b{batch}_ours_bf16_graphs", lambda: model_bench("triton", True, batch, graphs=True),
              out_dir, need)
        if batch == 24:
            phase("model_b24_ours_bf16_graphs_tp2048",  # fewer automatic segments (fewer pre-pass steps)
                  lambda: model_bench("triton", True, 24, cfg=dict(RESULTS["tile_config"], target_programs=2048),
                                      graphs=True), out_dir, need)
            phase("model_b24_ours_bf16_graphs_v16tiles",  # the defaults up to v16, graphed
                  lambda: model_bench("triton", True, 24, cfg=dict(RESULTS["tile_config"], **V16_TILES),
                                      graphs=True), out_dir, need)
            phase("model_b24_ours_bf16_v16tiles",  # their plain peak, against the v17 defaults' own peak
                  lambda: model_bench("triton", True, 24, cfg=dict(RESULTS["tile_config"], **V16_TILES)),
                  out_dir, need)
            phase("model_b24_ours_bf16_lowmem",  # train.low_memory_scan: the persistent backward
                  lambda: model_bench("triton", True, 24, cfg=dict(RESULTS["tile_config"], bwd_programs=-1)),
                  out_dir, need)
            phase("model_b24_ours_fp32_graphs", lambda: model_bench("triton", False, 24, graphs=True), out_dir, need)
            phase("model_b24_ours_fp32_seg1", lambda: model_bench("triton", False, 24,
                                                                   cfg=dict(RESULTS["tile_config"], segments=1)),
                  out_dir, need)
    phase("cross_teaching_b16_ours_fp32", lambda: method_step_bench(bf16=False), out_dir, 25)
    phase("cross_teaching_b16_ours_bf16", lambda: method_step_bench(bf16=True), out_dir, 25)
    phase("cross_teaching_b16_ours_bf16_graphs", lambda: method_step_bench(bf16=True, graphs=True), out_dir, 25)
    phase("supervised_b24_ours_bf16_graphs",  # the trainer's own step for the fully supervised Mamba-UNet row
          lambda: method_step_bench("configs/acdc/fully_mamba_unet.yaml", 24, bf16=True, graphs=True), out_dir, 25)
    phase("profile_b24_ours_fp32", lambda: profile_step(False), out_dir, 25)
    phase("profile_b24_ours_bf16", lambda: profile_step(True), out_dir, 25)
    if args.torch_ref:
        phase("model_b16_torchref_fp32", lambda: model_bench("torch", False, 16, iters=2), out_dir, 300)
    summarize(shape, out_dir)


def compile_phases(out_dir: Path) -> None:
    """train.compile (models/compile.py: inductor around the scan), alone and with CUDA graphs.

    In priority order (the time box drops the tail); each phase keeps AFTER_COMPILE_S in hand for the
    baseline and the uncompiled phases that follow."""
    def compiled_phase(key, need_s, **kw):
        phase(key, lambda: model_bench("triton", True, 24, compiled=True, **kw), out_dir, need_s + AFTER_COMPILE_S)

    compiled_phase("model_b24_ours_bf16_compile_graphs", 150, graphs=True)  # the first compile: ~110-120 s
    # v18 settled the tile A/Bs (they moved to the tail); inference with eval.compile, cut by the time box
    # in v17 and v18, comes next
    compiled_phase("model_b24_ours_bf16_compile_graphs_evalcompile", 130, graphs=True,  # inference: eval.compile
                   eval_compiled=True)
    phase("profile_b24_ours_bf16_compile_graphs",  # where the fastest step's kernel time goes
          lambda: profile_step(True, graphs=True, compiled=True, top=40), out_dir, 60 + AFTER_COMPILE_S)
    phase("cross_teaching_b16_ours_bf16_compile_graphs",
          lambda: method_step_bench(bf16=True, graphs=True, compiled=True), out_dir, 60 + AFTER_COMPILE_S)
    phase("model_b16_ours_bf16_compile_graphs",
          lambda: model_bench("triton", True, 16, compiled=True, graphs=True), out_dir, 60 + AFTER_COMPILE_S)
    compiled_phase("model_b24_ours_bf16_compile_graphs_opaque", 60, graphs=True, opaque_scan=True)  # A/B: v16's path
    compiled_phase("model_b24_ours_bf16_compile_graphs_v16tiles", 40, graphs=True,  # A/B: the v16 defaults
                   cfg=dict(RESULTS["tile_config"], **V16_TILES))
    compiled_phase("model_b24_ours_bf16_compile_graphs_tp16384", 40, graphs=True,  # 8192 -> 16384: -0.6 ms in v18
                   cfg=dict(RESULTS["tile_config"], target_programs=16384))
    compiled_phase("model_b24_ours_bf16_compile", 150)  # without graphs: slower than eager (host-bound)


def summarize(shape, out_dir: Path) -> None:
    """Headline numbers, ratios to the baseline, and the table printed last."""
    r = RESULTS
    get = lambda key, f: r.get(key, {}).get(f) if isinstance(r.get(key), dict) else None  # noqa: E731
    r["baseline_img_s"] = get("model_b24_baseline_fp32", "train_img_s")
    r["ours_fp32_img_s"] = get("model_b24_ours_fp32", "train_img_s")
    r["ours_bf16_img_s"] = get("model_b24_ours_bf16", "train_img_s")
    r["ours_bf16_graphs_img_s"] = get("model_b24_ours_bf16_graphs", "train_img_s")
    r["ours_bf16_graphs_peak_gib"] = get("model_b24_ours_bf16_graphs", "peak_gib")
    r["baseline_peak_gib"] = get("model_b24_baseline_fp32", "peak_gib")
    r["ours_bf16_peak_gib"] = get("model_b24_ours_bf16", "peak_gib")
    r["baseline_peak_own_gib"] = get("model_b24_baseline_fp32", "peak_own_gib")
    r["ours_bf16_peak_own_gib"] = get("model_b24_ours_bf16", "peak_own_gib")
    for elt, key in ((4, "op_triton_fp32"), (2, "op_triton_bf16")):
        if get(key, "fwd_ms"):
            r[key]["fwd_floor_gb"] = op_floor_bytes(*shape, elt) / 1e9
            r[key]["fwd_gbps"] = op_floor_bytes(*shape, elt) / get(key, "fwd_ms") / 1e6
    save(out_dir)
    print(f"\ncard {r['card']}  commit {r['commit']}  copy {r.get('copy_gbps')} GB/s  tiles {r.get('tile_config')}")
    print(f"{'config':34s} {'train ms':>9s} {'img/s':>8s} {'x base':>7s} {'peak GiB':>9s} {'own GiB':>8s} {'reserved':>9s} "
          f"{'infer img/s':>11s} {'x base':>7s} {'b1 img/s':>9s} {'x base':>7s} {'graphed infer':>13s} {'x base':>7s} "
          f"{'graphed b1':>10s} {'x base':>7s}")
    for batch in (24, 16):
        base = r.get(f"model_b{batch}_baseline_fp32", {})
        for v in ("baseline_fp32", "ours_fp32", "ours_bf16", "ours_bf16_graphs", "ours_bf16_graphs_tp2048",
                  "ours_bf16_graphs_v16tiles", "ours_bf16_compile", "ours_bf16_compile_graphs",
                  "ours_bf16_compile_graphs_opaque", "ours_bf16_compile_graphs_v16tiles",
                  "ours_bf16_compile_graphs_tp16384", "ours_bf16_v16tiles",
                  "ours_bf16_compile_graphs_evalcompile", "ours_bf16_lowmem", "ours_fp32_graphs",
                  "ours_fp32_seg1", "torchref_fp32"):
            m = r.get(f"model_b{batch}_{v}")
            if not isinstance(m, dict) or "train_ms" not in m:
                if m is not None:
                    print(f"b{batch} {v:30s} {str(m)[:80]}")
                continue
            tr = m["train_img_s"] / base["train_img_s"] if "train_img_s" in base else float("nan")
            ir = m["infer_img_s"] / base["infer_img_s"] if "infer_img_s" in base else float("nan")
            i1 = m["infer_b1_img_s"] / base["infer_b1_img_s"] if "infer_b1_img_s" in base else float("nan")
            print(f"b{batch} {v:30s} {m['train_ms']:9.1f} {m['train_img_s']:8.1f} {tr:7.2f} {m['peak_gib']:9.2f} "
                  f"{m.get('peak_own_gib', float('nan')):8.2f} "
                  f"{m.get('peak_reserved_gib', float('nan')):9.2f} "
                  f"{m['infer_img_s']:11.1f} {ir:7.2f} {m['infer_b1_img_s']:9.1f} {i1:7.2f} "
                  f"{m.get('infer_graphs_img_s', float('nan')):13.1f} "
                  f"{m.get('infer_graphs_img_s', float('nan')) / base.get('infer_img_s', float('nan')):7.2f} "
                  f"{m.get('infer_b1_graphs_img_s', float('nan')):10.1f} "
                  f"{m.get('infer_b1_graphs_img_s', float('nan')) / base.get('infer_b1_img_s', float('nan')):7.2f}")
    sweep = r.get("tile_sweep_fp32", {})
    for key, val in sweep.items():
        if isinstance(val, dict) and "fwd_ms" in val:
            print(f"sweep {key:29s} fwd {val['fwd_ms']:7.3f} ms  fwd+bwd {val['fwd_bwd_ms']:7.3f} ms")
    print("best", sweep.get("best"))
    for key in ("cross_teaching_b16_ours_fp32", "cross_teaching_b16_ours_bf16", "cross_teaching_b16_ours_bf16_graphs",
                "cross_teaching_b16_ours_bf16_compile_graphs", "supervised_b24_ours_bf16_graphs"):
        print(f"{key}: {json.dumps(r.get(key), default=str)[:200]}")
    for key in ("op_triton_fp32", "op_triton_bf16", "op_kernels_fp32", "op_mamba_ssm_fp32"):
        print(f"op {key:31s} {json.dumps(r.get(key), default=str)[:150]}")
    print("correctness", json.dumps(r.get("correctness"))[:600])
    for key in ("profile_b24_ours_fp32", "profile_b24_ours_bf16", "profile_b24_ours_bf16_compile_graphs"):
        prof = r.get(key, {})
        if "top" in prof:
            print(f"{key}: {prof['total_ms_per_step']} ms of kernels per step")
            for row in prof["top"][:40 if "compile" in key else 18]:
                print(f"  {row['ms_per_step']:8.3f} ms  x{row['calls_per_step']:<4d} {row['kernel'][:80]}")


if __name__ == "__main__":
    main()
