"""Unsupervised terms shared by the semi-supervised methods.

- `softmax_mse`: mean squared difference of two probability maps (mean teacher, ICT, UAMT).
- `entropy_map` / `normalized_entropy`: pixel entropy of a probability map (UAMT, ADVENT).
- `pooled_logit_consistency`: the Semi-Mamba-UNet code's `ConstraLoss` (image-level).
- `ProjectorHead` + `pixel_projector_consistency`: the Semi-Mamba-UNet paper's pixel-level
  term (§3.3), with learnable projectors.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

ENTROPY_EPS = 1e-6


def softmax_mse(probs_a: torch.Tensor, probs_b: torch.Tensor) -> torch.Tensor:
    """mean((a - b)^2) over every element; both (N, K, H, W) probabilities."""
    return torch.mean((probs_a - probs_b) ** 2)


def entropy_map(probs: torch.Tensor) -> torch.Tensor:
    """-sum_c p log(p + 1e-6) over channels, natural log: (N, K, H, W) -> (N, 1, H, W)."""
    return -torch.sum(probs * torch.log(probs + ENTROPY_EPS), dim=1, keepdim=True)


def normalized_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean pixel entropy divided by ln(K), so it lies in [0, 1] for any class count
    (ADVENT's entropy-minimisation term; the original hard-codes ln 4)."""
    num_classes = probs.shape[1]
    return entropy_map(probs).mean() / math.log(num_classes)


def pooled_logit_consistency(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Semi-Mamba-UNet code's `ConstraLoss`: global-average-pool each (N, K, H, W) logit map to
    (N, K), L2-normalise each row, return the mean squared difference over N*K elements.
    No projector parameters; gradients flow into both inputs."""
    pooled_a = F.normalize(logits_a.mean(dim=(2, 3)), p=2, dim=1)  # (N, K)
    pooled_b = F.normalize(logits_b.mean(dim=(2, 3)), p=2, dim=1)  # (N, K)
    return torch.mean((pooled_a - pooled_b) ** 2)


class ProjectorHead(nn.Module):
    """Small pixel-wise projector: 1x1 conv -> BN -> ReLU -> 1x1 conv, (N, C, H, W) -> (N, D, H, W)."""

    def __init__(self, in_channels: int, out_channels: int = 16, hidden_channels: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(hidden_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, out_channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def pixel_projector_consistency(proj_a: torch.Tensor, proj_b: torch.Tensor) -> torch.Tensor:
    """Pixel-level MSE between channel-L2-normalised projections (paper Eq. 4-5).

    proj_a, proj_b: (N, D, H, W).  The loss is symmetric with a stop-gradient on the partner,
    0.5 [MSE(a, sg(b)) + MSE(sg(a), b)], as in SimSiam / BYOL: without negatives, a plain MSE
    between two learnable projectors has a trivial minimum (both heads output one constant
    vector); pulling each branch toward the other's detached output keeps the target fixed
    for that update and is the standard way a non-contrastive pair avoids that collapse.
    The value equals MSE(a, b); only the gradient routing differs.
    """
    a = F.normalize(proj_a, p=2, dim=1)
    b = F.normalize(proj_b, p=2, dim=1)
    loss_a = torch.mean((a - b.detach()) ** 2)
    loss_b = torch.mean((a.detach() - b) ** 2)
    return 0.5 * (loss_a + loss_b)
