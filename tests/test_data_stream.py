"""The training stream: Batch layout, exact resume with and without workers, batched augmentation."""
from pathlib import Path

import pytest
import torch

from ssl_mamba.config import DataConfig
from ssl_mamba.data import build_train_stream, generate_phantom, make_split, open_dataset


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom(root, n_train_patients=4, n_val_patients=1, n_test_patients=0, slices=(3, 4), size=(36, 44))
    return root


def _stream(root, augment="cpu", workers=0, labeled_bs=2, seed=3, intensity_scale=None):
    src = open_dataset(root)
    cfg = DataConfig(root=str(root), patch_size=[32, 32], augment=augment, num_workers=workers,
                     intensity_scale=intensity_scale)
    return build_train_stream(cfg, src, make_split(src, labeled_cases=2), 4, labeled_bs, seed, "cpu")


def _collect(stream, n):
    return [next(stream) for _ in range(n)]


def _same(a, b):
    return all(torch.equal(x.image, y.image) and torch.equal(x.label, y.label) and torch.equal(x.indices, y.indices)
               for x, y in zip(a, b))


def test_batch_layout_labeled_rows_first(phantom):
    src = open_dataset(phantom)
    split = make_split(src, labeled_cases=2)
    batches = _collect(_stream(phantom), 6)
    for b in batches:
        assert b.image.shape == (4, 1, 32, 32) and b.image.dtype == torch.float32
        assert b.label.shape == (4, 32, 32) and b.label.dtype == torch.long and b.n_labeled == 2
        assert set(b.indices[:2].tolist()) <= set(split.labeled_indices)
        assert set(b.indices[2:].tolist()) <= set(split.unlabeled_indices)
    sup = _collect(_stream(phantom, labeled_bs=None), 4)
    assert all(b.n_labeled == 4 and set(b.indices.tolist()) <= set(split.labeled_indices) for b in sup)


@pytest.mark.parametrize("augment,workers", [("cpu", 0), ("cpu", 2), ("gpu", 0)])
def test_resume_at_batch_k_gives_identical_batches(phantom, augment, workers):
    straight = _stream(phantom, augment, workers)
    reference = _collect(straight, 7)
    straight.close()
    interrupted = _stream(phantom, augment, workers)
    _collect(interrupted, 3)
    state = interrupted.state_dict()
    interrupted.close()
    resumed = _stream(phantom, augment, workers)
    resumed.load_state_dict(state)
    assert _same(_collect(resumed, 4), reference[3:])
    resumed.load_state_dict({"batch": 5, "seed": 3})  # jump back while workers are running
    assert _same(_collect(resumed, 2), reference[5:])
    resumed.close()
    assert not _same(_collect(_stream(phantom, augment, workers, seed=4), 2), reference[:2])


def test_workers_and_no_workers_give_the_same_stream(phantom):
    a = _stream(phantom, "cpu", 0)
    b = _stream(phantom, "cpu", 2)
    assert _same(_collect(a, 3), _collect(b, 3))
    b.close()


def test_gpu_mode_augments_but_keeps_labels_valid(phantom):
    plain = _collect(_stream(phantom, "none"), 3)
    aug = _collect(_stream(phantom, "gpu"), 3)
    assert all(torch.equal(p.indices, a.indices) for p, a in zip(plain, aug))
    assert any(not torch.equal(p.label, a.label) for p, a in zip(plain, aug))
    assert all(int(a.label.max()) <= 3 and int(a.label.min()) >= 0 for a in aug)


@pytest.mark.parametrize("augment, workers", [("cpu", 0), ("cpu", 2), ("gpu", 0)])
def test_intensity_scale_darkens_each_image_by_its_own_factor_and_keeps_the_geometry(phantom, augment, workers):
    """data.intensity_scale multiplies each training image by a log-uniform factor drawn after the
    geometric draws: the same rows, labels and geometry as without it, images scaled within the range,
    a different factor per image; [1, 1] changes nothing; the stream still resumes exactly."""
    plain = _collect(_stream(phantom, augment, workers), 4)
    same = _collect(_stream(phantom, augment, workers, intensity_scale=[1.0, 1.0]), 4)
    assert _same(plain, same)
    darker = _collect(_stream(phantom, augment, workers, intensity_scale=[0.3, 0.9]), 4)
    factors = []
    for p, d in zip(plain, darker):
        assert torch.equal(p.label, d.label) and torch.equal(p.indices, d.indices)
        for row in range(p.image.shape[0]):
            bright = p.image[row] > 0.05
            ratio = d.image[row][bright] / p.image[row][bright]
            assert bright.any() and torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5)  # one factor
            factors.append(float(ratio[0]))
    assert 0.3 <= min(factors) and max(factors) <= 0.9 and len({round(f, 6) for f in factors}) == len(factors)
    stream = _stream(phantom, augment, workers, intensity_scale=[0.3, 0.9])
    _collect(stream, 2)
    resumed = _stream(phantom, augment, workers, intensity_scale=[0.3, 0.9])
    resumed.load_state_dict(stream.state_dict())
    assert _same(_collect(resumed, 2), darker[2:])


def test_intensity_scale_factors_are_log_uniform():
    """The factor's logarithm is uniform on [log low, log high] (so halving and doubling are as likely
    in a symmetric range), on both paths; 4000 draws from fixed seeds."""
    import math

    import numpy as np

    from ssl_mamba.data.augment import batched_intensity_scale, random_intensity_scale

    ones = np.ones((1, 1), np.float32)
    cpu = np.log([float(random_intensity_scale(ones, np.random.default_rng(i), 0.25, 4.0)[0, 0]) for i in range(4000)])
    gen = torch.Generator().manual_seed(5)
    gpu = torch.log(batched_intensity_scale(torch.ones(4000, 1, 1, 1), gen, 0.25, 4.0)).flatten().numpy()
    for logs in (cpu, gpu):
        assert logs.min() >= math.log(0.25) - 1e-6 and logs.max() <= math.log(4.0) + 1e-6
        assert abs(float(np.mean(logs))) < 0.05  # the midpoint of [-log 4, log 4]
        assert abs(float(np.mean(logs < 0)) - 0.5) < 0.03  # halving as likely as doubling
        assert abs(float(np.std(logs)) - 2 * math.log(4.0) / math.sqrt(12)) < 0.03  # uniform's spread
