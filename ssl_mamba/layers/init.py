"""Weight initialisation shared by the Mamba-UNet and Swin-UNet (both follow the Swin recipe)."""
from torch import nn


def init_linear_and_norm(module: nn.Module) -> None:
    """`module.apply` hook: Linear weights ~ trunc_normal(std 0.02) with zero bias; LayerNorm 1 / 0.

    Convolutions and bare Parameters are deliberately left alone (the originals keep PyTorch
    defaults there, and the SSM parameters carry their own initialisation).
    """
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
