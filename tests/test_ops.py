"""Selective-scan and SS2D ops (ssl_mamba/ops) against the sequential oracle and explicit index loops."""
import logging
from typing import Dict, Optional, Tuple

import pytest
import torch
import torch.nn.functional as F

from ssl_mamba.errors import UserError
from ssl_mamba.ops import (
    KNOWN_BACKENDS, available_backends, cross_merge, cross_scan, resolve_backend, selective_scan, ss2d_scan)
from ssl_mamba.ops import dispatch
from ssl_mamba.ops.mamba_ssm_backend import mamba_ssm_available
from ssl_mamba.ops.selective_scan_oracle import selective_scan_oracle
from ssl_mamba.ops.selective_scan_ref import selective_scan_torch

SCAN_BACKENDS = available_backends("selective_scan")
SS2D_BACKENDS = available_backends("ss2d")
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
PIP_CMD = "pip install --no-build-isolation --no-cache-dir mamba-ssm"


def device_for(backend: str) -> torch.device:
    """Optional backends run on the GPU when there is one (triton on the CPU needs TRITON_INTERPRET=1)."""
    return torch.device("cuda" if backend != "torch" and torch.cuda.is_available() else "cpu")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise relative error of a against the reference b (both taken in float64)."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(b: int, d: int, l: int, n: int, groups: Optional[int], seed: int = 0,
                delta_scale: float = 1.0) -> Dict[str, torch.Tensor]:
    """Float64 scan inputs; B, C are (b, n, l) when groups is None, else (b, groups, n, l)."""
    g = torch.Generator().manual_seed(seed)
    bc_shape = (b, n, l) if groups is None else (b, groups, n, l)
    rnd = (lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64))
    return {
        "u": rnd(b, d, l), "delta": rnd(b, d, l) * delta_scale,
        "A": -torch.rand(d, n, generator=g, dtype=torch.float64) * 3 - 0.1,
        "B": rnd(*bc_shape), "C": rnd(*bc_shape), "D": rnd(d), "z": rnd(b, d, l), "delta_bias": rnd(d) * 0.5,
    }


def run_scan(fn, inputs: Dict[str, torch.Tensor], dtypes: Dict[str, torch.dtype],
             return_last_state: bool = True, device: str = "cpu",
             **kwargs) -> Tuple[torch.Tensor, Optional[torch.Tensor], dict]:
    """Run fn on leaf copies of the inputs cast to dtypes; return y, last state and all gradients."""
    leaves = {k: v.to(device, dtypes.get(k, v.dtype)).clone().requires_grad_(True) for k, v in inputs.items()}
    out = fn(**leaves, delta_softplus=True, return_last_state=return_last_state, **kwargs)
    y, last = out if return_last_state else (out, None)
    g = torch.Generator().manual_seed(123)
    loss = (y.double().cpu() * torch.randn(y.shape, generator=g, dtype=torch.float64)).sum()
    if last is not None:
        loss = loss + (last.double().cpu() * torch.randn(last.shape, generator=g, dtype=torch.float64)).sum()
    loss.backward()
    return y.cpu(), None if last is None else last.cpu(), {k: v.grad.cpu() for k, v in leaves.items()}


def oracle_on(inputs: Dict[str, torch.Tensor], dtypes: Dict[str, torch.dtype]):
    """The oracle in float64 on exactly the values the backend sees (rounded to its dtypes)."""
    rounded = {k: v.to(dtypes.get(k, v.dtype)).double() for k, v in inputs.items()}
    return run_scan(selective_scan_oracle, rounded, {})


def assert_close_to_oracle(inputs, dtypes, tol: float, fn, device: torch.device = torch.device("cpu")) -> None:
    y, last, grads = run_scan(fn, inputs, dtypes, device=device)
    y_ref, last_ref, grads_ref = oracle_on(inputs, dtypes)
    assert y.dtype == dtypes.get("u", torch.float64)
    assert rel_err(y, y_ref) <= tol, f"y rel err {rel_err(y, y_ref):.2e}"
    assert rel_err(last, last_ref) <= tol, f"last state rel err {rel_err(last, last_ref):.2e}"
    for name in GRAD_NAMES:
        err = rel_err(grads[name], grads_ref[name])
        assert err <= tol, f"grad {name}: rel err {err:.2e} > {tol}"


SHAPES = [  # (b, d, l, n, groups): odd lengths that are not a multiple of the chunk, batch 1, groups
    (1, 4, 37, 3, None),
    (2, 6, 131, 4, 3),
    (1, 4, 64, 5, 1),
]
PRECISIONS = {
    "float64": ({k: torch.float64 for k in GRAD_NAMES}, 1e-10),
    "float32": ({k: torch.float32 for k in GRAD_NAMES}, 1e-5),
    "bfloat16": ({"u": torch.bfloat16, "delta": torch.bfloat16, "B": torch.bfloat16, "C": torch.bfloat16,
                  "z": torch.bfloat16, "A": torch.float32, "D": torch.float32, "delta_bias": torch.float32}, 1e-2),
}


@pytest.mark.parametrize("backend", SCAN_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}d{}l{}n{}g{}".format(*s))
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_selective_scan_matches_oracle(backend, shape, precision):
    dtypes, tol = PRECISIONS[precision]
    if backend != "torch" and precision == "float64":
        pytest.skip(f"the {backend} kernels compute in float32")
    inputs = make_inputs(*shape, seed=sum(shape[:4]))
    assert_close_to_oracle(inputs, dtypes, tol, lambda **kw: selective_scan(**kw, backend=backend),
                           device_for(backend))


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 200])
def test_torch_backend_any_chunk_size_matches_oracle(chunk_size):
    """Many chunks (carry across chunk borders), a ragged last chunk, and one chunk longer than L."""
    inputs = make_inputs(2, 4, 43, 3, 2, seed=chunk_size)
    assert_close_to_oracle(inputs, {}, 1e-10, lambda **kw: selective_scan_torch(**kw, chunk_size=chunk_size))


def test_torch_backend_without_optional_terms():
    """No D, z or delta_bias, no softplus, y only: still the oracle's numbers."""
    inputs = make_inputs(1, 3, 70, 2, None, seed=7)
    args = {k: inputs[k] for k in ("u", "A", "B", "C")}
    args["delta"] = F.softplus(inputs["delta"])
    y = selective_scan(**args, backend="torch")
    assert rel_err(y, selective_scan_oracle(**args)) <= 1e-12


def test_strong_decay_stays_finite_and_exact():
    """delta*A down to about -1000 per step: a formulation that exponentiates positive cumulative
    sums would overflow to inf/nan here; the chunked scan must stay finite and exact."""
    inputs = make_inputs(1, 4, 150, 4, None, seed=3, delta_scale=40.0)
    inputs["A"] = inputs["A"] * 8
    dtypes = {k: torch.float32 for k in GRAD_NAMES}
    y, last, grads = run_scan(lambda **kw: selective_scan(**kw, backend="torch"), inputs, dtypes)
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads.values())
    y_ref, _, grads_ref = oracle_on(inputs, dtypes)
    assert rel_err(y, y_ref) <= 1e-5
    assert rel_err(grads["A"], grads_ref["A"]) <= 1e-5


def test_bad_scan_shapes_name_the_argument():
    inputs = make_inputs(1, 4, 10, 3, None)
    inputs["C"] = inputs["C"][..., :9]
    with pytest.raises(ValueError, match=r"\bC must be"):
        selective_scan(**inputs, backend="torch")
    inputs = make_inputs(1, 4, 10, 3, 3)  # 3 groups do not divide d=4
    with pytest.raises(ValueError, match=r"\bB must be"):
        selective_scan(**inputs, backend="torch")


# ----------------------------------------------------------------------------- cross-scan / merge
def direction_order(h: int, w: int, k: int) -> list:
    """Row-major (row, col) positions visited by direction k, built with explicit loops."""
    row_major = [(i, j) for i in range(h) for j in range(w)]
    col_major = [(i, j) for j in range(w) for i in range(h)]
    order = row_major if k % 2 == 0 else col_major
    return order[::-1] if k >= 2 else order


def test_cross_scan_orders_on_non_square_grid():
    h, w = 3, 5
    x = torch.arange(2 * 2 * h * w, dtype=torch.float32).view(2, 2, h, w)
    xs = cross_scan(x)
    assert xs.shape == (2, 4, 2, h * w)
    for k in range(4):
        for t, (i, j) in enumerate(direction_order(h, w, k)):
            assert torch.equal(xs[:, k, :, t], x[:, :, i, j]), f"direction {k} position {t}"


def test_cross_merge_inverts_each_direction_and_sums():
    h, w = 4, 3
    g = torch.Generator().manual_seed(0)
    ys = torch.randn(2, 4, 3, h * w, generator=g)
    expected = torch.zeros(2, 3, h, w)
    for k in range(4):
        for t, (i, j) in enumerate(direction_order(h, w, k)):
            expected[:, :, i, j] += ys[:, k, :, t]
    merged = cross_merge(ys, h, w)
    assert merged.shape == (2, 3, h * w)
    assert torch.allclose(merged, expected.view(2, 3, h * w), atol=1e-6)


# ----------------------------------------------------------------------------------------- ss2d
def ss2d_direct(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds) -> torch.Tensor:
    """SS2D core written per direction: explicit sequence building, per-direction oracle scan."""
    b, h, w, d = x.shape
    n, r = A_logs.shape[1], dt_projs_weight.shape[2]
    y = torch.zeros(b, h, w, d, dtype=torch.float64)
    for k in range(4):
        order = direction_order(h, w, k)
        seq = torch.stack([x[:, i, j, :] for i, j in order], dim=-1)  # (b, d, L)
        proj = torch.einsum("cd,bdl->bcl", x_proj_weight[k], seq)  # (b, R+2N, L)
        dt = torch.einsum("dr,brl->bdl", dt_projs_weight[k], proj[:, :r])
        out = selective_scan_oracle(seq, dt, -torch.exp(A_logs[k * d:(k + 1) * d]), proj[:, r:r + n],
                                    proj[:, r + n:], Ds[k * d:(k + 1) * d], delta_bias=dt_projs_bias[k],
                                    delta_softplus=True)
        for t, (i, j) in enumerate(order):
            y[:, i, j, :] += out[:, :, t]
    return y


def ss2d_params(d: int, n: int, r: int, seed: int = 0) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x_proj_weight": torch.randn(4, r + 2 * n, d, generator=g, dtype=torch.float64) * 0.5,
        "dt_projs_weight": torch.randn(4, d, r, generator=g, dtype=torch.float64) * 0.5,
        "dt_projs_bias": torch.randn(4, d, generator=g, dtype=torch.float64) * 0.5 - 1,
        "A_logs": torch.log(torch.arange(1, n + 1, dtype=torch.float64)).repeat(4 * d, 1),
        "Ds": torch.ones(4 * d, dtype=torch.float64),
    }


@pytest.mark.parametrize("backend", SS2D_BACKENDS)
def test_ss2d_scan_matches_direct_per_direction(backend):
    b, h, w, d, n, r = 2, 3, 5, 6, 4, 2
    params = ss2d_params(d, n, r)
    x = torch.randn(b, h, w, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gy = torch.randn(b, h, w, d, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref_leaves = {k: v.clone().requires_grad_(True) for k, v in {"x": x, **params}.items()}
    (ss2d_direct(**ref_leaves) * gy).sum().backward()
    dtype = torch.float64 if backend == "torch" else torch.float32
    tol = 1e-10 if backend == "torch" else 1e-5
    device = device_for(backend)
    leaves = {k: v.to(device, dtype).clone().requires_grad_(True) for k, v in {"x": x, **params}.items()}
    y = ss2d_scan(**leaves, backend=backend)
    assert y.shape == (b, h, w, d) and y.dtype == dtype
    assert rel_err(y.cpu(), ss2d_direct(x, **params)) <= tol
    (y.double().cpu() * gy).sum().backward()
    for name, leaf in leaves.items():
        assert rel_err(leaf.grad.cpu(), ref_leaves[name].grad) <= tol, f"grad {name}"


def test_ss2d_scan_float32_and_bfloat16_dtypes():
    b, h, w, d, n, r = 1, 4, 4, 4, 3, 1
    params = {k: v.float() for k, v in ss2d_params(d, n, r, seed=4).items()}
    x = torch.randn(b, h, w, d, generator=torch.Generator().manual_seed(5))
    y32 = ss2d_scan(x, **params, backend="torch")
    assert y32.dtype == torch.float32
    assert rel_err(y32, ss2d_direct(x.double(), **{k: v.double() for k, v in params.items()})) <= 1e-5
    y16 = ss2d_scan(x.bfloat16(), **{k: v.bfloat16() for k, v in params.items()}, backend="torch")
    assert y16.dtype == torch.bfloat16
    assert rel_err(y16, y32) <= 3e-2


def test_ss2d_bad_parameter_shape_is_named():
    params = ss2d_params(4, 3, 1)
    params["dt_projs_bias"] = params["dt_projs_bias"][:, :3]
    with pytest.raises(ValueError, match="dt_projs_bias"):
        ss2d_scan(torch.zeros(1, 2, 2, 4, dtype=torch.float64), **params, backend="torch")


# ------------------------------------------------------------------------------------- dispatch
@pytest.mark.skipif(mamba_ssm_available(), reason="mamba-ssm's CUDA kernel is installed here")
def test_missing_mamba_ssm_backend_explains_install():
    inputs = make_inputs(1, 4, 8, 2, None)
    with pytest.raises(UserError, match=PIP_CMD.replace("-", r"\-")) as info:
        selective_scan(**inputs, backend="mamba_ssm")
    assert "CUDA build of torch" in str(info.value)
    with pytest.raises(UserError, match="mamba-ssm"):
        ss2d_scan(torch.zeros(1, 2, 2, 4, dtype=torch.float64), **ss2d_params(4, 3, 1), backend="mamba_ssm")


def test_unknown_backend_lists_known_ones():
    with pytest.raises(UserError) as info:
        resolve_backend("cuda_fast", "cpu")
    message = str(info.value)
    assert "'cuda_fast'" in message and all(name in message for name in KNOWN_BACKENDS)
    with pytest.raises(UserError, match="cuda_fast"):
        ss2d_scan(torch.zeros(1, 2, 2, 4, dtype=torch.float64), **ss2d_params(4, 3, 1), backend="cuda_fast")


def test_auto_on_cpu_is_torch_and_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(dispatch, "_LOGGED", set())
    with caplog.at_level(logging.INFO, logger="ssl_mamba"):
        assert resolve_backend("auto", torch.device("cpu")) == "torch"
        assert resolve_backend("auto", "cpu") == "torch"
    choices = [r.getMessage() for r in caplog.records if "scan backend auto" in r.getMessage()]
    assert choices == ["scan backend auto -> torch for ss2d on cpu"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only listing")
def test_cpu_backends_and_triton_needs_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert available_backends() == ["torch"]
    with pytest.raises(UserError, match="triton"):
        resolve_backend("triton", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    module, _ = dispatch._import_triton_module()
    expected = ["torch", "triton"] if module is not None else ["torch"]
    assert available_backends() == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_auto_choice_and_torch_backend_on_gpu():
    ss2d_choice = resolve_backend("auto", "cuda")
    if dispatch._triton_status("cuda", "ss2d")[0]:
        assert ss2d_choice == "triton"
    elif mamba_ssm_available():
        assert ss2d_choice == "mamba_ssm"
    inputs = make_inputs(2, 6, 131, 4, 3, seed=11)
    dtypes = {k: torch.float32 for k in GRAD_NAMES}
    assert_close_to_oracle(inputs, dtypes, 1e-5, lambda **kw: selective_scan(**kw, backend="torch"),
                           torch.device("cuda"))
