"""Mamba-UNet (arXiv 2402.05079): a U-shaped network of VSS (SS2D) blocks, as in `mamba_sys.py`."""
from typing import Sequence

import torch

from ..layers import VSSBlock
from .base import Segmenter
from .registry import register_model
from .ushape import UShapedNet


class MambaUNet(Segmenter):
    """Wrapper with the net as attribute `mamba_unet` (so state-dict keys start with `mamba_unet.`).

    The inner net takes 3 channels (to fit VMamba ImageNet weights); a 1-channel input is repeated
    to 3 channels, as in the original.  H and W must be multiples of patch_size * 2^(stages-1).
    """

    def __init__(self, in_chans: int = 1, num_classes: int = 4, dims: Sequence[int] = (96, 192, 384, 768),
                 depths: Sequence[int] = (2, 2, 2, 2), d_state: int = 16, patch_size: int = 4,
                 drop_path_rate: float = 0.2, scan_backend: str = "auto"):
        super().__init__()
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.net_in_chans = 3 if in_chans == 1 else in_chans
        self.input_multiple = patch_size * 2 ** (len(dims) - 1)

        def make_block(stage: int, dim: int, drop_path: float, index: int) -> VSSBlock:
            return VSSBlock(dim, drop_path=drop_path, d_state=d_state, scan_backend=scan_backend)

        self.mamba_unet = UShapedNet(make_block, self.net_in_chans, num_classes, dims, depths, patch_size,
                                     drop_path_rate)

    def set_scan_backend(self, backend: str) -> None:
        """Switch every SS2D to another selective-scan backend (e.g. "torch" for a reference check)."""
        for module in self.modules():
            if hasattr(module, "scan_backend"):
                module.scan_backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mamba_unet(self.stem_input(x))


@register_model("mamba_unet")
def mamba_unet(in_chans: int = 1, num_classes: int = 4, scan_backend: str = "auto",
               drop_path_rate: float = 0.2) -> MambaUNet:
    """The original configuration: dims 96..768, depths [2,2,2,2], d_state 16, DropPath 0.2."""
    return MambaUNet(in_chans, num_classes, drop_path_rate=drop_path_rate, scan_backend=scan_backend)


@register_model("test_mamba_unet")
def test_mamba_unet(in_chans: int = 1, num_classes: int = 4, scan_backend: str = "auto",
                    drop_path_rate: float = 0.1) -> MambaUNet:
    """Tiny variant for tests and smoke runs: dims 8..64, one block per stage, d_state 4."""
    return MambaUNet(in_chans, num_classes, dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), d_state=4,
                     drop_path_rate=drop_path_rate, scan_backend=scan_backend)


@register_model("small_mamba_unet")
def small_mamba_unet(in_chans: int = 1, num_classes: int = 4, scan_backend: str = "auto",
                     drop_path_rate: float = 0.1) -> MambaUNet:
    """A CPU-friendly Mamba-UNet (dims 16..128, one block per stage, d_state 8): the demo's network."""
    return MambaUNet(in_chans, num_classes, dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), d_state=8,
                     drop_path_rate=drop_path_rate, scan_backend=scan_backend)
