"""Packs: a whole dataset (slices, volumes, lists) in one compressed .npz that loads into memory.

The .npz is deflate level 9, readable by plain `np.load`.

Layout of the .npz (all arrays, no pickles):
  meta                 JSON string: format, version, dtype, levels, max_abs_error, source kind/root
  slice_names          (N,) str, in train_slices order
  slice_image          concatenated flattened images, quantised to `dtype` per slice
  slice_label          concatenated flattened uint8 labels
  slice_shape (N, 2), slice_offset (N + 1,), slice_range (N, 2) float32 (lo, hi) per slice
  vol_names, vol_image, vol_label, vol_shape (M, 3), vol_offset, vol_range: the same for volumes
  list_train, list_val, list_test: volume names per split (as the source's lists)

A pack can also be written as a folder of two parts (`split_parts=True`): `slices.npz` (training
slices) and `volumes.npz` (val/test volumes), each with the lists.  Each part then fits a 64 MiB
transfer on its own (ACDC in uint8 as one file is 64.1 MiB); `open_dataset(folder)` merges them.

Quantisation: q = round((x - lo) / (hi - lo) * L) with L = 65535 (uint16) or 255 (uint8) and
(lo, hi) the item's own min and max, so the error is at most (hi - lo) / (2 L); the measured
maximum is stored in meta and returned, so results can report it.
"""
import json
import zipfile
from pathlib import Path
from typing import BinaryIO, Dict, List, Tuple, Union

import numpy as np

from ..errors import DataError
from ..utils.io import _atomic_write
from ..utils.log import get_logger
from .sources import SPLITS, SegmentationSource, check_pair, open_dataset

PathLike = Union[str, Path]
FORMAT = "ssl-mamba-pack"
LEVELS = {"uint16": 65535, "uint8": 255}


def quantise(image: np.ndarray, dtype: str) -> Tuple[np.ndarray, float, float]:
    """(q, lo, hi) of one image; q has `dtype` and the image's shape."""
    levels = LEVELS[dtype]
    lo, hi = float(image.min()), float(image.max())
    span = hi - lo if hi > lo else 1.0
    q = np.rint((image.astype(np.float64) - lo) / span * levels)
    return q.astype(dtype), lo, hi


def dequantise(q: np.ndarray, lo: float, hi: float, levels: int) -> np.ndarray:
    """Float32 image back from its quantised form (inverse of `quantise` up to rounding)."""
    span = hi - lo if hi > lo else 1.0
    return (lo + q.astype(np.float64) * (span / levels)).astype(np.float32)


class _Collector:
    """Accumulates items of one kind (slices or volumes) into concatenated arrays."""

    def __init__(self, dtype: str):
        self.dtype, self.levels = dtype, LEVELS[dtype]
        self.names: List[str] = []
        self.images: List[np.ndarray] = []
        self.labels: List[np.ndarray] = []
        self.shapes: List[Tuple[int, ...]] = []
        self.ranges: List[Tuple[float, float]] = []
        self.max_error = 0.0

    def add(self, name: str, image: np.ndarray, label: np.ndarray) -> None:
        q, lo, hi = quantise(image, self.dtype)
        err = float(np.abs(dequantise(q, lo, hi, self.levels) - image).max()) if image.size else 0.0
        self.max_error = max(self.max_error, err)
        self.names.append(name)
        self.images.append(q.ravel())
        self.labels.append(label.ravel())
        self.shapes.append(image.shape)
        self.ranges.append((lo, hi))

    def arrays(self, prefix: str, ndim: int) -> Dict[str, np.ndarray]:
        sizes = [int(np.prod(s)) for s in self.shapes]
        return {
            f"{prefix}_names": np.array(self.names, dtype=str),
            f"{prefix}_image": np.concatenate(self.images) if self.images else np.zeros(0, self.dtype),
            f"{prefix}_label": np.concatenate(self.labels) if self.labels else np.zeros(0, np.uint8),
            f"{prefix}_shape": np.array(self.shapes, dtype=np.int64).reshape(-1, ndim),
            f"{prefix}_offset": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            f"{prefix}_range": np.array(self.ranges, dtype=np.float32).reshape(-1, 2),
        }


def _write_npz(fh: BinaryIO, arrays: Dict[str, np.ndarray]) -> None:
    """`np.savez_compressed` with deflate level 9 (a few % smaller: ACDC uint8 then fits 64 MiB)."""
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for key, value in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


PARTS = {"slices": "slices.npz", "volumes": "volumes.npz"}


def pack_dataset(root: PathLike, out: PathLike, dtype: str = "uint16", split_parts: bool = False) -> dict:
    """Write dataset `root` (any layout `open_dataset` reads) into the single file `out`, or with
    `split_parts` into the folder `out` as two part files (see the module docstring).

    Volumes listed but not shipped (ACDC's training volumes) are skipped; val/test volumes must
    exist.  Returns the meta dict plus `bytes` (the total size) and, for parts, `part_bytes`.
    """
    if dtype not in LEVELS:
        raise DataError(f"pack dtype {dtype!r}: choose uint16 or uint8")
    source = open_dataset(root)
    slices, vols = _Collector(dtype), _Collector(dtype)
    for name in source.train_slice_names:
        slices.add(name, *source.read_slice(name))
    lists = {s: source.volume_names(s) for s in SPLITS}
    for split in SPLITS:
        for name in lists[split]:
            if split == "train" and not source.has_volume(name):
                continue
            if name not in vols.names:
                vols.add(name, *source.read_volume(name))
    meta = {
        "format": FORMAT, "version": 1, "dtype": dtype, "levels": LEVELS[dtype],
        "max_abs_error": max(slices.max_error, vols.max_error), "source_kind": source.kind,
        "source_root": str(source.root), "slices": len(slices.names), "volumes": len(vols.names),
    }
    out = Path(out)
    list_arrays = {f"list_{s}": np.array(lists[s], dtype=str) for s in SPLITS}
    if split_parts:
        part_arrays = {"slices": slices.arrays("slice", 2), "volumes": vols.arrays("vol", 3)}
        meta["part_bytes"] = {}
        for part, filename in PARTS.items():
            arrays = {"meta": np.array(json.dumps(dict(meta, contents=[part]))), **part_arrays[part], **list_arrays}
            _atomic_write(out / filename, lambda fh: _write_npz(fh, arrays), "wb")
            meta["part_bytes"][filename] = (out / filename).stat().st_size
        meta["bytes"] = sum(meta["part_bytes"].values())
    else:
        arrays = {"meta": np.array(json.dumps(dict(meta, contents=list(PARTS))))}
        arrays.update(slices.arrays("slice", 2))
        arrays.update(vols.arrays("vol", 3))
        arrays.update(list_arrays)
        _atomic_write(out, lambda fh: _write_npz(fh, arrays), "wb")
        meta["bytes"] = out.stat().st_size
    get_logger("data").info("packed %s into %s: %.1f MiB, %s, max abs error %.3g", root, out,
                            meta["bytes"] / 2**20, dtype, meta["max_abs_error"])
    return meta


class PackSource(SegmentationSource):
    """A pack file read fully into memory; images are dequantised on each read."""

    kind = "pack"

    def __init__(self, path: Path):
        arrays = self._load(path)
        super().__init__(path, [str(n) for n in arrays["slice_names"]])
        self.metadata = dict(self.pack_meta)
        self.metadata["kind"] = "pack"
        self._a = arrays
        self._levels = int(self.pack_meta["levels"])
        self._slice_index = {n: i for i, n in enumerate(self.train_slice_names)}
        self._vol_index = {str(n): i for i, n in enumerate(arrays["vol_names"])}
        self._lists = {s: [str(n) for n in arrays[f"list_{s}"]] for s in SPLITS}

    def _load(self, path: Path) -> Dict[str, np.ndarray]:
        """One pack file, or a folder of part files merged into one set of arrays."""
        if not path.is_dir():
            return self._load_file(path)
        files = sorted(path.glob("*.npz"))
        if not files:
            raise DataError(f"{path}: a pack folder must hold part files ({', '.join(PARTS.values())})")
        merged: Dict[str, np.ndarray] = {}
        contents: List[str] = []
        for file in files:
            arrays = self._load_file(file)
            for part in self.pack_meta.get("contents", list(PARTS)):
                if part in contents:
                    raise DataError(f"{path}: two part files hold the {part}; keep one")
                contents.append(part)
                prefix = "slice_" if part == "slices" else "vol_"
                merged.update({k: v for k, v in arrays.items() if k.startswith(prefix)})
            merged.update({k: v for k, v in arrays.items() if k.startswith("list_") or k == "meta"})
        missing = [p for p in PARTS if p not in contents]
        if missing:
            raise DataError(f"{path}: the pack folder lacks its {missing[0]} part ({PARTS[missing[0]]})")
        self.pack_meta["contents"] = contents
        return merged

    def _load_file(self, path: Path) -> Dict[str, np.ndarray]:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: not a readable pack file (.npz from `ssl-mamba data pack`): {exc}") from None
        meta = json.loads(str(arrays["meta"])) if "meta" in arrays else {}
        if meta.get("format") != FORMAT:
            raise DataError(f"{path}: not an ssl-mamba pack (no '{FORMAT}' meta); make one with `ssl-mamba data pack`")
        self.pack_meta = meta
        return arrays

    def _item(self, prefix: str, i: int) -> Tuple[np.ndarray, np.ndarray]:
        a = self._a
        lo_off, hi_off = int(a[f"{prefix}_offset"][i]), int(a[f"{prefix}_offset"][i + 1])
        shape = tuple(int(s) for s in a[f"{prefix}_shape"][i])
        lo, hi = (float(v) for v in a[f"{prefix}_range"][i])
        image = dequantise(a[f"{prefix}_image"][lo_off:hi_off], lo, hi, self._levels).reshape(shape)
        label = a[f"{prefix}_label"][lo_off:hi_off].reshape(shape)
        return check_pair(image, label, f"{self.root}:{prefix}[{i}]", len(shape))

    def read_slice(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        if name not in self._slice_index:
            raise DataError(f"{self.root}: slice {name!r} is not in the pack")
        return self._item("slice", self._slice_index[name])

    def volume_names(self, split: str) -> List[str]:
        self._check_split(split)
        return list(self._lists[split])

    def has_volume(self, name: str) -> bool:
        return name in self._vol_index

    def read_volume(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        if name not in self._vol_index:
            raise DataError(f"{self.root}: volume {name!r} is not in the pack")
        return self._item("vol", self._vol_index[name])
