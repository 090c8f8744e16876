"""Correctness of the fused Triton SS2D core (ssl_mamba/ops/triton_ss2d.py) on the CPU.

The kernels run under Triton's interpreter (TRITON_INTERPRET=1), which must be set before triton
is first imported; other tests may already have imported it in this pytest process, so the checks
run in a fresh Python subprocess that prints its relative errors as JSON.  The oracle is an
independent float64 loop over the four scan orders (reference-original.md section 1.4); it is
also checked against the package's torch reference `ssl_mamba.ops.ss2d_scan`.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

# Start of every check script: the interpreter on before triton is imported, and a workaround.
PRELUDE = textwrap.dedent('''
    import json, os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    import numpy as np
    import torch
    import triton.runtime.interpreter as interp

    # triton 3.6's interpreter turns a runtime loop bound into an int with int(array of shape (1,)),
    # which NumPy >= 2.5 refuses ("only 0-dimensional arrays can be converted"); later triton
    # squeezes first.  Give the interpreter's tensor the squeezing conversion on any version.
    _patch_tensor = getattr(interp, "_patch_lang_tensor", None)
    if _patch_tensor is not None:
        def _patch_lang_tensor(tensor, *args, **kwargs):
            _patch_tensor(tensor, *args, **kwargs)
            tensor.__index__ = lambda self: int(np.asarray(self.handle.data).reshape(-1)[0])
        interp._patch_lang_tensor = _patch_lang_tensor
''')

SCRIPT = PRELUDE + textwrap.dedent('''
    import torch.nn.functional as F
    from ssl_mamba.ops import ss2d_scan
    from ssl_mamba.ops.triton_ss2d import ss2d_scan_triton, set_block_config
    from ssl_mamba.errors import UserError

    def oracle(x, xpw, dtw, dtb, A_logs, Ds):
        b, h, w, d = x.shape
        n, r, L = A_logs.shape[1], dtw.shape[2], h * w
        idx = torch.arange(L).view(h, w)
        orders = [idx.reshape(-1), idx.t().reshape(-1)]
        orders += [o.flip(0) for o in orders]
        xf = x.reshape(b, L, d)
        A = -torch.exp(A_logs).view(4, d, n)
        y = torch.zeros(b, L, d, dtype=x.dtype)
        for k, order in enumerate(orders):
            u = xf[:, order]
            dbl = u @ xpw[k].t()
            Bm, Cm = dbl[..., r:r + n], dbl[..., r + n:]
            delta = F.softplus(dbl[..., :r] @ dtw[k].t() + dtb[k])
            st = torch.zeros(b, d, n, dtype=x.dtype)
            outs = []
            for t in range(L):
                st = torch.exp(delta[:, t, :, None] * A[k]) * st + (delta[:, t] * u[:, t])[:, :, None] * Bm[:, t, None, :]
                outs.append((st * Cm[:, t, None, :]).sum(-1) + Ds.view(4, d)[k] * u[:, t])
            y[:, order] += torch.stack(outs, 1)
        return y.view(b, h, w, d)

    def inputs(b, h, w, d, n, r, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(b, h, w, d, generator=g, dtype=torch.float64)
        xpw = (torch.rand(4, r + 2 * n, d, generator=g, dtype=torch.float64) * 2 - 1) / d ** 0.5
        dtw = (torch.rand(4, d, r, generator=g, dtype=torch.float64) * 2 - 1) / r ** 0.5
        dt = torch.exp(torch.rand(4, d, generator=g, dtype=torch.float64) * 4.6 - 6.9)
        dtb = dt + torch.log(-torch.expm1(-dt))
        A_logs = torch.log(torch.arange(1, n + 1, dtype=torch.float64)).repeat(4 * d, 1)
        A_logs = A_logs + 0.1 * torch.randn(4 * d, n, generator=g, dtype=torch.float64)
        Ds = 1 + 0.1 * torch.randn(4 * d, generator=g, dtype=torch.float64)
        gy = torch.randn(b, h, w, d, generator=g, dtype=torch.float64)
        return [x, xpw, dtw, dtb, A_logs, Ds], gy

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    NAMES = ["y", "x", "x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds"]

    def errors(fn, ins, gy, dtype):
        if dtype == torch.bfloat16:
            ins = [t.to(dtype).double() for t in ins]  # the oracle sees the same rounded values
        ref_in = [t.clone().requires_grad_() for t in ins]
        yref = oracle(*ref_in)
        grefs = torch.autograd.grad(yref, ref_in, gy)
        tin = [t.to(dtype).clone().requires_grad_() for t in ins]
        y = fn(*tin)
        assert y.dtype == dtype and y.shape == yref.shape
        gs = torch.autograd.grad(y, tin, gy.to(dtype))
        assert all(g.dtype == dtype for g in gs)
        return dict(zip(NAMES, [rel(y, yref)] + [rel(g, r) for g, r in zip(gs, grefs)]))

    assert not torch.cuda.is_available(), "the interpreter check must run on CPU tensors"
    out = {}
    # odd sizes: batch 1, H != W, L = 15 not a multiple of the chunk, D = 12 not a multiple of the
    # channel tile, N = 4; automatic segments (here one per chunk, the last one 3 steps long, so its
    # 4-step group has an invalid step)
    # (the backward on its own 4-channel blocks, its 48 work items taken by 5 persistent programs;
    # the next config runs one program per item)
    set_block_config(block_d=8, chunk=4, stages=2, atomic_merge=False, segments=0, vector_steps=4, bwd_block_d=4,
                     bwd_programs=5)
    ins, gy = inputs(1, 3, 5, 12, 4, 2, seed=1)
    out["fp32_odd"] = errors(ss2d_scan_triton, ins, gy, torch.float32)
    # same sizes, one channel block with masked lanes, one chunk longer than the sequence, no
    # pipelining, directions merged by atomics, 8-step groups (the last one partly past the end)
    set_block_config(block_d=16, chunk=16, stages=1, atomic_merge=True, vector_steps=8, bwd_block_d=0,
                     bwd_programs=0)
    out["fp32_odd_partials"] = errors(ss2d_scan_triton, ins, gy, torch.float32)
    out["torch_ref_odd"] = errors(lambda *a: ss2d_scan(*a, backend="torch"), ins, gy, torch.float32)
    # several chunks, d_state 16, batch 2, W > H, two channel blocks (one in the backward, 16 wide),
    # two segments of 3 and 2 chunks
    set_block_config(block_d=8, chunk=4, stages=3, segments=2, vector_steps=2, bwd_block_d=16, bwd_programs=3)
    ins, gy = inputs(2, 3, 6, 16, 16, 3, seed=2)
    out["fp32_chunks"] = errors(ss2d_scan_triton, ins, gy, torch.float32)
    out["bf16"] = errors(ss2d_scan_triton, ins, gy, torch.bfloat16)
    # narrow_buffers: bf16 per-direction buffers and d x_dbl partials under bf16 inputs, ignored in fp32
    import ssl_mamba.ops.triton_ss2d as T
    set_block_config(atomic_merge=False, narrow_buffers=False)  # fp32 per-direction buffers
    out["bf16_buffers"] = errors(ss2d_scan_triton, ins, gy, torch.bfloat16)
    set_block_config(narrow_buffers=True)
    out["bf16_narrow"] = errors(ss2d_scan_triton, ins, gy, torch.bfloat16)
    out["fp32_narrow_ignored"] = errors(ss2d_scan_triton, ins, gy, torch.float32)
    args = T.kernel_inputs(*[t.float() for t in ins])
    y4, hs = torch.ops.ssl_mamba.ss2d_scan_fwd(*args, T._config_ints())
    dx4, dpart, *_ = torch.ops.ssl_mamba.ss2d_scan_bwd(*args, hs, gy.float(), T._config_ints())
    out["narrow_dtypes"] = [str(t.dtype) for t in (y4, hs, dx4, dpart)]
    set_block_config(narrow_buffers=False, atomic_merge=True)
    # what the bf16 graph keeps for the backward: no fp32 copy of x or of the x_dbl projection
    saved = []
    xb = ins[0].bfloat16().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((str(t.dtype), t.numel())) or t,
                                                  lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        ss2d_scan_triton(xb, *[t.float().requires_grad_() for t in ins[1:]])
    out["bf16_saved"] = saved
    out["bf16_sizes"] = {"x": xb.numel(), "x_dbl": xb.numel() // xb.shape[-1] * 4 * ins[1].shape[1]}
    try:
        ss2d_scan_triton(*[t.float() for t in ins[:1]], ins[1][:, :, :-1].float(), *[t.float() for t in ins[2:]])
        out["bad_shape"] = "no error"
    except UserError as exc:
        out["bad_shape"] = str(exc)
    print("RESULT " + json.dumps(out))
''')


def run_check(script_text: str, folder) -> dict:
    """Run a check script in a fresh CPU-only Python (the interpreter must be on before triton is
    first imported) and return the JSON it prints after "RESULT "."""
    script = folder / "check.py"
    script.write_text(script_text)
    # CPU only, whatever the machine: hide GPUs from the subprocess, and give it the repository on
    # its path (pytest may have put the repository on sys.path only in this process).
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=path)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                          timeout=300)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and line, f"check script failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(line[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_check(SCRIPT, tmp_path_factory.mktemp("triton"))


@pytest.mark.parametrize("case", ["fp32_odd", "fp32_odd_partials", "fp32_chunks"])
def test_fp32_output_and_every_gradient_match_float64_oracle(results, case):
    errs = results[case]
    assert set(errs) == {"y", "x", "x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds"}
    bad = {k: v for k, v in errs.items() if not v <= 1e-5}
    assert not bad, f"{case}: relative errors above 1e-5: {bad}"


def test_bf16_output_and_every_gradient_within_1e2(results):
    bad = {k: v for k, v in results["bf16"].items() if not v <= 1e-2}
    assert not bad, f"bf16 relative errors above 1e-2: {bad}"


def test_narrow_buffers_stay_within_bf16_tolerance_and_leave_fp32_alone(results):
    """narrow_buffers writes y4 / dx4 / the d x_dbl partials in bf16 (halving that traffic) under bf16
    inputs only: the bf16 errors change but stay within 1e-2, fp32 stays at 1e-5."""
    assert results["narrow_dtypes"] == ["torch.bfloat16", "torch.float32", "torch.bfloat16", "torch.bfloat16"]
    assert max(results["bf16_narrow"].values()) <= 1e-2, results["bf16_narrow"]
    assert results["bf16_narrow"] != results["bf16_buffers"]  # the bf16 run did take the narrowed buffers
    assert max(results["fp32_narrow_ignored"].values()) <= 1e-5, results["fp32_narrow_ignored"]


def test_bf16_backward_keeps_no_fp32_copy_of_x_or_x_dbl(results):
    sizes = results["bf16_sizes"]
    saved = [tuple(entry) for entry in results["bf16_saved"]]
    for name, numel in sizes.items():
        assert ("torch.bfloat16", numel) in saved, (name, saved)  # the bf16 tensor itself is what is kept
        assert ("torch.float32", numel) not in saved, (name, saved)


def test_oracle_agrees_with_package_torch_reference(results):
    # The package's torch backend computes in fp32; it must match the same float64 oracle.
    bad = {k: v for k, v in results["torch_ref_odd"].items() if not v <= 1e-5}
    assert not bad, f"torch reference disagrees with the oracle: {bad}"


def test_bad_weight_shape_raises_clear_error(results):
    msg = results["bad_shape"]
    assert "x_proj_weight" in msg and "expected" in msg, msg


def test_cpu_tensor_without_interpreter_raises_user_error():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("interpreter enabled in this process")
    from ssl_mamba.errors import UserError
    from ssl_mamba.ops.triton_ss2d import ss2d_scan_triton
    d, n, r = 8, 4, 2
    args = (torch.randn(1, 2, 2, d), torch.randn(4, r + 2 * n, d), torch.randn(4, d, r),
            torch.randn(4, d), torch.randn(4 * d, n), torch.randn(4 * d))
    with pytest.raises(UserError, match="CUDA"):
        ss2d_scan_triton(*args)


MODEL_SCRIPT = PRELUDE + textwrap.dedent('''
    from ssl_mamba.models import create_model
    torch.manual_seed(0)
    ref = create_model("test_mamba_unet", num_classes=4, scan_backend="torch").eval()
    torch.manual_seed(0)
    fast = create_model("test_mamba_unet", num_classes=4, scan_backend="triton").eval()
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y_ref, y_fast = ref(x), fast(x)
    print("RESULT " + json.dumps({"rel": ((y_fast - y_ref).norm() / y_ref.norm()).item(),
                                  "shape": list(y_fast.shape)}))
''')


def test_mamba_unet_with_triton_scan_matches_torch_reference(tmp_path):
    """The whole (tiny) Mamba-UNet in eval mode, its SS2D blocks on the fused kernels (four stage
    sizes: 8x8 to 1x1 tokens, channels 16 to 128) against the same weights on the torch scan."""
    out = run_check(MODEL_SCRIPT, tmp_path)
    assert out["shape"] == [1, 4, 32, 32]
    assert out["rel"] <= 1e-5, out


@pytest.mark.parametrize("bad", [dict(block_d=12), dict(chunk=0), dict(stages=9), dict(segments=-1),
                                 dict(bwd_block_d=24), dict(bwd_maxnreg=300), dict(bwd_maxnreg=8),
                                 dict(bwd_programs=-2), dict(target_programs=0)])
def test_bad_block_config_is_refused_and_leaves_the_config_alone(bad):
    from ssl_mamba.errors import UserError
    from ssl_mamba.ops import triton_ss2d
    before = triton_ss2d.block_config()
    with pytest.raises(UserError, match=next(iter(bad))):
        triton_ss2d.set_block_config(**bad)
    assert triton_ss2d.block_config() == before


def test_backward_launch_plan_has_its_own_channel_blocks_and_register_cap():
    from ssl_mamba.ops import triton_ss2d
    old = triton_ss2d.set_block_config(block_d=32, bwd_block_d=16, bwd_maxnreg=128)
    try:
        plan = triton_ss2d._launch_plan(2, 8, 8, 96, 16, 6)
    finally:
        triton_ss2d.set_block_config(**old)
    assert plan["grid"][1] == 3 and plan["bwd_items"][1] == 6  # 96 channels in blocks of 32 / 16
    assert plan["tiles"]["BLOCK_D"] == 32 and plan["bwd_tiles"]["BLOCK_D"] == 16
    assert plan["bwd_options"] == {"num_warps": 1, "maxnreg": 128}


def test_persistent_backward_spreads_items_evenly_over_at_most_the_resident_programs():
    from ssl_mamba.ops import triton_ss2d
    programs = triton_ss2d._backward_programs
    # the first stage at batch 24: 96 (batch, direction) x 6 channel blocks x 7 segments, 1056
    # programs resident (132 SMs x 8, an H100/H200)
    assert programs(4032, torch.device("cuda"), 1056) == 1008  # 4 items each
    assert programs(500, torch.device("cuda"), 1056) == 500  # all resident at once
    assert programs(1057, torch.device("cuda"), 1056) == 529  # 2 items each (one has 1)
    assert programs(48, torch.device("cpu"), -1) == 48  # "resident" on a CPU: one per item


def test_automatic_segments_aim_at_the_target_program_count():
    from ssl_mamba.ops import triton_ss2d
    old = triton_ss2d.set_block_config(block_d=32, chunk=64, segments=0, target_programs=4096)
    try:
        # Mamba-UNet's first stage at batch 24: 96 (batch, direction) x 6 channel blocks = 576 programs
        assert triton_ss2d._launch_plan(24, 56, 56, 192, 16, 6)["n_seg"] == 7  # 4,032 programs
        triton_ss2d.set_block_config(target_programs=2048)
        assert triton_ss2d._launch_plan(24, 56, 56, 192, 16, 6)["n_seg"] == 4  # 2,304 programs
        assert triton_ss2d._launch_plan(24, 7, 7, 1536, 16, 48)["n_seg"] == 1  # 4,608 programs already
    finally:
        triton_ss2d.set_block_config(**old)
