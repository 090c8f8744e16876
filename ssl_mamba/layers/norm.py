"""LayerNorm that keeps autocast's low-precision dtype for norms that feed a projection.

Under autocast PyTorch runs `layer_norm` in fp32: a bf16 input is widened to an fp32 copy, the
fp32 output is saved for backward and then narrowed again by the next Linear.  For the norms
whose output goes straight into a projection (the VSS block's pre-norm, SS2D's output norm, patch
merging and expanding, the Swin block's two norms, the U-shape's bottleneck and final norms; not
the patch embedding's, whose output starts the encoder's residual stream) that round trip costs a
widening copy, a narrowing copy and twice the saved bytes, and buys nothing: the projection
rounds its input to bf16 anyway.  These norms run layer_norm on the
bf16 tensor with bf16 copies of weight and bias (as autocast does for a Linear's weight; the
kernel still accumulates the statistics in fp32; CUDA torch 2.11 rejects a bf16 input with fp32
weights) and return bf16.  Outside autocast this is exactly `nn.LayerNorm`; the parameters stay
fp32 and the state-dict names are those of `nn.LayerNorm`.
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
            weight = None if self.weight is None else self.weight.to(low)
            bias = None if self.bias is None else self.bias.to(low)
            return F.layer_norm(x.to(low), self.normalized_shape, weight, bias, self.eps)
