"""LayerNorm that keeps autocast's low-precision dtype for norms that feed a projection.

Under autocast PyTorch runs `layer_norm` in fp32: a bf16 input is widened to an fp32 copy, the
fp32 output is saved for backward and then narrowed again by the next Linear.  For the norms
whose output goes straight into a projection (the VSS block's pre-norm, SS2D's output norm, patch
merging) that round trip costs a widening copy, a narrowing copy and twice the saved bytes, and
buys nothing: the projection rounds its input to bf16 anyway.  PyTorch's layer_norm accepts a
bf16 input with fp32 weight and bias and accumulates in fp32 internally, so these norms run it
on the bf16 tensor and return bf16.  Outside autocast this is exactly `nn.LayerNorm`; the
parameters and state-dict names are those of `nn.LayerNorm`.
"""
import torch
import torch.nn.functional as F
from torch import nn


class ProjectionLayerNorm(nn.LayerNorm):
    """nn.LayerNorm whose output is in autocast's dtype (bf16) when autocast is on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type
        if not torch.is_autocast_enabled(device_type):
            return super().forward(x)
        low = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            return F.layer_norm(x.to(low), self.normalized_shape, self.weight, self.bias, self.eps)
