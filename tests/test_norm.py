"""ProjectionLayerNorm: nn.LayerNorm outside autocast, bf16 out (fp32 statistics) inside it."""
import pytest
import torch
from torch import nn

from ssl_mamba.layers import ProjectionLayerNorm


def _pair(dim=48):
    torch.manual_seed(0)
    ref, ours = nn.LayerNorm(dim), ProjectionLayerNorm(dim)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.2, 0.2)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def test_same_parameters_and_state_dict_names():
    ref, ours = _pair()
    assert list(ours.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
    assert isinstance(ours, nn.LayerNorm)  # the global Linear/LayerNorm init applies to it


def test_without_autocast_identical_to_layernorm():
    ref, ours = _pair()
    x = torch.randn(2, 5, 7, 48)
    assert torch.equal(ours(x), ref(x))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_under_autocast_returns_bf16_close_to_fp32_with_fp32_grads(device):
    ref, ours = (m.to(device) for m in _pair())
    x = (torch.randn(2, 5, 7, 48, device=device) * 3 + 1).requires_grad_()
    gy = torch.randn(2, 5, 7, 48, device=device)
    y_ref = ref(x)
    g_ref = torch.autograd.grad(y_ref, [x, ref.weight, ref.bias], gy)
    with torch.autocast(device, dtype=torch.bfloat16):
        y = ours(x)
    assert y.dtype == torch.bfloat16
    g = torch.autograd.grad(y, [x, ours.weight, ours.bias], gy.bfloat16())
    assert ours.weight.dtype == torch.float32 and g[1].dtype == torch.float32
    assert (y.float() - y_ref).norm() / y_ref.norm() < 1e-2
    for a, b in zip(g, g_ref):
        assert (a.float() - b).norm() / b.norm() < 2e-2
