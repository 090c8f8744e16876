"""The supervised term every script uses: 0.5 (cross-entropy + soft Dice)."""
import torch
from torch.nn import functional as F

from .dice import DiceLoss


def supervised_loss(logits: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """0.5 (CE(logits, label) + Dice(softmax(logits), label)).

    logits: (N, K, H, W); label: (N, H, W) integer class map (also used for pseudo labels).
    CE is the mean over pixels (nn.CrossEntropyLoss default), Dice is SSL4MIS `DiceLoss`.
    """
    ce = F.cross_entropy(logits, label.long())
    dice = DiceLoss(num_classes)(torch.softmax(logits, dim=1), label)
    return 0.5 * (ce + dice)
