"""Tests of the synthetic OCT phantoms (model/phantoms.py)."""

import numpy as np
import pytest

from model.phantoms import (
    GLAUCOMA_SIGNS,
    LAYERS,
    Phantom,
    layer_boundaries,
    make_phantom,
    phantom_set,
)

SMALL = (16, 24, 16)
SHAPE = (32, 48, 28)


def _hemi_slices(n_frames: int) -> dict[str, slice]:
    return {"superior": slice(0, n_frames // 2), "inferior": slice(n_frames // 2, n_frames)}


def _inner_thickness(bounds: np.ndarray, hemi: slice, n_cols: int) -> float:
    """Mean RNFL thickness (voxels) over one hemiretina, temporal to the disc (canonical OD)."""
    rnfl = bounds[1] - bounds[0]
    return float(rnfl[hemi, : int(0.55 * n_cols)].mean())


@pytest.mark.parametrize("shape", [SMALL, (20, 33, 17), (64, 96, 56), (128, 192, 112)])
def test_shape_dtype_and_spacing(shape):
    p = make_phantom(1, glaucoma=True, shape=shape)
    assert isinstance(p, Phantom)
    assert p.volume.shape == shape and p.volume.dtype == np.uint8
    assert p.thinning_mask.shape == shape and p.thinning_mask.dtype == bool
    assert p.thinning_mask.any()
    assert np.allclose(np.multiply(p.spacing_mm, shape), (9.0, 2.0, 12.0))
    # A real image, not a constant: dark vitreous, bright layers.
    assert p.volume.min() < 20 and p.volume.max() > 200 and p.volume.std() > 10


def test_deterministic_by_seed():
    a = make_phantom(7, glaucoma=True, shape=SMALL)
    b = make_phantom(7, glaucoma=True, shape=SMALL)
    c = make_phantom(8, glaucoma=True, shape=SMALL)
    assert np.array_equal(a.volume, b.volume)
    assert np.array_equal(a.thinning_mask, b.thinning_mask)
    assert (a.severity, a.thinned_hemiretina) == (b.severity, b.thinned_hemiretina)
    assert not np.array_equal(a.volume, c.volume)


def test_left_eye_is_mirrored_right_eye():
    right = make_phantom(3, glaucoma=True, laterality="R", shape=SHAPE)
    left = make_phantom(3, glaucoma=True, laterality="L", shape=SHAPE)
    assert (right.laterality, left.laterality) == ("R", "L")
    assert np.array_equal(left.volume, right.volume[..., ::-1])
    assert np.array_equal(left.thinning_mask, right.thinning_mask[..., ::-1])
    assert left.thinned_hemiretina == right.thinned_hemiretina


def test_layout_macula_and_disc():
    """OD: foveal pit in W[:W/2], cup (deepest ILM) in W[W/2:]; OS mirrored."""
    for laterality, disc_half in (("R", 1), ("L", 0)):
        b = layer_boundaries(4, glaucoma=False, laterality=laterality, shape=(64, 96, 56))
        w = b.shape[2]
        cup_col = np.unravel_index(np.argmax(b[0]), b[0].shape)[1]
        assert (cup_col >= w // 2) == bool(disc_half)
        # Fovea: thinnest inner retina (ILM to ONL/EZ boundary) among A-scans with all layers.
        inner = np.where(b[2] - b[1] > 0.5, b[5] - b[0], np.inf)
        fovea_col = np.unravel_index(np.argmin(inner), inner.shape)[1]
        assert (fovea_col < w // 2) == bool(disc_half)


def test_layers_render_in_order():
    """Mean intensity per layer band follows the OCT appearance (bright RNFL/RPE, dark INL/ONL)."""
    p = make_phantom(5, glaucoma=False, shape=(64, 96, 56))
    b = layer_boundaries(5, glaucoma=False, shape=(64, 96, 56))
    z = np.arange(96)[None, :, None] + 0.5
    means = {}
    for k, name in enumerate(LAYERS[1:8], start=1):
        top, bottom = b[k - 1][:, None, :], b[k][:, None, :]
        band = (z > top + 0.6) & (z < bottom - 0.6)  # voxels well inside the layer
        means[name] = p.volume[band].mean()
    vitreous = p.volume[z < b[0][:, None, :] - 2].mean()
    assert vitreous < 25
    assert means["RNFL"] > means["GCL-IPL"] > means["INL"]
    assert means["OPL"] > means["INL"] and means["OPL"] > means["ONL"]
    assert means["EZ/RPE"] > means["ONL"] and means["EZ/RPE"] > means["choroid"]
    assert min(means.values()) > vitreous


def test_normal_has_double_hump_rnfl_and_empty_mask():
    p = make_phantom(11, glaucoma=False, shape=(64, 96, 56))
    assert not p.thinning_mask.any()
    assert p.severity == 0.0 and p.thinned_hemiretina is None and not p.glaucoma
    b = layer_boundaries(11, glaucoma=False, shape=(64, 96, 56))
    profile = (b[1] - b[0])[:, 14:28].mean(1)  # between fovea and disc
    mid = profile[28:36].mean()
    assert profile[:32].max() > 1.5 * mid and profile[32:].max() > 1.5 * mid


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_glaucoma_thins_declared_hemiretina(seed):
    shape = (32, 48, 28)
    g = make_phantom(seed, glaucoma=True, shape=shape)
    assert g.glaucoma and 0.4 <= g.severity <= 1.0
    hemi = _hemi_slices(shape[0])
    other = "inferior" if g.thinned_hemiretina == "superior" else "superior"

    gb = layer_boundaries(seed, glaucoma=True, shape=shape)
    nb = layer_boundaries(seed, glaucoma=False, shape=shape)
    thinned = _inner_thickness(gb, hemi[g.thinned_hemiretina], shape[2])
    assert thinned < _inner_thickness(gb, hemi[other], shape[2])
    assert thinned < 0.9 * _inner_thickness(nb, hemi[g.thinned_hemiretina], shape[2])

    mask = g.thinning_mask
    assert mask.any()
    assert mask[hemi[g.thinned_hemiretina]].sum() >= 0.95 * mask.sum()
    # The mask covers the healthy RNFL + GCL-IPL: above the GCL-IPL/INL boundary.
    z = np.arange(shape[1])[None, :, None]
    assert not (mask & (z >= np.ceil(nb[2])[:, None, :])).any()


def test_glaucoma_and_normal_of_same_seed_differ_in_the_thinned_hemiretina():
    shape = (32, 48, 28)
    g = make_phantom(21, glaucoma=True, shape=shape, severity=0.6)
    n = make_phantom(21, glaucoma=False, shape=shape)
    hemi = _hemi_slices(shape[0])
    temporal = slice(0, int(0.55 * shape[2]))

    def loss(name):
        sl = (hemi[name], slice(None), temporal)
        a, b = n.volume[sl].astype(float).sum(), g.volume[sl].astype(float).sum()
        return (a - b) / a

    other = "inferior" if g.thinned_hemiretina == "superior" else "superior"
    assert loss(g.thinned_hemiretina) > 0.03  # bright RNFL replaced by dark vitreous
    assert loss(g.thinned_hemiretina) > 3 * abs(loss(other))


def test_severity_monotone():
    shape = (32, 48, 28)
    hemi = _hemi_slices(shape[0])
    thickness, lost_signal, sides = [], [], set()
    normal = make_phantom(9, glaucoma=False, shape=shape).volume.astype(float).sum()
    for severity in (0.2, 0.4, 0.6, 0.8, 1.0):
        p = make_phantom(9, glaucoma=True, shape=shape, severity=severity)
        assert p.severity == severity
        sides.add(p.thinned_hemiretina)
        b = layer_boundaries(9, glaucoma=True, shape=shape, severity=severity)
        thickness.append(_inner_thickness(b, hemi[p.thinned_hemiretina], shape[2]))
        lost_signal.append(normal - p.volume.astype(float).sum())
    assert len(sides) == 1
    assert np.all(np.diff(thickness) < 0)
    assert np.all(np.diff(lost_signal) > 0)


def test_random_severity_and_both_hemiretinas():
    phantoms = [make_phantom(s, glaucoma=True, shape=SMALL) for s in range(16)]
    assert all(0.4 <= p.severity <= 1.0 for p in phantoms)
    assert {p.thinned_hemiretina for p in phantoms} == {"superior", "inferior"}


def test_phantom_set_balanced_and_deterministic():
    a = list(phantom_set(10, 5, shape=SMALL))
    b = list(phantom_set(10, 5, shape=SMALL))
    assert len(a) == 10
    assert sum(p.glaucoma for p in a) == 5
    assert [p.seed for p in a] == [p.seed for p in b]
    assert all(np.array_equal(x.volume, y.volume) for x, y in zip(a, b, strict=True))
    assert len({p.seed for p in a}) == 10
    for label in (True, False):
        sides = [p.laterality for p in a if p.glaucoma == label]
        assert sides.count("R") - sides.count("L") in (0, 1)
    # Each phantom is reproducible from its own seed.
    p = a[3]
    again = make_phantom(p.seed, glaucoma=p.glaucoma, laterality=p.laterality, shape=SMALL)
    assert np.array_equal(again.volume, p.volume) and again.severity == p.severity
    # Another set seed gives other eyes.
    c = list(phantom_set(10, 6, shape=SMALL))
    assert not {p.seed for p in a} & {p.seed for p in c}


def test_phantom_set_fraction_and_laterality():
    ps = list(phantom_set(9, 1, shape=SMALL, glaucoma_fraction=1 / 3, laterality="L"))
    assert sum(p.glaucoma for p in ps) == 3
    assert {p.laterality for p in ps} == {"L"}
    assert list(phantom_set(0, 1, shape=SMALL)) == []


@pytest.mark.parametrize(
    "kwargs",
    [dict(laterality="X"), dict(severity=1.5), dict(shape=(16, 24)), dict(shape=(1, 24, 16))],
)
def test_make_phantom_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        make_phantom(0, glaucoma=True, **{"shape": SMALL, **kwargs})


@pytest.mark.parametrize(
    "kwargs", [dict(count=-1), dict(glaucoma_fraction=1.2), dict(laterality="OD")]
)
def test_phantom_set_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        list(phantom_set(**{"count": 2, "seed": 0, "shape": SMALL, **kwargs}))


def test_default_signs_are_both():
    both = make_phantom(5, glaucoma=True, shape=SMALL, signs=("cup", "thinning"))
    default = make_phantom(5, glaucoma=True, shape=SMALL)
    assert default.signs == both.signs == GLAUCOMA_SIGNS
    np.testing.assert_array_equal(default.volume, both.volume)
    assert make_phantom(5, glaucoma=False, shape=SMALL, signs=("cup",)).signs == ()


@pytest.mark.parametrize("seed", [3, 8])
def test_single_signs_add_up_to_glaucoma(seed):
    """Thinning and cup act on separate terms: each alone, they add up to both together."""
    shape = (32, 48, 28)

    def bounds(**kwargs):
        return layer_boundaries(seed, shape=shape, **kwargs).astype(np.float64)

    normal = bounds(glaucoma=False)
    both = bounds(glaucoma=True)
    thinning = bounds(glaucoma=True, signs=("thinning",))
    cup = bounds(glaucoma=True, signs=("cup",))
    np.testing.assert_allclose(both - normal, (thinning - normal) + (cup - normal), atol=1e-3)
    # The cup changes the disc only; the thinning a whole hemiretina.
    cup_area = (np.abs(cup - normal)[0] > 0.1).mean()
    thinning_area = (np.abs(thinning - normal)[0] > 0.1).mean()
    assert 0.0 < cup_area < 0.1 < thinning_area


def test_single_sign_phantoms_keep_the_right_ground_truth():
    full = make_phantom(9, glaucoma=True, shape=SMALL)
    thinning = make_phantom(9, glaucoma=True, shape=SMALL, signs=("thinning",))
    cup = make_phantom(9, glaucoma=True, shape=SMALL, signs=("cup",))
    assert thinning.signs == ("thinning",) and cup.signs == ("cup",)
    assert thinning.thinned_hemiretina == full.thinned_hemiretina is not None
    np.testing.assert_array_equal(thinning.thinning_mask, full.thinning_mask)
    assert cup.thinned_hemiretina is None and not cup.thinning_mask.any()
    assert cup.glaucoma and cup.severity == full.severity
    sample = phantom_set(4, 0, shape=SMALL, glaucoma_fraction=1.0, signs=("cup",))
    assert all(p.signs == ("cup",) for p in sample)


@pytest.mark.parametrize("signs", [(), ("rim",), "cup", ("thinning", "notch")])
def test_bad_signs_are_refused(signs):
    with pytest.raises(ValueError, match="signs"):
        make_phantom(0, glaucoma=True, shape=SMALL, signs=signs)
