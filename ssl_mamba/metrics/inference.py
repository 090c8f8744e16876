"""Slice-wise inference over a volume, with the originals' resize behaviour.

The originals resize each slice with `scipy.ndimage.zoom(slice, (P/H, P/W), order=0)` and the
prediction back with order 0.  `torch.nn.functional.interpolate(mode="nearest")` does NOT match
it: torch picks source index floor(o * H/P), scipy picks round(o * (H-1)/(P-1)).  So order 0 is
done here with an explicit index map that reproduces scipy exactly, including a scipy quirk:
for some sizes (e.g. 115 -> 224, 229 -> 224) the floating-point coordinate of the last output
row lands just past the last input row, and scipy's constant mode fills that row with 0.  The
tests check equality with scipy on random sizes.  Order 1 uses bilinear interpolation with
`align_corners=True`, which is scipy's order-1 coordinate mapping; it agrees with
`zoom(order=1)` to float32 round-off (scipy's quirk at the last row aside).
"""
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError


def scipy_nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index per output index of scipy's order-0 zoom along one axis; -1 marks the rows
    scipy fills with 0 (coordinate past the end by round-off)."""
    if n_out == 1:
        return np.zeros(1, dtype=np.int64)
    coords = np.arange(n_out) * np.float64((n_in - 1) / (n_out - 1))
    index = np.floor(coords + 0.5).astype(np.int64)
    index[coords > n_in - 1] = -1
    return index


def resize_nearest(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Order-0 resize of the last two axes of `x` (..., H, W) to `size`, identical to scipy zoom."""
    h, w = x.shape[-2:]
    rows = torch.as_tensor(scipy_nearest_index(h, size[0]), device=x.device)
    cols = torch.as_tensor(scipy_nearest_index(w, size[1]), device=x.device)
    out = x.index_select(-2, rows.clamp(min=0)).index_select(-1, cols.clamp(min=0))  # (..., P, Q)
    if (rows < 0).any() or (cols < 0).any():
        keep = (rows >= 0)[:, None] & (cols >= 0)[None, :]  # (P, Q)
        out = out * keep.to(out.dtype)
    return out


def resize_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Order-1 resize of (N, C, H, W) float tensors, scipy's coordinate mapping (align_corners)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def check_patch_size(net: nn.Module, patch_size: Sequence[int]) -> None:
    """Fail early when the network cannot take `patch_size` (fixed size or size multiple)."""
    fixed = getattr(net, "fixed_input_size", None)
    if fixed is not None:
        fixed_hw = (fixed, fixed) if isinstance(fixed, int) else tuple(fixed)
        if tuple(patch_size) != fixed_hw:
            raise ConfigError(f"data.patch_size {list(patch_size)} does not fit the network, which takes only {fixed_hw}")
    multiple = getattr(net, "input_multiple", None)
    if multiple and any(p % multiple for p in patch_size):
        raise ConfigError(f"data.patch_size {list(patch_size)} must be a multiple of {multiple} for this network")


def _logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = net(x)
    return out[0] if isinstance(out, (tuple, list)) else out  # deep-supervision nets: main head first


def _probabilities(net: nn.Module, x: torch.Tensor, tta_flip: bool) -> torch.Tensor:
    """Softmax of (N, 1, P, Q) -> (N, K, P, Q); with TTA averaged over identity, W-flip and H-flip."""
    probs = torch.softmax(_logits(net, x).float(), dim=1)
    if not tta_flip:
        return probs
    for dims in ((-1,), (-2,)):
        probs = probs + torch.softmax(_logits(net, x.flip(dims)).float(), dim=1).flip(dims)
    return probs / 3.0


def _default_device(net: nn.Module) -> torch.device:
    param = next(net.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _predict_chunk(net: nn.Module, slices: torch.Tensor, patch_size: Tuple[int, int], interp_order: int,
                   tta_flip: bool) -> torch.Tensor:
    """(n, H, W) float slices -> (n, H, W) uint8 labels (`net`: the network or its EvalGraphs)."""
    h, w = slices.shape[-2:]
    if interp_order == 0:
        x = resize_nearest(slices, patch_size)[:, None]  # (n, 1, P, Q)
        labels = _probabilities(net, x, tta_flip).argmax(dim=1)  # (n, P, Q)
        return resize_nearest(labels, (h, w)).to(torch.uint8)
    x = resize_bilinear(slices[:, None], patch_size)  # (n, 1, P, Q)
    probs = resize_bilinear(_probabilities(net, x, tta_flip), (h, w))  # (n, K, H, W)
    return probs.argmax(dim=1).to(torch.uint8)


def predict_volume(net: nn.Module, image: np.ndarray, patch_size: Sequence[int], interp_order: int = 0,
                   tta_flip: bool = False, device: Optional[torch.device] = None,
                   batch_size: Optional[int] = None, graphs=None) -> np.ndarray:
    """Segment an (S, H, W) float32 volume slice by slice -> (S, H, W) uint8 labels.

    Every slice is resized to `patch_size` (order 0 as the originals, or 1 = bilinear), all slices
    go through the network in one batch (chunks of `batch_size` if given), in eval mode under
    no_grad; the net's previous train/eval mode is restored afterwards.  Order 0 resizes the
    argmax labels back with nearest neighbour; order 1 resizes the class probabilities back
    bilinearly and takes the argmax at full size.  `tta_flip` averages the softmax over flips.
    `graphs`: an `EvalGraphs` of `net` to run the forward passes through (eval.cuda_graphs).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.size == 0:
        raise DataError(f"predict_volume needs an (S, H, W) volume, got shape {image.shape}")
    if interp_order not in (0, 1):
        raise ConfigError(f"eval.interp_order must be 0 (nearest) or 1 (bilinear), got {interp_order}")
    if len(patch_size) != 2:
        raise ConfigError(f"patch_size must have two values, got {list(patch_size)}")
    check_patch_size(net, patch_size)
    device = torch.device(device) if device is not None else _default_device(net)
    slices = torch.as_tensor(image, dtype=torch.float32, device=device)
    chunk = batch_size or slices.shape[0]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            forward = graphs if graphs is not None else net
            parts = [_predict_chunk(forward, slices[i:i + chunk], tuple(patch_size), interp_order, tta_flip)
                     for i in range(0, slices.shape[0], chunk)]
    finally:
        net.train(was_training)
    return torch.cat(parts).cpu().numpy()
