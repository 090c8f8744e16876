"""Soft Dice loss exactly as SSL4MIS `utils/losses.py::DiceLoss`.

The target is one-hot encoded over all K classes, background included.  For each class the
loss is 1 - (2 sum(p t) + eps) / (sum(p^2) + sum(t^2) + eps), with the sums taken over the whole
batch (not per image), and the K per-class losses are averaged with equal weight.  Keeping this
definition exact matters: the supervised term of every paper row is 0.5 (CE + this Dice).
"""
from typing import Optional, Sequence

import torch
from torch import nn

from ..errors import UserError

DICE_EPS = 1e-5


def _one_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) or (N, 1, H, W) integer labels -> (N, K, H, W) float one-hot."""
    if target.dim() == 4 and target.shape[1] == 1:
        target = target[:, 0]  # (N, 1, H, W) -> (N, H, W)
    if target.dim() != 3:
        raise UserError(f"DiceLoss: labels must be (N, H, W) or (N, 1, H, W), got shape {tuple(target.shape)}")
    target = target.long()
    if target.device.type == "cpu":
        _check_label_range(target, num_classes)
    # On a GPU the check would read min and max back to the host: two device syncs in the middle of
    # every training step, which left the GPU idle while the host queued the rest of the step.  Labels
    # from the data layer were checked per slice on the CPU (the error names the slice); anything else
    # out of range still fails, in one_hot's scatter (a device-side assert), as torch's one_hot does.
    # (N, H, W, K) -> (N, K, H, W)
    return nn.functional.one_hot(target, num_classes).permute(0, 3, 1, 2).float()


def _check_label_range(target: torch.Tensor, num_classes: int) -> None:
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise UserError(
            f"DiceLoss: label values must lie in [0, {num_classes - 1}], got range "
            f"[{int(target.min())}, {int(target.max())}]"
        )


def dice_per_class(probs: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class soft Dice losses, shape (K,), summed over the whole batch."""
    if probs.dim() != 4 or probs.shape[1] != num_classes:
        raise UserError(f"DiceLoss: predictions must be (N, {num_classes}, H, W), got shape {tuple(probs.shape)}")
    onehot = _one_hot(target, num_classes).to(probs.dtype)
    if onehot.shape != probs.shape:
        raise UserError(
            f"DiceLoss: prediction shape {tuple(probs.shape)} and label shape {tuple(target.shape)} differ"
        )
    dims = (0, 2, 3)
    intersect = (probs * onehot).sum(dims)
    p_sq = (probs * probs).sum(dims)
    t_sq = (onehot * onehot).sum(dims)
    return 1.0 - (2.0 * intersect + DICE_EPS) / (p_sq + t_sq + DICE_EPS)


class DiceLoss(nn.Module):
    """SSL4MIS soft Dice over K classes (background included), mean over classes.

    forward(inputs (N, K, H, W), target (N, H, W) ints, softmax=False, weight=None): pass
    probabilities, or logits with softmax=True.  `weight` (K,) rescales the per-class terms
    before the mean, as the original's optional argument.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise UserError(f"DiceLoss: num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes

    def forward(
        self,
        inputs: torch.Tensor,
        target: torch.Tensor,
        softmax: bool = False,
        weight: Optional[Sequence[float]] = None,
    ) -> torch.Tensor:
        probs = torch.softmax(inputs, dim=1) if softmax else inputs
        per_class = dice_per_class(probs, target, self.num_classes)
        if weight is not None:
            per_class = per_class * torch.as_tensor(weight, dtype=per_class.dtype, device=per_class.device)
        return per_class.mean()
