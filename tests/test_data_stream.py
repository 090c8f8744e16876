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


def _stream(root, augment="cpu", workers=0, labeled_bs=2, seed=3):
    src = open_dataset(root)
    cfg = DataConfig(root=str(root), patch_size=[32, 32], augment=augment, num_workers=workers)
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
