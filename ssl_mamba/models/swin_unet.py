"""Swin-UNet: the Swin-Transformer U-Net used by SSL4MIS / Mamba-UNet (swin_tiny_patch4_window7_224)."""
from typing import Sequence

import torch

from ..layers import SwinBlock
from .base import Segmenter
from .registry import register_model
from .ushape import UShapedNet


class SwinUNet(Segmenter):
    """Wrapper with the net as attribute `swin_unet`; 1-channel input is repeated to 3 channels.

    Window masks are built for one token grid, so the input must be exactly img_size x img_size.
    """

    def __init__(self, in_chans: int = 1, num_classes: int = 4, img_size: int = 224, embed_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 7, patch_size: int = 4, mlp_ratio: float = 4.0, drop_path_rate: float = 0.2):
        super().__init__()
        if len(num_heads) != len(depths):
            raise ValueError(f"num_heads {list(num_heads)} must have one entry per stage of depths {list(depths)}")
        if img_size % (patch_size * 2 ** (len(depths) - 1)):
            raise ValueError(f"img_size {img_size} must be divisible by {patch_size * 2 ** (len(depths) - 1)}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.net_in_chans = 3 if in_chans == 1 else in_chans
        self.fixed_input_size = img_size
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        grid = img_size // patch_size

        def make_block(stage: int, dim: int, drop_path: float, index: int) -> SwinBlock:
            res = grid // 2 ** stage
            return SwinBlock(dim, (res, res), num_heads[stage], window_size, shift=index % 2 == 1,
                             mlp_ratio=mlp_ratio, drop_path=drop_path)

        self.swin_unet = UShapedNet(make_block, self.net_in_chans, num_classes, dims, depths, patch_size,
                                    drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.swin_unet(self.stem_input(x))


@register_model("swin_unet")
def swin_unet(in_chans: int = 1, num_classes: int = 4, img_size: int = 224,
              drop_path_rate: float = 0.2) -> SwinUNet:
    """The original Swin-Tiny configuration: embed 96, depths [2,2,2,2], heads [3,6,12,24], window 7."""
    return SwinUNet(in_chans, num_classes, img_size=img_size, drop_path_rate=drop_path_rate)


@register_model("test_swin_unet")
def test_swin_unet(in_chans: int = 1, num_classes: int = 4, img_size: int = 64,
                   drop_path_rate: float = 0.1) -> SwinUNet:
    """Tiny variant: 64x64 input, embed 8, heads [1,2,2,4], window 4 (16x16 tokens at stage 0)."""
    return SwinUNet(in_chans, num_classes, img_size=img_size, embed_dim=8, num_heads=(1, 2, 2, 4),
                    window_size=4, drop_path_rate=drop_path_rate)
