"""SS2D's four-direction cross-scan and its merge (reference-original.md §1.4, steps 3 and 6)."""
import torch


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) -> (B, 4, D, H*W): row-major, column-major, and both reversed.

    k=0 index h*W+w; k=1 index w*H+h; k=2 and k=3 are k=0 and k=1 read backwards.
    """
    if x.dim() != 4:
        raise ValueError(f"cross_scan: x must be (B, D, H, W), got shape {tuple(x.shape)}")
    b, d, h, w = x.shape
    row = x.reshape(b, d, h * w)  # (B, D, L), row-major
    col = x.transpose(2, 3).reshape(b, d, h * w)  # (B, D, L), column-major
    xs = torch.stack([row, col], dim=1)  # (B, 2, D, L)
    return torch.cat([xs, xs.flip(-1)], dim=1)  # (B, 4, D, L)


def cross_merge(ys: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, 4, D, H*W) -> (B, D, H*W) row-major: undo each direction's order and sum the four."""
    if ys.dim() != 4 or ys.shape[1] != 4 or ys.shape[3] != h * w:
        raise ValueError(f"cross_merge: ys must be (B, 4, D, H*W={h * w}), got shape {tuple(ys.shape)}")
    b, _, d, length = ys.shape
    fwd = ys[:, 0:2] + ys[:, 2:4].flip(-1)  # (B, 2, D, L): reversed directions put back in order
    col = fwd[:, 1].reshape(b, d, w, h).transpose(2, 3).reshape(b, d, length)  # column- to row-major
    return fwd[:, 0] + col
