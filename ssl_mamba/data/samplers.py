"""Batch samplers whose every draw is a pure function of (seed, batch number).

Both samplers are endless and random-access: batch `b` is computed from the seed and `b` alone,
never from a running random state, so resuming at batch k is exact (`state_dict` holds only the
next batch number) and DataLoader prefetching cannot shift anything.  Each yielded batch is a
list of `(dataset_index, sample_seed)` pairs; the dataset seeds its augmentation from
`sample_seed`.

Permutations: the pass `p` of a stream is `Generator(SeedSequence([seed, stream_id, p]))
.permutation(n)`, so every pass reshuffles independently.
"""
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np

from ..errors import DataError

Pair = Tuple[int, int]
_LABELED, _UNLABELED, _SAMPLE = 1, 2, 3


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that is a pure function of non-negative integer `keys` (via SeedSequence)."""
    if any(k < 0 for k in keys):
        raise DataError(f"seeds must be non-negative integers, got {keys}")
    state = np.random.SeedSequence(list(keys)).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def sample_seed(seed: int, batch: int, position: int) -> int:
    """The augmentation seed of row `position` of batch `batch`."""
    return derive_seed(seed, _SAMPLE, batch, position)


class _PermutedStream:
    """An endless stream over `indices`: pass after pass, each a fresh seeded permutation."""

    def __init__(self, indices: Sequence[int], seed: int, stream_id: int):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.seed, self.stream_id = seed, stream_id
        self._cache: Dict[int, np.ndarray] = {}

    def _pass(self, p: int) -> np.ndarray:
        if p not in self._cache:
            if len(self._cache) > 4:
                self._cache.pop(min(self._cache))
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, self.stream_id, p])))
            self._cache[p] = self.indices[rng.permutation(len(self.indices))]
        return self._cache[p]

    def take(self, start: int, count: int) -> List[int]:
        """Elements [start, start + count) of the endless stream."""
        n = len(self.indices)
        return [int(self._pass(i // n)[i % n]) for i in range(start, start + count)]


class _Resumable:
    """Shared position handling: `batch` is the number of the next batch to yield."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.batch = 0

    def batch_at(self, b: int) -> List[Pair]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[List[Pair]]:
        while True:
            b = self.batch
            self.batch += 1
            yield self.batch_at(b)

    def state_dict(self) -> dict:
        return {"batch": self.batch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if int(state["seed"]) != self.seed:
            raise DataError(f"sampler state was saved with seed {state['seed']}, this run uses seed {self.seed}")
        self.batch = int(state["batch"])

    def _with_seeds(self, b: int, indices: List[int]) -> List[Pair]:
        return [(i, sample_seed(self.seed, b, j)) for j, i in enumerate(indices)]


class TwoStreamSampler(_Resumable):
    """SSL4MIS's TwoStreamBatchSampler, endless: `labeled_batch_size` labeled indices first, then
    `batch_size - labeled_batch_size` unlabeled ones.

    Labeled side: each pass is a fresh permutation cut into chunks of labeled_batch_size with the
    incomplete tail dropped (as the original's epoch).  Unlabeled side: one endless stream of
    fresh permutations, chunks may cross pass boundaries (as the original's iterate_eternally).
    """

    def __init__(self, labeled: Sequence[int], unlabeled: Sequence[int], batch_size: int,
                 labeled_batch_size: int, seed: int):
        super().__init__(seed)
        n_unlab = batch_size - labeled_batch_size
        if labeled_batch_size < 1 or n_unlab < 1:
            raise DataError(f"labeled_batch_size ({labeled_batch_size}) must be between 1 and batch_size - 1 "
                            f"({batch_size - 1})")
        if len(labeled) < labeled_batch_size:
            raise DataError(f"only {len(labeled)} labeled slices, fewer than labeled_batch_size "
                            f"({labeled_batch_size}); label more cases or lower the batch size")
        if len(unlabeled) < n_unlab:
            raise DataError(f"only {len(unlabeled)} unlabeled slices, fewer than the unlabeled part of the batch "
                            f"({batch_size} - {labeled_batch_size} = {n_unlab}); label fewer cases")
        self.labeled_batch_size, self.unlabeled_batch_size = labeled_batch_size, n_unlab
        self.batches_per_pass = len(labeled) // labeled_batch_size
        self._lab = _PermutedStream(labeled, self.seed, _LABELED)
        self._unlab = _PermutedStream(unlabeled, self.seed, _UNLABELED)

    def batch_at(self, b: int) -> List[Pair]:
        p, k = divmod(b, self.batches_per_pass)
        n = len(self._lab.indices)
        lab = self._lab.take(p * n + k * self.labeled_batch_size, self.labeled_batch_size)
        unlab = self._unlab.take(b * self.unlabeled_batch_size, self.unlabeled_batch_size)
        return self._with_seeds(b, lab + unlab)

    def __len__(self) -> int:
        """Batches per labeled pass (the original sampler's len)."""
        return self.batches_per_pass


class ShuffleSampler(_Resumable):
    """Supervised sampling over `indices`: one endless reshuffled stream cut into full batches.

    Unlike the originals' DataLoader (shuffle=True, drop_last=False, whose last batch of each
    epoch is short), batches may cross epoch boundaries, so every batch has `batch_size` rows and
    each epoch still shows every index exactly once.
    """

    def __init__(self, indices: Sequence[int], batch_size: int, seed: int):
        super().__init__(seed)
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if len(indices) < batch_size:
            raise DataError(f"only {len(indices)} labeled slices, fewer than batch_size ({batch_size})")
        self.batch_size = batch_size
        self._stream = _PermutedStream(indices, self.seed, _LABELED)

    def batch_at(self, b: int) -> List[Pair]:
        return self._with_seeds(b, self._stream.take(b * self.batch_size, self.batch_size))

    def __len__(self) -> int:
        """Batches per epoch, rounded up (the originals' len with drop_last=False)."""
        return -(-len(self._stream.indices) // self.batch_size)


class ShardedSampler:
    """Rank `rank`'s share of another sampler's GLOBAL batches (data-parallel training).

    Every rank draws the same global batch b from the wrapped sampler and keeps rows
    rank::world_size of its first `n_labeled` (labeled) rows and rank::world_size of the rest, so
    each rank loads only its own slices and the union over ranks is exactly the 1-process batch
    (each row keeps the sample seed of its global position, so CPU augmentation is identical too).
    Position and state are the wrapped sampler's.
    """

    def __init__(self, sampler: _Resumable, n_labeled: int, batch_size: int, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside the world of {world_size} process(es)")
        for part, size in (("labeled", n_labeled), ("unlabeled", batch_size - n_labeled)):
            if size % world_size:
                raise DataError(f"the {part} part of the global batch ({size} rows) does not divide by the "
                                f"number of processes ({world_size})")
        self.sampler, self.n_labeled = sampler, n_labeled
        self.rank, self.world_size = rank, world_size

    def local_rows(self, rows: List[Pair]) -> List[Pair]:
        lab, unlab = rows[: self.n_labeled], rows[self.n_labeled:]
        return lab[self.rank::self.world_size] + unlab[self.rank::self.world_size]

    def batch_at(self, b: int) -> List[Pair]:
        return self.local_rows(self.sampler.batch_at(b))

    def __iter__(self) -> Iterator[List[Pair]]:
        while True:
            b = self.sampler.batch
            self.sampler.batch += 1
            yield self.batch_at(b)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)

    def __len__(self) -> int:
        return len(self.sampler)
