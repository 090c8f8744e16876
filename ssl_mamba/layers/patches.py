"""Patch embedding, merging (down) and expanding (up) on channel-last tensors (B, H, W, C).

These are shared by the Mamba-UNet and the Swin-UNet: both originals use the same layouts and
the same state-dict names (`proj`, `norm`, `reduction`, `expand`).
"""
import torch
from torch import nn

from .norm import ProjectionLayerNorm


class PatchEmbed(nn.Module):
    """Non-overlapping patch_size x patch_size conv, then LayerNorm: (B, Cin, H, W) -> (B, H/p, W/p, C)."""
    compile_unit = True  # train.compile / eval.compile (models/compile.py)

    def __init__(self, in_chans: int, dim: int, patch_size: int = 4):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # (B, C, h, w) -> (B, h, w, C)


class PatchMerging(nn.Module):
    """2x2 space-to-depth then LayerNorm(4C) and Linear(4C -> 2C, no bias).

    The four sub-grids are concatenated in the original order: (even row, even col),
    (odd row, even col), (even row, odd col), (odd row, odd col).
    """
    compile_unit = True  # train.compile / eval.compile (models/compile.py)

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = ProjectionLayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"PatchMerging needs an even token grid, got {h}x{w}")
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))  # (B, H/2, W/2, 4C) -> (B, H/2, W/2, 2C)


def pixel_shuffle_last(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Depth-to-space on channel-last tensors with channels laid out (p1, p2, c), c fastest:
    out[b, s*h + p1, s*w + p2, c] = x[b, h, w, (p1*s + p2)*C' + c]."""
    b, h, w, ch = x.shape
    c = ch // (scale * scale)
    x = x.reshape(b, h, w, scale, scale, c)  # (B, h, w, p1, p2, c)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (B, h, p1, w, p2, c)
    return x.reshape(b, h * scale, w * scale, c)


class PatchExpand(nn.Module):
    """Linear(C -> 2C, no bias), 2x2 depth-to-space to C/2 channels, LayerNorm(C/2)."""
    compile_unit = True  # train.compile / eval.compile (models/compile.py)

    def __init__(self, dim: int):
        super().__init__()
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = ProjectionLayerNorm(dim // 2)  # feeds the decoder's concat + Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_shuffle_last(self.expand(x), 2))


class FinalPatchExpand(nn.Module):
    """Linear(C -> s*s*C, no bias), s x s depth-to-space back to C channels, LayerNorm(C).

    With s = 4 this is the originals' `FinalPatchExpand_X4`, undoing the 4x4 patch embedding.
    """
    compile_unit = True  # train.compile / eval.compile (models/compile.py)

    def __init__(self, dim: int, scale: int = 4):
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * dim, bias=False)
        self.norm = ProjectionLayerNorm(dim)  # feeds the 1x1 output conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_shuffle_last(self.expand(x), self.scale))
