"""Stochastic depth (DropPath): drop a whole residual branch per sample during training."""
import torch
from torch import nn


class DropPath(nn.Module):
    """Zero the branch for each sample with probability `drop_prob` and rescale the kept ones by
    1 / (1 - drop_prob), so the expected output is unchanged.  Identity in eval mode or at rate 0.

    Same semantics as timm's `DropPath(scale_by_keep=True)`, which the original networks use.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask_shape = (x.shape[0],) + (1,) * (x.dim() - 1)  # one draw per sample, broadcast over the rest
        mask = x.new_empty(mask_shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.4f}"
