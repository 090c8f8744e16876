"""The 2-D UNet of SSL4MIS (`networks/unet.py`): bilinear-upsampling decoder, BN + LeakyReLU blocks.

Module names match SSL4MIS (`encoder.in_conv.conv_conv.0.weight`, `decoder.up1.conv1x1.weight`, ...)
so its checkpoints load strictly.  PyTorch default initialisation, as in the original.
"""
from typing import List, Sequence

import torch
from torch import nn

from .base import InputSizeError, Segmenter
from .registry import register_model


class ConvBlock(nn.Module):
    """Conv3x3-BN-LeakyReLU-Dropout-Conv3x3-BN-LeakyReLU (the SSL4MIS `ConvBlock`)."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float):
        super().__init__()
        self.conv_conv = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1), nn.BatchNorm2d(out_ch), nn.LeakyReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1), nn.BatchNorm2d(out_ch), nn.LeakyReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_conv(x)


class DownBlock(nn.Module):
    """MaxPool2d(2) then ConvBlock."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), ConvBlock(in_ch, out_ch, dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class UpBlock(nn.Module):
    """1x1 conv (deep -> skip channels), bilinear x2 (align_corners), concat [skip, up], ConvBlock.

    This is the path SSL4MIS actually builds (its `bilinear=False` option is never passed on).
    """

    def __init__(self, deep_ch: int, skip_ch: int, out_ch: int, dropout: float = 0.0):
        super().__init__()
        self.conv1x1 = nn.Conv2d(deep_ch, skip_ch, kernel_size=1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = ConvBlock(2 * skip_ch, out_ch, dropout)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(self.conv1x1(deep))], dim=1))


class Encoder(nn.Module):
    """in_conv + four down blocks; returns the five feature maps, finest first."""

    def __init__(self, in_chans: int, features: Sequence[int], dropout: Sequence[float]):
        super().__init__()
        self.in_conv = ConvBlock(in_chans, features[0], dropout[0])
        self.down1 = DownBlock(features[0], features[1], dropout[1])
        self.down2 = DownBlock(features[1], features[2], dropout[2])
        self.down3 = DownBlock(features[2], features[3], dropout[3])
        self.down4 = DownBlock(features[3], features[4], dropout[4])

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x0 = self.in_conv(x)
        x1 = self.down1(x0)
        x2 = self.down2(x1)
        x3 = self.down3(x2)
        return [x0, x1, x2, x3, self.down4(x3)]


class Decoder(nn.Module):
    """Four up blocks (dropout 0) and a 3x3 output conv (with bias, no activation)."""

    def __init__(self, features: Sequence[int], num_classes: int):
        super().__init__()
        self.up1 = UpBlock(features[4], features[3], features[3])
        self.up2 = UpBlock(features[3], features[2], features[2])
        self.up3 = UpBlock(features[2], features[1], features[1])
        self.up4 = UpBlock(features[1], features[0], features[0])
        self.out_conv = nn.Conv2d(features[0], num_classes, kernel_size=3, padding=1)

    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        x0, x1, x2, x3, x4 = feats
        x = self.up4(self.up3(self.up2(self.up1(x4, x3), x2), x1), x0)
        return self.out_conv(x)


class UNet(Segmenter):
    """SSL4MIS UNet: (N, in_chans, H, W) -> (N, K, H, W) logits; H and W divisible by 16."""

    input_multiple = 16

    def __init__(self, in_chans: int = 1, num_classes: int = 4, features: Sequence[int] = (16, 32, 64, 128, 256),
                 dropout: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5)):
        super().__init__()
        if len(features) != 5 or len(dropout) != 5:
            raise ValueError(f"UNet needs 5 feature widths and 5 dropout rates, got {list(features)} / {list(dropout)}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.encoder = Encoder(in_chans, features, dropout)
        self.decoder = Decoder(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if x.shape[1] != self.in_chans:
            raise InputSizeError(f"UNet expects {self.in_chans} input channel(s), got {x.shape[1]}")
        return self.decoder(self.encoder(x))


@register_model("unet")
def unet(in_chans: int = 1, num_classes: int = 4) -> UNet:
    """The SSL4MIS `net_factory("unet")` network: features 16..256, dropout 0.05..0.5."""
    return UNet(in_chans, num_classes)


@register_model("test_unet")
def test_unet(in_chans: int = 1, num_classes: int = 4) -> UNet:
    """Tiny variant for tests: features 4..64."""
    return UNet(in_chans, num_classes, features=(4, 8, 16, 32, 64))
