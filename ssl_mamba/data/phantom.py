"""A synthetic ACDC-like cardiac short-axis dataset, written in the SSL4MIS/ACDC layout.

Per patient: a left-ventricle cavity (class 3, an ellipse), the myocardium around it (class 2, a
ring) and the right ventricle (class 1, a crescent beside the ring), over a smooth textured
background.  Size, position, orientation and intensities are random per patient and vary
smoothly along the stack (the heart narrows towards the apex, the RV fades out); the second
frame is a contracted "systole" (smaller cavity, thicker wall).  Each volume gets a smooth
multiplicative bias field and Gaussian noise, then min-max normalisation to [0, 1] per volume,
as ACDC's preprocessing.  Blood is bright and myocardium dark, so a small UNet learns it fast.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

from ..errors import DataError
from ..utils.io import atomic_write_text

PathLike = Union[str, Path]


@dataclass
class _Heart:
    """Per-patient anatomy and appearance (pixels / intensities before normalisation)."""

    height: int
    width: int
    centre: np.ndarray  # (y, x)
    drift: np.ndarray  # centre shift from base to apex, (dy, dx)
    lv_radius: float
    wall: float
    elong: float  # ellipse aspect of the LV
    angle: float  # LV ellipse orientation (radians)
    rv_dir: float  # direction of the RV from the LV centre (radians)
    rv_radius: float
    i_lv: float
    i_rv: float
    i_myo: float
    noise: float


def _draw_heart(rng: np.random.Generator, size: Sequence[int]) -> _Heart:
    h, w = (int(v) for v in rng.integers(size[0], size[1] + 1, 2))
    side = min(h, w)
    lv = side * rng.uniform(0.10, 0.14)
    i_lv = rng.uniform(0.75, 0.95)
    return _Heart(
        height=h, width=w,
        centre=np.array([h, w]) * rng.uniform(0.42, 0.58, 2),
        drift=rng.normal(0, side * 0.03, 2),
        lv_radius=lv, wall=lv * rng.uniform(0.35, 0.55), elong=rng.uniform(0.85, 1.2),
        angle=rng.uniform(0, np.pi), rv_dir=rng.uniform(0, 2 * np.pi), rv_radius=lv * rng.uniform(1.4, 1.8),
        i_lv=i_lv, i_rv=i_lv * rng.uniform(0.8, 0.97), i_myo=rng.uniform(0.12, 0.25), noise=rng.uniform(0.02, 0.045),
    )


def _slice_label(heart: _Heart, z: float, systole: bool, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Label map (H, W) of the slice at relative depth z in [0, 1] (0 = base, 1 = apex)."""
    shrink = 1.0 - 0.55 * z ** 1.5
    r = heart.lv_radius * shrink * (0.68 if systole else 1.0)
    t = heart.wall * (0.85 + 0.3 * z) * (1.3 if systole else 1.0)
    cy, cx = heart.centre + z * heart.drift
    dy, dx = yy - cy, xx - cx
    ca, sa = np.cos(heart.angle), np.sin(heart.angle)
    u, v = ca * dx + sa * dy, -sa * dx + ca * dy
    q = np.sqrt((u * np.sqrt(heart.elong)) ** 2 + (v / np.sqrt(heart.elong)) ** 2)  # elliptic radius
    label = np.zeros(yy.shape, dtype=np.uint8)
    rv_scale = max(0.0, 1.0 - 1.1 * z) * (0.8 if systole else 1.0)
    if rv_scale > 0.05:
        rd = heart.rv_radius * rv_scale
        cd, sd = np.cos(heart.rv_dir), np.sin(heart.rv_dir)
        ry, rx = cy + sd * (r + t) * 0.9, cx + cd * (r + t) * 0.9
        along = cd * (xx - rx) + sd * (yy - ry)
        across = -sd * (xx - rx) + cd * (yy - ry)
        inside = (along / (0.9 * rd)) ** 2 + (across / (1.5 * rd)) ** 2 <= 1.0
        label[inside & (q > r + t + 1.5)] = 1
    label[(q > r) & (q <= r + t)] = 2
    label[q <= r] = 3
    return label


def _background(rng: np.random.Generator, shape: Tuple[int, ...]) -> np.ndarray:
    """Smooth tissue texture in about [0.05, 0.45] inside a body ellipse, dark outside; (S, H, W)."""
    texture = ndimage.gaussian_filter(rng.normal(size=shape), sigma=(1.0, 4.0, 4.0))
    texture = 0.25 + 0.2 * texture / (np.abs(texture).max() + 1e-8)
    _, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    body = ((yy - h / 2) / (0.47 * h)) ** 2 + ((xx - w / 2) / (0.47 * w)) ** 2 <= 1.0
    return np.where(body[None], texture, 0.03)


def _bias_field(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth multiplicative field in about [0.75, 1.25]: a random low-order polynomial."""
    yy, xx = np.mgrid[0:h, 0:w]
    y, x = yy / h - 0.5, xx / w - 0.5
    a = rng.uniform(-0.4, 0.4, 5)
    return np.exp(a[0] * x + a[1] * y + a[2] * x * y + a[3] * x * x + a[4] * y * y)


def make_volume(heart: _Heart, n_slices: int, systole: bool, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """(image float32 SxHxW in [0, 1], label uint8 SxHxW) for one frame."""
    h, w = heart.height, heart.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    depths = np.linspace(0.0, 1.0, n_slices) if n_slices > 1 else np.zeros(1)
    label = np.stack([_slice_label(heart, float(z), systole, yy, xx) for z in depths])  # (S, H, W)
    tissue = np.array([0.0, heart.i_rv, heart.i_myo, heart.i_lv])
    image = np.where(label > 0, tissue[label], _background(rng, label.shape))
    image = ndimage.gaussian_filter(image, sigma=(0, 0.7, 0.7))  # partial-volume edges
    image = image * _bias_field(rng, h, w)[None] + rng.normal(0, heart.noise, image.shape)
    image = (image - image.min()) / (image.max() - image.min())
    return image.astype(np.float32), label


def _write_h5(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        fh.create_dataset("image", data=image, compression="gzip", compression_opts=4)
        fh.create_dataset("label", data=label, compression="gzip", compression_opts=4)


def generate_phantom(out_dir: PathLike, n_train_patients: int = 8, n_val_patients: int = 2,
                     n_test_patients: int = 2, slices: Tuple[int, int] = (6, 10), size: Tuple[int, int] = (128, 160),
                     seed: int = 0) -> Dict[str, int]:
    """Write a phantom dataset in the ACDC layout into `out_dir`; returns counts.

    Patients are numbered patient001.. (train, then val, then test), each with frames 01 and 02
    of `slices` = (min, max) slices and in-plane sides drawn in `size` = (min, max) pixels (H and
    W independently; pass (n, n) for square n x n).  Training patients are written as 1-based
    slices `data/slices/patientNNN_frameFF_slice_K.h5`; val/test patients as volumes
    `data/patientNNN_frameFF.h5`.  The same seed gives the same files.
    """
    counts = (n_train_patients, n_val_patients, n_test_patients)
    if n_train_patients < 1 or min(counts) < 0:
        raise DataError(f"phantom needs >= 1 training patient and non-negative counts, got {counts}")
    if not 1 <= slices[0] <= slices[1] or not 16 <= size[0] <= size[1]:
        raise DataError(f"phantom slices={slices} must be 1 <= min <= max and size={size} 16 <= min <= max")
    out = Path(out_dir)
    lists: Dict[str, List[str]] = {"train": [], "val": [], "test": [], "train_slices": []}
    splits = ["train"] * n_train_patients + ["val"] * n_val_patients + ["test"] * n_test_patients
    for pid, split in enumerate(splits, start=1):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, pid])))
        heart = _draw_heart(rng, size)
        n_slices = int(rng.integers(slices[0], slices[1] + 1))
        for frame in (1, 2):
            vol = f"patient{pid:03d}_frame{frame:02d}"
            image, label = make_volume(heart, n_slices, frame == 2, rng)
            lists[split].append(vol)
            if split == "train":
                for k in range(n_slices):
                    lists["train_slices"].append(f"{vol}_slice_{k + 1}")
                    _write_h5(out / "data" / "slices" / f"{vol}_slice_{k + 1}.h5", image[k], label[k])
            else:
                _write_h5(out / "data" / f"{vol}.h5", image, label)
    for name, names in lists.items():
        atomic_write_text(out / f"{name}.list", "".join(n + "\n" for n in names))
    return {"train_slices": len(lists["train_slices"]), "train_volumes": len(lists["train"]),
            "val_volumes": len(lists["val"]), "test_volumes": len(lists["test"])}
