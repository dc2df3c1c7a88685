"""Tests for model.transforms: laterality, resampling, normalisation, maps, augmentation."""

import numpy as np
import pytest
import torch

from model.transforms import (
    augment,
    canonicalise,
    normalise_intensity,
    resample_volume,
    restore_map,
    validate_normalisation,
)


def _ramp(shape=(8, 12, 10)) -> np.ndarray:
    """Volume whose intensity increases along W (macula side dark, nerve side bright)."""
    s, d, w = shape
    return np.broadcast_to(np.linspace(0, 250, w, dtype=np.float32), shape).copy()


def test_canonicalise_flips_w_only_for_left_eye():
    vol = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert canonicalise(vol, "R") is vol
    left = canonicalise(vol, "L")
    np.testing.assert_array_equal(left, vol[:, :, ::-1])
    np.testing.assert_array_equal(canonicalise(left, "L"), vol)


@pytest.mark.parametrize("bad", ["OD", "l", "", None])
def test_canonicalise_rejects_unknown_laterality(bad):
    with pytest.raises(ValueError, match="laterality"):
        canonicalise(np.zeros((2, 2, 2)), bad)


def test_canonicalise_rejects_non_3d():
    with pytest.raises(ValueError, match="3-D"):
        canonicalise(np.zeros((2, 2)), "R")


def test_resample_identity_and_any_axis_mismatch():
    vol = np.random.default_rng(0).integers(0, 255, (8, 12, 10)).astype(np.uint8)
    same = resample_volume(vol, (8, 12, 10))
    assert same.dtype == np.float32
    np.testing.assert_array_equal(same, vol.astype(np.float32))
    # D10: a mismatch on a single axis must resize too.
    for grid in [(16, 12, 10), (8, 24, 10), (8, 12, 5)]:
        out = resample_volume(vol, grid)
        assert out.shape == grid


def test_resample_preserves_constant_and_range():
    vol = np.full((6, 8, 4), 100, np.uint8)
    out = resample_volume(vol, (12, 16, 8))
    np.testing.assert_allclose(out, 100.0, atol=1e-4)
    ramp = resample_volume(_ramp(), (4, 6, 20))
    assert ramp.min() >= 0 and ramp.max() <= 250 + 1e-3
    assert np.all(np.diff(ramp[0, 0]) >= 0)


def test_normalise_scale_and_zscore():
    vol = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    np.testing.assert_allclose(normalise_intensity(vol, {"kind": "scale", "divisor": 255}),
                               vol / 255.0, rtol=1e-6)
    z = normalise_intensity(vol, {"kind": "zscore"})
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-5
    fixed = normalise_intensity(vol, {"kind": "zscore", "mean": 51, "std": 51})
    np.testing.assert_allclose(fixed.ravel(), [-1, 4, 0, 1], rtol=1e-6)
    t = normalise_intensity(torch.tensor(vol), {"kind": "scale", "divisor": 255})
    assert isinstance(t, torch.Tensor) and float(t.max()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "spec, key",
    [({}, "kind"), ({"kind": "scale"}, "divisor"), ({"kind": "scale", "divisor": 0}, "divisor"),
     ({"kind": "zscore", "mean": 1}, "std"), ({"kind": "minmax"}, "minmax")],
)
def test_normalisation_spec_errors_name_the_key(spec, key):
    with pytest.raises(ValueError, match=key):
        validate_normalisation(spec)


def test_restore_map_shape_range_and_left_flip():
    small = np.zeros((2, 3, 2), np.float32)
    small[:, :, 0] = 1.0  # hot on the macula side (canonical, first half of W)
    right = restore_map(small, (16, 24, 16), "R")
    left = restore_map(small, (16, 24, 16), "L")
    assert right.shape == (16, 24, 16) and right.dtype == np.float32
    assert right.min() >= 0 and right.max() <= 1
    assert right[:, :, :8].mean() > right[:, :, 8:].mean()
    assert left[:, :, 8:].mean() > left[:, :, :8].mean()  # left eye: macula on the other side
    np.testing.assert_array_equal(left, right[:, :, ::-1])


def test_restore_map_clips_overshoot_and_accepts_tensor():
    out = restore_map(torch.full((2, 2, 2), 1.5), (4, 4, 4), "R")
    assert out.max() == 1.0


def test_augment_deterministic_and_in_range():
    vol = _ramp((16, 24, 16))
    a = augment(vol, np.random.default_rng(3))
    b = augment(vol, np.random.default_rng(3))
    c = augment(vol, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == vol.shape and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 255 + 1e-3


def test_augment_never_mirrors_w():
    """D9: the W profile of a left-to-right ramp stays increasing under every augmentation."""
    vol = _ramp((16, 24, 16))
    flipped_s = 0
    s_profile = np.linspace(0, 1, 16, dtype=np.float32)[:, None, None]
    vol_s = vol * 0.5 + 100 * s_profile  # also increasing along S, to see S flips
    for seed in range(40):
        out = augment(vol_s, np.random.default_rng(seed), s_flip=True)
        w_profile = out.mean(axis=(0, 1))
        assert w_profile[-1] > w_profile[0], f"seed {seed} mirrored W"
        assert np.all(np.diff(w_profile) >= -1e-3)
        flipped_s += out.mean(axis=(1, 2))[0] > out.mean(axis=(1, 2))[-1]
    assert 5 < flipped_s < 35  # the S flip ablation does flip, about half of the time


def test_augment_without_s_flip_keeps_s_order():
    vol = np.broadcast_to(np.linspace(0, 200, 16, dtype=np.float32)[:, None, None], (16, 8, 8))
    for seed in range(20):
        prof = augment(vol, np.random.default_rng(seed)).mean(axis=(1, 2))
        assert prof[-1] > prof[0]


def test_augment_rejects_w_flip_key():
    with pytest.raises(ValueError, match="no W flip"):
        augment(np.zeros((4, 4, 4)), np.random.default_rng(0), keys="gzf")
