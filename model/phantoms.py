"""Synthetic wide-field OCT cubes (numpy only) for tests, demos and the demo model.

A phantom is a ``(S, D, W)`` uint8 volume (B-scans superior to inferior, axial depth from the
vitreous down, A-scans across the B-scan). The canonical layout is the right eye (OD): macula in
``W[:W/2]``, optic nerve head (ONH) in ``W[W/2:]``; a left eye is the exact mirror along ``W``.

The anatomy lives on a fixed physical field (9 mm superior-inferior x 2 mm depth x 12 mm
temporal-nasal, like a 12 x 9 mm "3D Wide" raster crossing macula and disc), so any grid samples the
same eye. Per A-scan, a stack of smooth boundaries (ILM, RNFL, GCL-IPL, INL, OPL, ONL, EZ/RPE,
choroid) is rendered with partial-volume edges, then vessel shadows, depth attenuation, gain
variations and multiplicative gamma speckle are applied.

Glaucoma thins RNFL and GCL-IPL over an arcuate-weighted region of one hemiretina (superior =
``S[:S/2]`` or inferior = ``S[S/2:]``; the other hemiretina thins at a fifth of that) and enlarges
and deepens the cup, more towards the thinned pole. All random draws happen in the same order for
normal and glaucomatous eyes, so ``make_phantom(seed, glaucoma=True)`` and
``make_phantom(seed, glaucoma=False)`` differ only by the disease.

For controlled experiments a glaucomatous phantom can carry one sign only (``signs=("thinning",)``
or ``signs=("cup",)``): the two act on separate terms of the boundary model, so the boundaries of
both signs together are exactly the normal eye's plus each sign's change.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FIELD_MM", "GLAUCOMA_SIGNS", "LAYERS", "Phantom", "layer_boundaries", "make_phantom",
    "phantom_set",
]

#: Physical extent of the cube in mm: (superior-inferior, axial depth, temporal-nasal).
FIELD_MM: tuple[float, float, float] = (9.0, 2.0, 12.0)

#: Glaucomatous signs a phantom can carry: hemiretinal RNFL/GCL-IPL thinning, cup enlargement.
GLAUCOMA_SIGNS: tuple[str, ...] = ("thinning", "cup")

#: Tissue classes from the vitreous down; boundary ``k`` separates ``LAYERS[k]`` and
#: ``LAYERS[k + 1]`` (boundary 0 = ILM, 1 = RNFL/GCL-IPL, 2 = GCL-IPL/INL, ...).
LAYERS: tuple[str, ...] = (
    "vitreous", "RNFL", "GCL-IPL", "INL", "OPL", "ONL", "EZ/RPE", "choroid", "sclera",
)

# Linear reflectivity of each class (before gains and speckle), in LAYERS order.
_REFLECTIVITY = np.array([0.035, 0.80, 0.46, 0.17, 0.50, 0.12, 0.95, 0.40, 0.16], np.float32)

# Glaucomatous thickness loss at severity 1 and full pattern weight (fractions).
_RNFL_LOSS, _GCL_LOSS = 0.7, 0.45
# Thinning in the fellow hemiretina relative to the thinned one.
_FELLOW_FRACTION = 0.2
# Retinal layers are drawn this much thicker than in a real eye so coarse grids resolve them.
_LAYER_SCALE = 1.25
# Pattern weight above which an A-scan counts as thinned in ``thinning_mask``.
_MASK_LEVEL = 0.5


@dataclass(frozen=True)
class Phantom:
    """One synthetic OCT cube and its ground truth.

    Attributes:
        volume: uint8 ``(S, D, W)`` intensities, laterality-specific orientation.
        laterality: ``"R"`` (OD) or ``"L"`` (OS, mirror of OD along ``W``).
        glaucoma: whether the eye is glaucomatous (its signs are in ``signs``).
        severity: thinning severity in [0, 1]; 0 for normal eyes.
        signs: the glaucomatous signs applied (a subset of :data:`GLAUCOMA_SIGNS`); empty for
            normal eyes.
        thinned_hemiretina: ``"superior"`` (``S[:S/2]``), ``"inferior"`` (``S[S/2:]``), or None
            for normal eyes and glaucomatous eyes without the ``"thinning"`` sign.
        thinning_mask: bool ``(S, D, W)``, the normal RNFL + GCL-IPL extent (ILM of the healthy
            eye down to the GCL-IPL/INL boundary) at A-scans whose thinning pattern weight is at
            least half of its maximum; all False for normal eyes; oriented like ``volume``.
        seed: the seed that reproduces this phantom with :func:`make_phantom`.
        spacing_mm: ``(between B-scans, axial, lateral)`` voxel spacing in mm.
    """

    volume: np.ndarray
    laterality: str
    glaucoma: bool
    severity: float
    signs: tuple[str, ...]
    thinned_hemiretina: str | None
    thinning_mask: np.ndarray
    seed: int
    spacing_mm: tuple[float, float, float]


@dataclass(frozen=True)
class _Eye:
    """Random anatomy and acquisition parameters of one eye (all lengths in mm)."""

    fovea: tuple[float, float]  # (y, x) with y superior->inferior, x temporal->nasal (OD)
    disc: tuple[float, float]
    disc_radius: float
    cup_ratio: float
    cup_depth: float
    rim_height: float
    rnfl_scale: float
    rnfl_asymmetry: float  # superior/inferior RNFL ratio of a normal eye, close to 1
    gcl_scale: float
    choroid: float
    rpe_depth: float
    tilt: tuple[float, float]  # mm/mm along y and x
    curvature: float
    frame_shift: np.ndarray  # per B-scan axial motion, mm (length S)
    frame_gain: np.ndarray  # per B-scan brightness (length S)
    gain: float
    gain_field: tuple[float, float, float, float]  # amplitude, ky, kx (cycles/mm), phase
    vessels: tuple[np.ndarray, ...]  # polylines (n, 2) in (y, x) mm with a radius column
    severity: float
    superior: bool


def _draw_eye(rng: np.random.Generator, n_frames: int, severity: float | None) -> _Eye:
    """Draw every random parameter in a fixed order (shared by normal and glaucomatous eyes)."""
    fy = FIELD_MM[0] / 2 + rng.uniform(-0.25, 0.25)
    fx = rng.uniform(3.2, 3.8)
    disc = (fy - rng.uniform(0.1, 0.5), fx + rng.uniform(4.2, 4.8))
    shift = np.cumsum(rng.normal(0.0, 0.006, n_frames))
    frame_shift = shift - shift.mean()
    frame_gain = 1.0 + rng.normal(0.0, 0.04, n_frames)
    gain_field = (
        rng.uniform(0.05, 0.15), rng.uniform(-0.15, 0.15), rng.uniform(0.05, 0.2),
        rng.uniform(0, 2 * np.pi),
    )
    eye = dict(
        fovea=(fy, fx), disc=disc, disc_radius=rng.uniform(0.8, 1.0),
        cup_ratio=rng.uniform(0.2, 0.45), cup_depth=rng.uniform(0.12, 0.25),
        rim_height=rng.uniform(0.25, 0.35), rnfl_scale=rng.uniform(0.85, 1.15),
        rnfl_asymmetry=rng.uniform(0.94, 1.06), gcl_scale=rng.uniform(0.9, 1.1),
        choroid=rng.uniform(0.2, 0.3), rpe_depth=rng.uniform(1.05, 1.15),
        tilt=(rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02)),
        curvature=rng.uniform(0.001, 0.004), frame_shift=frame_shift, frame_gain=frame_gain,
        gain=rng.uniform(0.8, 1.15), gain_field=gain_field, vessels=_draw_vessels(rng, disc),
    )
    drawn_severity = rng.uniform(0.4, 1.0)
    superior = bool(rng.integers(2))
    return _Eye(**eye, severity=drawn_severity if severity is None else float(severity),
                superior=superior)


def _draw_vessels(rng: np.random.Generator, disc: tuple[float, float]) -> tuple[np.ndarray, ...]:
    """Vessel centre lines leaving the disc: arcades bending round the macula, nasal branches."""
    # (initial angle, final angle, length mm, radius mm); angle 0 = nasal (+x), +pi/2 = inferior.
    specs = []
    for sign in (-1.0, 1.0):  # superior, inferior arcade (artery + vein)
        for _ in range(2):
            start = sign * (np.pi / 2 + rng.uniform(0.05, 0.45))
            specs.append((start, sign * rng.uniform(2.75, 3.0), rng.uniform(7.0, 9.5),
                          rng.uniform(0.05, 0.07)))
        specs.append((sign * rng.uniform(0.3, 1.2), sign * rng.uniform(0.1, 0.6),
                      rng.uniform(3.0, 4.5), rng.uniform(0.03, 0.045)))
    vessels = []
    for start, end, length, radius in specs:
        t = np.linspace(0.0, 1.0, 48)
        angle = start + (end - start) * t**0.8
        step = length / (t.size - 1)
        y = disc[0] + np.concatenate([[0.0], np.cumsum(np.sin(angle[:-1]) * step)])
        x = disc[1] + np.concatenate([[0.0], np.cumsum(np.cos(angle[:-1]) * step)])
        vessels.append(np.stack([y, x, np.full_like(y, radius)], axis=1))
    return tuple(vessels)


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Physical A-scan centres (y along S, x along W; mm) and the voxel spacing."""
    spacing = tuple(f / n for f, n in zip(FIELD_MM, shape, strict=True))
    y = (np.arange(shape[0]) + 0.5) * spacing[0]
    x = (np.arange(shape[2]) + 0.5) * spacing[2]
    yy, xx = np.meshgrid(y, x, indexing="ij")
    return yy, xx, spacing


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * v))


def _thinning_pattern(eye: _Eye, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Weight in [0, 1] of the glaucomatous loss per A-scan (before severity).

    The whole hemiretina temporal to the disc thins, most along the arcuate bundle; the fellow
    hemiretina gets ``_FELLOW_FRACTION`` of it. The hemiretina border is the field midline
    (``S/2``), where a hemiretinal split of the network looks for it.
    """
    mid = FIELD_MM[0] / 2
    upper = _sigmoid((mid - yy) / 0.08)  # 1 in S[:S/2]
    hemi = upper if eye.superior else 1.0 - upper
    fellow = 1.0 - hemi
    arc = np.exp(-(((np.abs(yy - eye.fovea[0]) - _arc_offset(eye, xx)) / 1.4) ** 2))
    lateral = _sigmoid((eye.disc[1] + 0.8 * eye.disc_radius - xx) / 0.4)
    pattern = (0.45 + 0.55 * arc) * lateral
    return pattern * (hemi + _FELLOW_FRACTION * fellow)


def _arc_offset(eye: _Eye, xx: np.ndarray) -> np.ndarray:
    """Distance (mm) of the arcuate RNFL bundles from the raphe: wide round the macula."""
    span = eye.disc[1] - eye.fovea[1]
    return 0.9 + 1.4 * np.clip((eye.disc[1] - xx) / span, 0.0, 1.3)


def _thicknesses(eye: _Eye, yy: np.ndarray, xx: np.ndarray, thinning: bool) -> dict:
    """Layer thickness maps (mm) outside the disc, with the glaucomatous thinning applied."""
    fovea_r2 = (yy - eye.fovea[0]) ** 2 + (xx - eye.fovea[1]) ** 2
    pit = np.exp(-fovea_r2 / (2 * 0.42**2))
    disc_r = np.hypot(yy - eye.disc[0], xx - eye.disc[1])

    # RNFL: thickens towards the disc; arcuate bundles make the superior/inferior double hump.
    radial = 0.02 + 0.07 * np.exp(-np.maximum(disc_r - eye.disc_radius, 0.0) / 2.0)
    offset = _arc_offset(eye, xx)
    dy = yy - eye.fovea[0]
    humps = (np.exp(-(((dy + offset) / 0.9) ** 2)) * eye.rnfl_asymmetry
             + np.exp(-(((dy - offset) / 0.9) ** 2)) / eye.rnfl_asymmetry)
    amp = 0.09 * np.exp(-np.maximum(eye.disc[1] - xx - eye.disc_radius, 0.0) / 6.0)
    amp = amp * _sigmoid((eye.disc[1] + 0.6 - xx) / 0.5)
    rnfl = eye.rnfl_scale * (radial + amp * humps) * (1.0 - 0.97 * pit)

    ring = np.exp(-((np.sqrt(fovea_r2) - 1.2) / 0.9) ** 2)
    gcl = eye.gcl_scale * (0.055 + 0.04 * ring) * (1.0 - 0.97 * pit)
    inl = (0.035 + 0.008 * ring) * (1.0 - 0.9 * pit)
    opl = 0.028 * (1.0 - 0.8 * pit)
    onl = 0.085 + 0.035 * pit
    if thinning:
        loss = eye.severity * _thinning_pattern(eye, yy, xx)
        rnfl = rnfl * (1.0 - _RNFL_LOSS * loss)
        gcl = gcl * (1.0 - _GCL_LOSS * loss)
    layers = {k: _LAYER_SCALE * v for k, v in
              dict(rnfl=rnfl, gcl=gcl, inl=inl, opl=opl, onl=onl).items()}
    return dict(layers, ez=np.full_like(yy, 0.07), choroid=np.full_like(yy, eye.choroid),
                disc_r=disc_r)


def _boundaries_mm(
    eye: _Eye, yy: np.ndarray, xx: np.ndarray, signs: tuple[str, ...] = ()
) -> np.ndarray:
    """Depth (mm) of the 8 boundaries per A-scan, ``(8, S, W)``, canonical (OD) orientation.

    Layers are stacked upwards from the photoreceptor/RPE line, so thinning moves the ILM down.
    Inside the disc the outer layers end and the nerve tissue surface (rim, then cup) replaces
    the ILM; glaucoma widens and deepens the cup, most towards the thinned pole. ``signs`` are
    the glaucomatous signs to apply (none for a normal eye). Thinning changes only the terms
    weighted by ``1 - in_disc`` and the cup only those weighted by ``in_disc``.
    """
    t = _thicknesses(eye, yy, xx, "thinning" in signs)
    cy, cx = FIELD_MM[0] / 2, FIELD_MM[2] / 2
    rpe = (eye.rpe_depth + eye.tilt[0] * (yy - cy) + eye.tilt[1] * (xx - cx)
           - eye.curvature * ((yy - cy) ** 2 + (xx - cx) ** 2) + eye.frame_shift[:, None])
    inner = [t["rnfl"], t["gcl"], t["inl"], t["opl"], t["onl"]]
    ilm_out = rpe - sum(inner)

    sev = eye.severity if "cup" in signs else 0.0
    cup_ratio = eye.cup_ratio + 0.7 * sev * (0.85 - eye.cup_ratio)
    # The cup stretches towards the thinned pole (vertical elongation, notched rim).
    dy = yy - eye.disc[0]
    toward = dy < 0 if eye.superior else dy > 0
    stretch = np.where(toward, 1.0 + 0.35 * sev, 1.0)
    cup_r = np.hypot(dy / stretch, xx - eye.disc[1]) / (cup_ratio * eye.disc_radius)
    cup = _sigmoid((1.0 - cup_r) / 0.12) * (1.0 - 0.3 * np.minimum(cup_r, 1.0) ** 2)
    rim = eye.rim_height * (1.0 - 0.4 * sev * toward)
    ilm_disc = rpe - rim * (1.0 - cup) + (eye.cup_depth + 0.2 * sev) * cup
    in_disc = _sigmoid((eye.disc_radius - t["disc_r"]) / 0.08)

    ilm = (1.0 - in_disc) * ilm_out + in_disc * ilm_disc
    lamina = np.maximum(rpe + 0.35, ilm_disc + 0.05)
    rnfl_bottom = (1.0 - in_disc) * (ilm_out + t["rnfl"]) + in_disc * lamina
    bounds = [ilm, rnfl_bottom]
    for name in ("gcl", "inl", "opl", "onl", "ez", "choroid"):
        bounds.append(bounds[-1] + (1.0 - in_disc) * t[name])
    return np.stack(bounds).astype(np.float32)


def _vessel_map(eye: _Eye, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Vessel occupancy in [0, 1] per A-scan (Gaussian profile around each centre line)."""
    pts = np.stack([yy.ravel(), xx.ravel()], axis=1)
    occupancy = np.zeros(pts.shape[0], np.float32)
    for line in eye.vessels:
        d2 = ((pts[:, None, :] - line[None, :, :2]) ** 2).sum(-1)
        nearest = d2.argmin(1)
        radius = line[nearest, 2]
        occupancy = np.maximum(occupancy, np.exp(-d2[np.arange(pts.shape[0]), nearest]
                                                 / (2 * radius**2)))
    return occupancy.reshape(yy.shape)


def layer_boundaries(
    seed: int,
    *,
    glaucoma: bool,
    laterality: str = "R",
    shape: tuple[int, int, int] = (64, 96, 56),
    severity: float | None = None,
    signs: tuple[str, ...] = GLAUCOMA_SIGNS,
) -> np.ndarray:
    """Boundary depths of the phantom ``make_phantom(seed, ...)`` in voxels, ``(8, S, W)``.

    Boundary ``k`` lies between ``LAYERS[k]`` and ``LAYERS[k + 1]`` (0 = ILM, 1 = RNFL lower
    border, 2 = GCL-IPL/INL, ...); depth ``z`` is in voxel units along ``D`` (voxel ``d`` spans
    ``[d, d + 1)``). Useful for ground-truth thickness measurements.
    """
    shape = _check_shape(shape)
    applied = _check_signs(signs) if glaucoma else ()
    eye = _draw_eye(np.random.default_rng(seed), shape[0], _check_severity(severity))
    yy, xx, spacing = _grid(shape)
    bounds = _boundaries_mm(eye, yy, xx, applied) / spacing[1]
    return bounds[..., ::-1].copy() if _check_laterality(laterality) == "L" else bounds


def _render(eye: _Eye, bounds: np.ndarray, vessels: np.ndarray, shape, spacing,
            rng: np.random.Generator) -> np.ndarray:
    """Intensities (S, D, W) in [0, 255] from boundaries (voxels), vessels, gains and speckle."""
    n_s, n_d, n_w = shape
    z = (np.arange(n_d, dtype=np.float32) + 0.5)[None, :, None]
    # Partial-volume edges (about a voxel wide), so sub-voxel thinning still changes intensities.
    soft = 0.35
    level = np.full(shape, _REFLECTIVITY[0], np.float32)
    for k in range(bounds.shape[0]):
        step = _REFLECTIVITY[k + 1] - _REFLECTIVITY[k]
        level += step * _sigmoid((z - bounds[k][:, None, :]) / soft)
    # Nerve tissue inside the disc is less reflective than the RNFL it continues.
    disc_tissue = (bounds[2] - bounds[1]) < 0.05 / spacing[1]  # outer layers collapsed
    level *= np.where(disc_tissue, 0.8, 1.0)[:, None, :]

    # Vessels sit in the inner retina: bright wall reflex, then a shadow down the A-scan.
    vessel_z = (bounds[0] + 0.6 * (bounds[2] - bounds[0]))[:, None, :]
    v = vessels[:, None, :]
    level *= 1.0 - 0.7 * v * _sigmoid((z - vessel_z) / 1.0)
    level += 0.25 * v * np.exp(-(((z - vessel_z) * spacing[1] / 0.03) ** 2))

    # Depth attenuation below the ILM and smooth brightness variations.
    depth_mm = np.maximum(z - bounds[0][:, None, :], 0.0) * spacing[1]
    level *= np.exp(-depth_mm / 1.5)
    yy, xx, _ = _grid(shape)
    amp, ky, kx, phase = eye.gain_field
    field = 1.0 + amp * np.sin(2 * np.pi * (ky * yy + kx * xx) + phase)
    gain = eye.gain * field * eye.frame_gain[:, None]
    level *= gain[:, None, :].astype(np.float32)

    speckle = rng.gamma(4.0, 0.25, size=shape).astype(np.float32)
    out = np.clip(level * speckle, 0.0, 1.0) ** 0.8 * 255.0
    return out


def _check_shape(shape) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"shape must be 3 sizes >= 2 (S, D, W), got {shape}")
    return shape


def _check_laterality(laterality: str) -> str:
    if laterality not in ("R", "L"):
        raise ValueError(f"laterality must be 'R' or 'L', got {laterality!r}")
    return laterality


def _check_severity(severity: float | None) -> float | None:
    if severity is not None and not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    return severity


def _check_signs(signs: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [sign for sign in signs if sign not in GLAUCOMA_SIGNS]
    if isinstance(signs, str) or unknown or not signs:
        raise ValueError(
            f"signs must be a non-empty sequence of {GLAUCOMA_SIGNS}, got {signs!r}"
        )
    return tuple(sign for sign in GLAUCOMA_SIGNS if sign in signs)


def make_phantom(
    seed: int,
    *,
    glaucoma: bool,
    laterality: str = "R",
    shape: tuple[int, int, int] = (64, 96, 56),
    severity: float | None = None,
    signs: tuple[str, ...] = GLAUCOMA_SIGNS,
) -> Phantom:
    """Synthesise one OCT cube, deterministically from ``seed``.

    Args:
        seed: seed of ``np.random.default_rng``; the same seed gives the same eye (anatomy,
            acquisition, speckle) whatever ``glaucoma``, ``laterality`` and ``severity``.
        glaucoma: make a glaucomatous eye (the signs in ``signs``: by default RNFL/GCL-IPL
            thinning and cup enlargement).
        laterality: ``"R"`` (canonical) or ``"L"`` (mirror of the right eye along ``W``).
        shape: ``(S, D, W)`` grid over the fixed 9 x 2 x 12 mm field.
        severity: thinning severity in [0, 1] for glaucoma; drawn in [0.4, 1] when None. Ignored
            (reported as 0) for normal eyes.
        signs: the glaucomatous signs to apply, a non-empty subset of :data:`GLAUCOMA_SIGNS`
            (both by default); ignored for normal eyes.

    Returns:
        A :class:`Phantom`.
    """
    shape = _check_shape(shape)
    _check_laterality(laterality)
    applied = _check_signs(signs) if glaucoma else ()
    rng = np.random.default_rng(seed)
    eye = _draw_eye(rng, shape[0], _check_severity(severity))
    yy, xx, spacing = _grid(shape)
    bounds = _boundaries_mm(eye, yy, xx, applied) / spacing[1]
    volume = _render(eye, bounds, _vessel_map(eye, yy, xx), shape, spacing, rng)
    volume = np.rint(volume).astype(np.uint8)

    mask = np.zeros(shape, bool)
    thinned_side = None
    if "thinning" in applied:
        thinned_side = "superior" if eye.superior else "inferior"
    if thinned_side is not None and eye.severity > 0:
        healthy = _boundaries_mm(eye, yy, xx) / spacing[1]
        thinned = _thinning_pattern(eye, yy, xx) >= _MASK_LEVEL
        thinned &= (healthy[2] - healthy[1]) > 0.05 / spacing[1]  # not the disc
        d = np.arange(shape[1])[None, :, None]
        inside = (d + 1 > healthy[0][:, None, :]) & (d < healthy[2][:, None, :])
        mask = inside & thinned[:, None, :]
    if laterality == "L":
        volume, mask = volume[..., ::-1], mask[..., ::-1]
    return Phantom(
        volume=np.ascontiguousarray(volume),
        laterality=laterality,
        glaucoma=bool(glaucoma),
        severity=float(eye.severity) if glaucoma else 0.0,
        signs=applied,
        thinned_hemiretina=thinned_side,
        thinning_mask=np.ascontiguousarray(mask),
        seed=int(seed),
        spacing_mm=tuple(float(s) for s in spacing),
    )


def phantom_set(
    count: int,
    seed: int,
    *,
    shape: tuple[int, int, int] = (64, 96, 56),
    glaucoma_fraction: float = 0.5,
    laterality: str = "both",
    signs: tuple[str, ...] = GLAUCOMA_SIGNS,
) -> Iterator[Phantom]:
    """Yield ``count`` phantoms, deterministically from ``seed``.

    Exactly ``round(count * glaucoma_fraction)`` are glaucomatous, in a seeded random order.
    ``laterality`` is ``"R"``, ``"L"`` or ``"both"``; with ``"both"`` each class alternates R and L
    in order of appearance, so laterality is balanced and independent of the label. Phantom ``i``
    uses a seed derived from ``(seed, i)`` by ``SeedSequence``, so sets from different seeds
    don't share eyes, and ``make_phantom(p.seed, glaucoma=p.glaucoma,
    laterality=p.laterality, shape=shape, signs=signs)`` reproduces ``p``. ``signs`` are the
    glaucomatous eyes' signs; a set drawn with other signs holds the same eyes.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not 0.0 <= glaucoma_fraction <= 1.0:
        raise ValueError(f"glaucoma_fraction must be in [0, 1], got {glaucoma_fraction}")
    if laterality not in ("R", "L", "both"):
        raise ValueError(f"laterality must be 'R', 'L' or 'both', got {laterality!r}")
    signs = _check_signs(signs)
    n_glaucoma = int(round(count * glaucoma_fraction))
    labels = np.zeros(count, bool)
    labels[:n_glaucoma] = True
    labels = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,))).permutation(labels)
    seen = {True: 0, False: 0}
    for index, label in enumerate(labels.tolist()):
        side = laterality if laterality != "both" else ("R", "L")[seen[label] % 2]
        seen[label] += 1
        child = int(np.random.SeedSequence(seed, spawn_key=(1, index)).generate_state(1)[0])
        yield make_phantom(child, glaucoma=label, laterality=side, shape=shape, signs=signs)
