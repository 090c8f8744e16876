"""The U-shaped token network shared by Mamba-UNet (VSS blocks) and Swin-UNet (Swin blocks).

Layout (state-dict names of the originals): `patch_embed`, `layers.i` (blocks + `downsample`),
`norm`, `layers_up.0` (a bare PatchExpand), `layers_up.i` (blocks + `upsample`),
`concat_back_dim.i` (Identity at 0), `norm_up`, `up` (final x4 expand), `output` (1x1, no bias).
Skip i is the *input* of encoder stage i; the decoder concatenates [decoder, skip].
All tensors between the embedding and the head are channel-last (B, H, W, C).
"""
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..layers import FinalPatchExpand, PatchEmbed, PatchExpand, PatchMerging, ProjectionLayerNorm, init_linear_and_norm

# block_factory(stage, dim, drop_path, block_index) -> module mapping (B, H, W, C) to itself.
BlockFactory = Callable[[int, int, float, int], nn.Module]


class Stage(nn.Module):
    """A run of blocks followed by an optional down- or up-sampling layer."""

    def __init__(self, blocks: List[nn.Module], downsample: Optional[nn.Module] = None,
                 upsample: Optional[nn.Module] = None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        if downsample is not None:
            self.downsample = downsample
        if upsample is not None:
            self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


def drop_path_rates(depths: Sequence[int], max_rate: float) -> List[List[float]]:
    """Per-stage stochastic-depth rates: linspace(0, max_rate, sum(depths)) split by stage."""
    rates = torch.linspace(0, max_rate, sum(depths)).tolist()
    out, start = [], 0
    for d in depths:
        out.append(rates[start:start + d])
        start += d
    return out


def check_dims(dims: Sequence[int], depths: Sequence[int]) -> None:
    """Stages must double in width (PatchMerging C -> 2C, PatchExpand C -> C/2)."""
    if len(dims) != len(depths) or len(dims) < 2:
        raise ValueError(f"dims {list(dims)} and depths {list(depths)} must have the same length >= 2")
    for a, b in zip(dims, dims[1:]):
        if b != 2 * a:
            raise ValueError(f"dims must double from stage to stage, got {list(dims)}")


class UShapedNet(nn.Module):
    """Patch embedding, len(dims) encoder stages, a mirrored decoder and a 1x1 head.

    `block_factory(stage, dim, drop_path, index)` builds one block of encoder stage `stage`;
    decoder stage i (i >= 1) reuses the arguments of encoder stage (n-1-i), including its
    drop-path rates, as both originals do.
    """

    def __init__(self, block_factory: BlockFactory, in_chans: int, num_classes: int, dims: Sequence[int],
                 depths: Sequence[int], patch_size: int = 4, drop_path_rate: float = 0.2):
        super().__init__()
        check_dims(dims, depths)
        n = len(dims)
        self.num_stages = n
        self.patch_size = patch_size
        rates = drop_path_rates(depths, drop_path_rate)
        self.patch_embed = PatchEmbed(in_chans, dims[0], patch_size)
        self.layers = nn.ModuleList(
            Stage([block_factory(i, dims[i], rates[i][j], j) for j in range(depths[i])],
                  downsample=PatchMerging(dims[i]) if i < n - 1 else None)
            for i in range(n))
        self.layers_up = nn.ModuleList([PatchExpand(dims[-1])])
        self.concat_back_dim = nn.ModuleList([nn.Identity()])
        for i in range(1, n):
            s = n - 1 - i  # mirrored encoder stage
            self.layers_up.append(Stage([block_factory(s, dims[s], rates[s][j], j) for j in range(depths[s])],
                                        upsample=PatchExpand(dims[s]) if i < n - 1 else None))
            self.concat_back_dim.append(nn.Linear(2 * dims[s], dims[s]))
        self.norm = ProjectionLayerNorm(dims[-1])  # feeds layers_up[0]'s expand Linear
        self.norm_up = ProjectionLayerNorm(dims[0])  # feeds the final expand Linear
        self.up = FinalPatchExpand(dims[0], patch_size)
        self.output = nn.Conv2d(dims[0], num_classes, kernel_size=1, bias=False)
        self.apply(init_linear_and_norm)

    def forward_encoder(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """(B, Cin, H, W) -> bottleneck (B, H/(p 2^(n-1)), ., C_last) and the skips (inputs of each stage)."""
        x = self.patch_embed(x)
        skips = []
        for layer in self.layers:
            skips.append(x)
            x = layer(x)
        return self.norm(x), skips

    def forward_decoder(self, x: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
        """Bottleneck + skips -> channel-last features at patch resolution (B, H/p, W/p, C0)."""
        for i, layer_up in enumerate(self.layers_up):
            if i > 0:
                x = self.concat_back_dim[i](torch.cat([x, skips[self.num_stages - 1 - i]], dim=-1))
            x = layer_up(x)
        return self.norm_up(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.forward_encoder(x)
        x = self.up(self.forward_decoder(x, skips))  # (B, H, W, C0)
        return self.output(x.permute(0, 3, 1, 2))  # (B, K, H, W)
