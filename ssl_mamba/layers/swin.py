"""Swin-Transformer block with (shifted) window attention, on channel-last tensors (B, H, W, C).

Names follow the original `swin_transformer_unet_skip_expand_decoder_sys.py` (`norm1`, `attn.qkv`,
`attn.relative_position_bias_table`, `mlp.fc1` ...) so Swin-Tiny ImageNet checkpoints load.
"""
from typing import Optional, Tuple

import torch
from torch import nn

from .drop_path import DropPath
from .norm import ProjectionLayerNorm

MASK_VALUE = -100.0  # additive attention mask between tokens from different shifted regions


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/ws * W/ws, ws*ws, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // ws, ws, w // ws, ws, c)  # (B, nh, ws, nw, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B * nW, ws*ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // ws, w // ws, ws, ws, c)  # (B, nh, nw, ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(ws: int) -> torch.Tensor:
    """(ws*ws, ws*ws) index into the (2ws-1)^2 bias table for every (query, key) token pair."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)  # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)  # (N, N, 2), >= 0
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def shifted_window_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """(nW, N, N) additive mask: 0 inside one region of the cyclically shifted map, -100 across regions."""
    region = torch.zeros(1, h, w, 1)
    bands = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    label = 0
    for hs in bands:
        for wsl in bands:
            region[:, hs, wsl, :] = label
            label += 1
    ids = window_partition(region, ws).squeeze(-1)  # (nW, N)
    diff = ids[:, None, :] - ids[:, :, None]  # (nW, N, N)
    return torch.zeros_like(diff).masked_fill(diff != 0, MASK_VALUE)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws x ws windows with a learned relative-position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B*nW, heads, N, head_dim)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B*nW, heads, N, N)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn = attn + bias.reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)  # (1, heads, N, N)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.reshape(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None].to(attn.dtype)
            attn = attn.reshape(bw, self.num_heads, n, n)
        out = attn.softmax(dim=-1) @ v  # (B*nW, heads, N, head_dim)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (dropout rate 0 in the originals, so none here)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """Swin block for a fixed token grid `resolution`: x + DP(W-MSA(LN(x))), then x + DP(MLP(LN(x))).

    As in the original, when the grid is no larger than the window the window shrinks to the
    grid and the shift is dropped.  The shifted-window mask is a buffer (`attn_mask`).
    """

    compile_unit = True  # train.compile / eval.compile (models/compile.py)

    def __init__(self, dim: int, resolution: Tuple[int, int], num_heads: int, window_size: int = 7,
                 shift: bool = False, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.resolution = tuple(resolution)
        self.window_size = window_size
        self.shift_size = window_size // 2 if shift else 0
        if min(self.resolution) <= window_size:
            self.window_size = min(self.resolution)
            self.shift_size = 0
        h, w = self.resolution
        if h % self.window_size or w % self.window_size:
            raise ValueError(f"token grid {h}x{w} is not divisible by the window size {self.window_size}")
        self.norm1 = ProjectionLayerNorm(dim)  # feeds qkv
        self.attn = WindowAttention(dim, self.window_size, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = ProjectionLayerNorm(dim)  # feeds the MLP
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = shifted_window_mask(h, w, self.window_size, self.shift_size) if self.shift_size else None
        self.register_buffer("attn_mask", mask)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape
        s, ws = self.shift_size, self.window_size
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        out = window_reverse(self.attn(window_partition(x, ws), self.attn_mask), ws, h, w)
        if s:
            out = torch.roll(out, shifts=(s, s), dims=(1, 2))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:3]) != self.resolution:
            raise ValueError(f"SwinBlock built for a {self.resolution} token grid got {tuple(x.shape[1:3])}")
        x = x + self.drop_path(self._attend(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))
