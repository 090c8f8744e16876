"""What every segmenter shares: the input-size contract the data layer and evaluator check."""
from typing import Optional

import torch
from torch import nn

from ..errors import UserError


class InputSizeError(UserError, ValueError):
    """An image size the network cannot take; the message names the allowed sizes."""


class Segmenter(nn.Module):
    """Base of the segmentation networks: (N, C, H, W) -> logits (N, K, H, W).

    Exactly one of `input_multiple` (H and W must be multiples of it) and `fixed_input_size`
    (H = W = it) is set, so callers can validate a patch size before training.
    """

    input_multiple: Optional[int] = None
    fixed_input_size: Optional[int] = None
    num_classes: int
    in_chans: int

    def allowed_sizes(self) -> str:
        """Human-readable statement of the sizes this network accepts."""
        if self.fixed_input_size is not None:
            return f"exactly {self.fixed_input_size}x{self.fixed_input_size}"
        return f"height and width divisible by {self.input_multiple}"

    def check_input_size(self, h: int, w: int) -> None:
        """Raise InputSizeError (a UserError and ValueError) unless an h x w input is allowed."""
        fixed, multiple = self.fixed_input_size, self.input_multiple
        ok = (h == fixed and w == fixed) if fixed is not None else (h > 0 and w > 0 and h % multiple == 0
                                                                    and w % multiple == 0)
        if not ok:
            raise InputSizeError(f"{type(self).__name__} cannot take a {h}x{w} input: it needs "
                                 f"{self.allowed_sizes()}")

    def stem_input(self, x: torch.Tensor) -> torch.Tensor:
        """Validate x and repeat a gray image to the 3 channels of an ImageNet-shaped stem
        (`net_in_chans` 3), as the original Mamba-UNet and Swin-UNet wrappers do."""
        self.check_input(x)
        net_in_chans = getattr(self, "net_in_chans", self.in_chans)
        if x.shape[1] == 1 and net_in_chans == 3:
            x = x.repeat(1, 3, 1, 1)
        if x.shape[1] != net_in_chans:
            raise InputSizeError(f"{type(self).__name__} expects {self.in_chans} input channel(s), got {x.shape[1]}")
        return x

    def check_input(self, x: torch.Tensor) -> None:
        """Validate a batch: 4-D, `in_chans` (or 1, repeated) channels, allowed spatial size."""
        if x.dim() != 4:
            raise InputSizeError(f"{type(self).__name__} expects (N, C, H, W) input, got shape {tuple(x.shape)}")
        self.check_input_size(int(x.shape[2]), int(x.shape[3]))
