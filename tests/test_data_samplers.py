"""Samplers: TwoStreamBatchSampler structure, reshuffling, and batches as a pure function of (seed, b)."""
import itertools

import pytest

from ssl_mamba.data import ShuffleSampler, TwoStreamSampler


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_two_stream_layout_and_passes():
    labeled, unlabeled = list(range(10)), list(range(10, 30))
    s = TwoStreamSampler(labeled, unlabeled, batch_size=5, labeled_batch_size=3, seed=1)
    assert len(s) == 3  # floor(10 / 3), incomplete tail dropped
    batches = _take(s, 9)
    for b in batches:
        idx = [i for i, _ in b]
        assert len(idx) == 5 and set(idx[:3]) <= set(labeled) and set(idx[3:]) <= set(unlabeled)
    passes = [[i for b in batches[p * 3:(p + 1) * 3] for i, _ in b[:3]] for p in range(3)]
    for p in passes:
        assert len(set(p)) == 9  # no repeats inside a labeled pass
    assert passes[0] != passes[1]  # reshuffled each pass
    unlab = [i for b in batches for i, _ in b[3:]]  # 18 = one full unlabeled pass would be 20
    assert len(set(unlab[:18])) == 18
    seeds = [sd for b in batches for _, sd in b]
    assert len(set(seeds)) == len(seeds)


def test_resume_at_batch_k_equals_uninterrupted_stream():
    make = lambda: TwoStreamSampler(range(7), range(7, 40), 6, 2, seed=5)  # noqa: E731
    straight = _take(make(), 20)
    resumed = make()
    _take(resumed, 3)  # consumed some, then restored elsewhere
    resumed.load_state_dict({"batch": 11, "seed": 5})
    assert _take(resumed, 9) == straight[11:]
    other = TwoStreamSampler(range(7), range(7, 40), 6, 2, seed=6)
    assert _take(other, 3) != straight[:3]
    with pytest.raises(Exception, match="seed 5, this run uses seed 6"):
        other.load_state_dict(make().state_dict())


def test_shuffle_sampler_crosses_epochs_with_full_batches():
    s = ShuffleSampler(list(range(100, 110)), batch_size=4, seed=0)
    assert len(s) == 3
    flat = [i for b in _take(s, 5) for i, _ in b]
    assert all(len(b) == 4 for b in _take(s, 3))
    assert sorted(flat[:10]) == list(range(100, 110)) and sorted(flat[10:20]) == list(range(100, 110))
    assert flat[:10] != flat[10:20]
    s2 = ShuffleSampler(list(range(100, 110)), batch_size=4, seed=0)
    s2.load_state_dict({"batch": 2, "seed": 0})
    assert _take(s2, 3) == _take(ShuffleSampler(list(range(100, 110)), 4, 0), 5)[2:]
