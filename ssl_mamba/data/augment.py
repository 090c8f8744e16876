"""Augmentation: the originals' RandomGenerator on CPU, a batched affine version, weak/strong views.

* `random_generator` (CPU, numpy): two independent uniform draws r1, r2; if r1 < rotflip_prob,
  rot90 by k in 0..3 then a flip on a random axis; elif r2 < rotate_prob, rotation by an integer
  angle in [-20, 20) with `scipy.ndimage.rotate(order=0, reshape=False)`; then an order-0 zoom to
  the patch size.  With the defaults 0.5 / 0.5 this is P(rot/flip)=0.5, P(rotate)=0.25, P(none)=0.25,
  as MU and SSL4MIS before 2025-06.  Image and label always get the same geometric transform.
* `batched_affine` (torch, any device): the same family on whole (N, 1, H, W) batches already at
  the patch size, one affine matrix per row, `grid_sample` nearest for both image and label
  (nearest for the image too, as the originals' order-0 resize).  Rotations are done in pixel
  space, so non-square patches are not sheared.
* `random_intensity_scale` (numpy, one slice) / `batched_intensity_scale` (torch, a batch):
  `data.intensity_scale`, each image times a log-uniform factor, drawn after the geometric draws so
  the geometry of a run is the same with and without it.
* `intensity_jitter`, `gaussian_noise`, `cutout`, `weak_view`, `strong_view`: photometric
  perturbations on batched tensors for methods that compare a weak and a strong view.
"""
import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

# ---------------------------------------------------------------------------------------------
# CPU, one slice at a time (numpy).


def zoom_to(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Order-0 (nearest) `scipy.ndimage.zoom` of a 2-D array to `size`, as the originals."""
    h, w = array.shape
    if (h, w) == tuple(size):
        return array
    return ndimage.zoom(array, (size[0] / h, size[1] / w), order=0)


def random_rot_flip(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """rot90 by k in 0..3, then always a flip along axis 0 or 1."""
    k = int(rng.integers(0, 4))
    axis = int(rng.integers(0, 2))
    image = np.flip(np.rot90(image, k), axis=axis)
    label = np.flip(np.rot90(label, k), axis=axis)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def random_rotate(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Rotation by an integer angle in [-20, 20) degrees, nearest, constant-0 padding, same shape."""
    angle = int(rng.integers(-20, 20))
    image = ndimage.rotate(image, angle, order=0, reshape=False)
    label = ndimage.rotate(label, angle, order=0, reshape=False)
    return image, label


def random_generator(image: np.ndarray, label: np.ndarray, size: Sequence[int], rng: np.random.Generator,
                     rotflip_prob: float = 0.5, rotate_prob: float = 0.5) -> Tuple[np.ndarray, np.ndarray]:
    """The originals' RandomGenerator on one 2-D slice; returns (image float32, label uint8) at `size`."""
    r1, r2 = rng.random(), rng.random()
    if r1 < rotflip_prob:
        image, label = random_rot_flip(image, label, rng)
    elif r2 < rotate_prob:
        image, label = random_rotate(image, label, rng)
    return zoom_to(image, size).astype(np.float32, copy=False), zoom_to(label, size).astype(np.uint8, copy=False)


def random_intensity_scale(image: np.ndarray, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """The slice times a factor drawn log-uniformly from [low, high]: the sample is replaced by a darker
    (or brighter) version of itself, background zeros staying zero."""
    factor = math.exp(rng.uniform(math.log(low), math.log(high)))
    return (image * factor).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------
# Batched, on tensors (GPU or CPU).


def _rot_flip_matrices(k: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """(N, 2, 2) output->input maps in (x, y) pixel coordinates for rot90^k then flip(axis).

    Array axis 0 is y (down), axis 1 is x.  np.rot90 turns counter-clockwise as displayed; the
    output pixel (x, y) reads the input at its image under a +90k degree turn in these axes.
    """
    ang = k.to(torch.float64) * (math.pi / 2)
    c, s = torch.cos(ang).round(), torch.sin(ang).round()
    # Output of rot90^k at (x, y) reads input at R (x, y): R = [[c, -s], [s, c]] (y pointing down).
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    flip = torch.ones(k.shape[0], 2, dtype=torch.float64, device=k.device)
    flip[axis == 0, 1] = -1.0  # flip along array axis 0 mirrors y
    flip[axis == 1, 0] = -1.0  # along axis 1 mirrors x
    # Flip is applied after rotation, so the output reads rotation-output at F (x, y).
    return rot @ torch.diag_embed(flip)


def _angle_matrices(deg: torch.Tensor) -> torch.Tensor:
    """(N, 2, 2) output->input maps for `scipy.ndimage.rotate(angle=deg)` in (x, y), y down."""
    a = deg.to(torch.float64) * (math.pi / 180)
    c, s = torch.cos(a), torch.sin(a)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def draw_affine(n: int, height: int, width: int, generator: torch.Generator, rotflip_prob: float = 0.5,
                rotate_prob: float = 0.5, device: Optional[torch.device] = None) -> torch.Tensor:
    """(N, 2, 3) `affine_grid` thetas drawn like `random_generator`, in normalised coordinates."""
    dev = generator.device
    r = torch.rand(n, 2, generator=generator, device=dev)
    k = torch.randint(0, 4, (n,), generator=generator, device=dev)
    axis = torch.randint(0, 2, (n,), generator=generator, device=dev)
    deg = torch.randint(-20, 20, (n,), generator=generator, device=dev)
    eye = torch.eye(2, dtype=torch.float64, device=dev).expand(n, 2, 2)
    use_rf = (r[:, 0] < rotflip_prob)[:, None, None]
    use_rot = (~use_rf[:, 0, 0]) & (r[:, 1] < rotate_prob)
    mats = torch.where(use_rf, _rot_flip_matrices(k, axis), eye)
    mats = torch.where(use_rot[:, None, None], _angle_matrices(deg), mats)
    return pixel_maps_to_theta(mats, height, width).to(device or dev)


def pixel_maps_to_theta(mats: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 2, 2) output->input maps about the image centre in (x, y) pixels -> (N, 2, 3) float32 thetas.

    Normalised coordinates are pixels scaled by S = diag(2/W, 2/H), so the map becomes S M S^-1.
    """
    scale = torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64, device=mats.device)
    theta = mats.to(torch.float64) * scale[None, :, None] / scale[None, None, :]
    zeros = torch.zeros(mats.shape[0], 2, 1, dtype=torch.float64, device=mats.device)
    return torch.cat([theta, zeros], dim=2).to(torch.float32)


def batched_affine(image: torch.Tensor, label: torch.Tensor, generator: torch.Generator,
                   rotflip_prob: float = 0.5, rotate_prob: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Augment a whole batch: image (N, 1, H, W) float, label (N, H, W) int -> same shapes/dtypes."""
    n, _, h, w = image.shape
    theta = draw_affine(n, h, w, generator, rotflip_prob, rotate_prob, device=image.device)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    out_img = F.grid_sample(image.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    lab = label[:, None].to(torch.float32)  # (N, 1, H, W): labels are small ints, exact in float32
    out_lab = F.grid_sample(lab, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out_img.to(image.dtype), out_lab[:, 0].round().to(label.dtype)


def batched_intensity_scale(image: torch.Tensor, generator: torch.Generator, low: float,
                            high: float) -> torch.Tensor:
    """Each image of (N, 1, H, W) times its own factor drawn log-uniformly from [low, high]."""
    log_factor = _uniform((image.shape[0], 1, 1, 1), math.log(low), math.log(high), generator, image)
    return image * torch.exp(log_factor)


# ---------------------------------------------------------------------------------------------
# Photometric views on batched tensors.


def _uniform(shape: Tuple[int, ...], low: float, high: float, generator: Optional[torch.Generator],
             like: torch.Tensor) -> torch.Tensor:
    dev = generator.device if generator is not None else like.device
    u = torch.rand(shape, generator=generator, device=dev).to(like.device, like.dtype)
    return low + (high - low) * u


def intensity_jitter(x: torch.Tensor, generator: Optional[torch.Generator] = None, brightness: float = 0.1,
                     contrast: float = 0.1) -> torch.Tensor:
    """Per-image contrast about the image mean times (1 +- contrast), plus a brightness shift +- brightness."""
    n = x.shape[0]
    c = _uniform((n, 1, 1, 1), 1 - contrast, 1 + contrast, generator, x)
    b = _uniform((n, 1, 1, 1), -brightness, brightness, generator, x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * c + mean + b


def gaussian_noise(x: torch.Tensor, generator: Optional[torch.Generator] = None, std: float = 0.05) -> torch.Tensor:
    """Add N(0, std^2) noise to every pixel."""
    dev = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=dev).to(x.device, x.dtype)
    return x + std * noise


def cutout(x: torch.Tensor, generator: Optional[torch.Generator] = None, frac: float = 0.25,
           fill: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Set one random rectangle of frac*H x frac*W per image to `fill`.

    Returns (image, keep) where keep (N, 1, H, W) is 1 outside the rectangle, so losses can ignore it.
    """
    n, _, h, w = x.shape
    ch, cw = max(1, int(round(h * frac))), max(1, int(round(w * frac)))
    dev = generator.device if generator is not None else x.device
    top = torch.randint(0, h - ch + 1, (n,), generator=generator, device=dev).to(x.device)
    left = torch.randint(0, w - cw + 1, (n,), generator=generator, device=dev).to(x.device)
    rows = torch.arange(h, device=x.device)[None, :, None]  # (1, H, 1)
    cols = torch.arange(w, device=x.device)[None, None, :]  # (1, 1, W)
    inside = ((rows >= top[:, None, None]) & (rows < (top + ch)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + cw)[:, None, None]))  # (N, H, W)
    keep = (~inside)[:, None].to(x.dtype)
    return x * keep + fill * (1 - keep), keep


def weak_view(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A mild photometric view: small intensity jitter and light noise (geometry unchanged)."""
    return gaussian_noise(intensity_jitter(x, generator, 0.05, 0.05), generator, 0.02)


def strong_view(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """A strong photometric view: jitter, noise, cutout; returns (image, keep mask) as `cutout`."""
    return cutout(gaussian_noise(intensity_jitter(x, generator, 0.2, 0.2), generator, 0.1), generator)
