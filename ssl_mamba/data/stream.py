"""The training stream: sampler -> DataLoader workers -> `Batch` on the device, resumable exactly.

Augmentation modes (`data_cfg.augment`):
* "cpu": workers run the faithful `random_generator`, seeded per row from the sampler's
  `sample_seed`;
* "gpu": workers only resize to the patch size; the whole batch is augmented on the device by
  `batched_affine` with a torch.Generator seeded from (seed, batch number);
* "none": resize only.
`data_cfg.intensity_scale` then scales each image (cpu: in the worker, gpu: on the device), with
draws that follow the geometric ones from the same stream.
Every draw is therefore a pure function of (seed, batch number), and `state_dict()` is just the
number of batches handed out so far.
"""
import re
import signal
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import DataConfig
from ..errors import ConfigError, DataError, UserError
from .augment import batched_affine, batched_intensity_scale, random_generator, random_intensity_scale, zoom_to
from .batch import Batch
from .samplers import ShardedSampler, ShuffleSampler, TwoStreamSampler, derive_seed
from .sources import SegmentationSource
from .split import LabeledSplit

_GPU_STREAM = 4  # stream id of the batched-augmentation seeds (samplers use 1..3)


class SliceDataset(Dataset):
    """Training slices of `source`, indexed by `(dataset_index, sample_seed)` pairs."""

    def __init__(self, source: SegmentationSource, patch_size: Sequence[int], num_classes: int,
                 augment: str = "cpu", rotflip_prob: float = 0.5, rotate_prob: float = 0.5,
                 intensity_scale: Optional[Sequence[float]] = None):
        if augment not in ("cpu", "gpu", "none"):
            raise DataError(f"data.augment is {augment!r}; choose cpu, gpu or none")
        self.source, self.patch_size = source, tuple(int(p) for p in patch_size)
        self.num_classes, self.augment = num_classes, augment
        self.rotflip_prob, self.rotate_prob = rotflip_prob, rotate_prob
        self.intensity_scale = tuple(intensity_scale) if intensity_scale else None

    def __len__(self) -> int:
        return len(self.source.train_slice_names)

    def __getitem__(self, item: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor, int]:
        index, seed = item
        name = self.source.train_slice_names[index]
        image, label = self.source.read_slice(name)
        if label.size and int(label.max()) >= self.num_classes:
            raise DataError(f"slice {name!r} of {self.source.root}: label value {int(label.max())} >= "
                            f"data.num_classes ({self.num_classes})")
        if self.augment == "cpu":
            rng = np.random.Generator(np.random.PCG64(seed))
            image, label = random_generator(image, label, self.patch_size, rng, self.rotflip_prob, self.rotate_prob)
            if self.intensity_scale:
                image = random_intensity_scale(image, rng, *self.intensity_scale)
        else:
            image, label = zoom_to(image, self.patch_size), zoom_to(label, self.patch_size)
        img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]  # (1, H, W)
        return img, torch.from_numpy(np.ascontiguousarray(label, dtype=np.uint8)), index


def _collate(rows: List[Tuple[torch.Tensor, torch.Tensor, int]]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = torch.stack([r[0] for r in rows])  # (N, 1, H, W)
    labels = torch.stack([r[1] for r in rows])  # (N, H, W) uint8
    return images, labels, torch.tensor([r[2] for r in rows], dtype=torch.long)


def _worker_message(exc: UserError) -> str:
    """The original one-line message of a UserError re-raised from a DataLoader worker."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    for ln in reversed(lines):
        m = re.match(r"^[\w.]*(?:DataError|ConfigError|UserError): (.*)$", ln.strip())
        if m:
            return m.group(1)
    return lines[-1] if lines else str(exc)


def ignore_stop_signals(_worker_id: int) -> None:
    """Loader workers leave SIGTERM / SIGINT to the trainer, which stops cleanly on them (writes
    last.pt) and then shuts the workers down; a worker killed by the same signal first would make
    the main process fail before it could save."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class TrainStream:
    """An endless iterator of `Batch` on `device`, with labeled rows first.

    `state_dict()` / `load_state_dict()` save and restore the position (batches handed out), so a
    resumed run continues with exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, dataset: SliceDataset, sampler, n_labeled: int, seed: int, device: torch.device,
                 num_workers: int = 0, rank: int = 0):
        self.dataset, self.sampler, self.n_labeled = dataset, sampler, n_labeled
        self.seed, self.device, self.rank = int(seed), torch.device(device), int(rank)
        cuda = self.device.type == "cuda"
        self.loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=_collate,
                                 pin_memory=cuda, persistent_workers=num_workers > 0,
                                 worker_init_fn=ignore_stop_signals if num_workers > 0 else None)
        self.position = 0
        self._iter: Optional[Iterator] = None

    def state_dict(self) -> dict:
        return {"batch": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if int(state["seed"]) != self.seed:
            raise DataError(f"data stream state was saved with seed {state['seed']}, this run uses seed {self.seed}")
        self.position = int(state["batch"])
        self._iter = None

    def __iter__(self) -> "TrainStream":
        return self

    def __next__(self) -> Batch:
        if self._iter is None:
            self.sampler.load_state_dict({"batch": self.position, "seed": self.seed})
            self._iter = iter(self.loader)
        try:
            images, labels, indices = next(self._iter)
        except UserError as exc:
            raise DataError(_worker_message(exc)) from None
        b = self.position
        self.position += 1
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True).long()
        if self.dataset.augment == "gpu":
            generator = self._generator(b)
            images, labels = batched_affine(images, labels, generator, self.dataset.rotflip_prob,
                                            self.dataset.rotate_prob)
            if self.dataset.intensity_scale:
                images = batched_intensity_scale(images, generator, *self.dataset.intensity_scale)
        return Batch(image=images, label=labels, n_labeled=self.n_labeled, indices=indices)

    def _generator(self, b: int) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        # Rank r > 0 of a data-parallel run draws its own rows' transforms (not the 1-process draws).
        keys = (self.seed, _GPU_STREAM, b) if self.rank == 0 else (self.seed, _GPU_STREAM, b, self.rank)
        gen.manual_seed(derive_seed(*keys))
        return gen

    def close(self) -> None:
        """Stop the worker processes (they are persistent)."""
        it, self._iter = self._iter, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def build_train_stream(data_cfg: DataConfig, source: SegmentationSource, split: LabeledSplit, batch_size: int,
                       labeled_batch_size: Optional[int], seed: int, device, rank: int = 0,
                       world_size: int = 1) -> TrainStream:
    """The training stream of a run.

    labeled_batch_size None (or == batch_size): every row labeled, drawn from the labeled slices only
    with `ShuffleSampler`; otherwise `TwoStreamSampler` with labeled_batch_size labeled rows first.
    batch_size and labeled_batch_size are global: with world_size > 1 this rank's stream yields its
    `ShardedSampler` share (labeled_batch_size / world_size labeled rows first).
    """
    if isinstance(data_cfg.intensity_scale, str):
        raise ConfigError(f"data.intensity_scale {data_cfg.intensity_scale!r} must be resolved to [low, high] "
                          "before a stream is built (the trainer does so at a run's start)")
    dataset = SliceDataset(source, data_cfg.patch_size, data_cfg.num_classes, data_cfg.augment,
                           data_cfg.rotflip_prob, data_cfg.rotate_prob, data_cfg.intensity_scale)
    if labeled_batch_size is None or labeled_batch_size >= batch_size:
        sampler = ShuffleSampler(split.labeled_indices, batch_size, seed)
        n_labeled = batch_size
    else:
        sampler = TwoStreamSampler(split.labeled_indices, split.unlabeled_indices, batch_size,
                                   labeled_batch_size, seed)
        n_labeled = labeled_batch_size
    if data_cfg.num_workers < 0:
        raise DataError(f"data.num_workers must be >= 0, got {data_cfg.num_workers}")
    if world_size > 1:
        sampler = ShardedSampler(sampler, n_labeled, batch_size, rank, world_size)
        n_labeled //= world_size
    return TrainStream(dataset, sampler, n_labeled, seed, device, data_cfg.num_workers, rank)
