"""Augmentation: the faithful CPU RandomGenerator, the batched affine version, photometric views."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from ssl_mamba.data.augment import (_angle_matrices, batched_affine, cutout, draw_affine, intensity_jitter,
                                    pixel_maps_to_theta, random_generator, strong_view, weak_view)


def _pair(h=30, w=26, seed=0):
    """An image with 4 grey levels and the label that is a function of it (label = 3 * image)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 4, (h // 3 + 1, w // 2 + 1))
    label = np.kron(blocks, np.ones((3, 2), dtype=np.int64))[:h, :w].astype(np.uint8)  # (h, w), 3x2 blocks
    label[0, :] = 1  # an asymmetric marker row so every transform is distinguishable
    return (label / 3.0).astype(np.float32), label


def _dihedral(a):
    return [np.flip(np.rot90(a, k), axis=ax) for k in range(4) for ax in range(2)]


def test_cpu_pipeline_keeps_image_and_label_aligned_and_resizes():
    image, label = _pair()
    for seed in range(40):
        out_img, out_lab = random_generator(image, label, (32, 48), np.random.default_rng(seed))
        assert out_img.shape == out_lab.shape == (32, 48) and out_img.dtype == np.float32
        assert np.array_equal(np.rint(out_img * 3).astype(np.uint8), out_lab)


def test_cpu_branches_are_the_originals():
    image, label = _pair(24, 24)
    rotflip = random_generator(image, label, (24, 24), np.random.default_rng(3), rotflip_prob=1.0)
    assert any(np.array_equal(rotflip[1], d) for d in _dihedral(label))
    out = random_generator(image, label, (24, 24), np.random.default_rng(4), rotflip_prob=0.0, rotate_prob=1.0)
    refs = [ndimage.rotate(label, a, order=0, reshape=False) for a in range(-20, 20)]
    assert any(np.array_equal(out[1], r) for r in refs)
    same = random_generator(image, label, (24, 24), np.random.default_rng(4), rotflip_prob=0.0, rotate_prob=0.0)
    assert np.array_equal(same[1], label)
    # Branch frequencies with the defaults: rot/flip 0.5, rotate 0.25, none 0.25 (+ rotations by 0).
    hits = {"rf": 0, "none": 0, "rot": 0}
    image, label = _pair(60, 60)
    dihedral = _dihedral(label)
    for s in range(800):
        out = random_generator(image, label, (60, 60), np.random.default_rng(s))[1]
        if np.array_equal(out, label):
            hits["none"] += 1
        elif any(np.array_equal(out, d) for d in dihedral):
            hits["rf"] += 1
        else:
            hits["rot"] += 1
    assert abs(hits["rf"] / 800 - 0.5) < 0.06 and abs(hits["none"] / 800 - 0.25 * 41 / 40) < 0.05, hits


def test_batched_rot_flip_is_exactly_a_dihedral_transform():
    image, label = _pair(20, 20)
    img = torch.from_numpy(image)[None, None].repeat(16, 1, 1, 1)
    lab = torch.from_numpy(label)[None].repeat(16, 1, 1).long()
    gen = torch.Generator().manual_seed(0)
    out_img, out_lab = batched_affine(img, lab, gen, rotflip_prob=1.0)
    seen = set()
    for i in range(16):
        matches = [j for j, d in enumerate(_dihedral(label)) if np.array_equal(out_lab[i].numpy(), d)]
        assert matches, f"row {i} is not a rot90/flip of the input"
        seen.add(matches[0])
        assert torch.equal((out_img[i, 0] * 3).round().long(), out_lab[i])
    assert len(seen) >= 4


def test_batched_rotation_matches_scipy_rotate_on_non_square():
    _, label = _pair(30, 40)
    lab = torch.from_numpy(label)[None, None].float()
    for deg in (-17, 9):
        theta = pixel_maps_to_theta(_angle_matrices(torch.tensor([deg])), 30, 40)
        grid = torch.nn.functional.affine_grid(theta, [1, 1, 30, 40], align_corners=False)
        out = torch.nn.functional.grid_sample(lab, grid, mode="nearest", align_corners=False)[0, 0].numpy()
        ref = ndimage.rotate(label, deg, order=0, reshape=False)
        assert (out == ref).mean() > 0.97


def test_batched_is_seeded_and_aligned():
    image, label = _pair(24, 24)
    img = torch.from_numpy(image)[None, None].repeat(8, 1, 1, 1)
    lab = torch.from_numpy(label)[None].repeat(8, 1, 1).long()
    a = batched_affine(img, lab, torch.Generator().manual_seed(5))
    b = batched_affine(img, lab, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[1].dtype == torch.long
    assert torch.equal((a[0][:, 0] * 3).round().long(), a[1])
    theta = draw_affine(1000, 24, 24, torch.Generator().manual_seed(1), rotflip_prob=0.0, rotate_prob=0.0)
    assert torch.equal(theta, torch.eye(2, 3).expand(1000, 2, 3))


def test_views():
    x = torch.rand(4, 1, 16, 16)
    y = intensity_jitter(x, torch.Generator().manual_seed(0), brightness=0.0, contrast=0.0)
    assert torch.allclose(x, y, atol=1e-6)
    out, keep = cutout(x, torch.Generator().manual_seed(0), frac=0.25)
    assert keep.shape == (4, 1, 16, 16) and torch.all((1 - keep).sum(dim=(1, 2, 3)) == 16)
    assert torch.all(out[keep == 0] == 0) and torch.equal(out[keep == 1], x[keep == 1])
    w = weak_view(x, torch.Generator().manual_seed(0))
    s, _ = strong_view(x, torch.Generator().manual_seed(0))
    assert (w - x).abs().mean() < (s - x).abs().mean()
    with pytest.raises(RuntimeError):
        cutout(x, torch.Generator().manual_seed(0), frac=2.0)
