"""Pure volume transforms shared by training and inference.

Axis convention (project contract): a volume is ``(S, D, W)`` = (B-scans, axial depth, lateral
A-scans); the canonical layout is the right eye (OD), macula in ``W[:W/2]`` and optic nerve head in
``W[W/2:]``. A left eye (OS) is the mirror image along W, so canonicalisation is a W flip
(model.md §9, D8).

Only the training path augments (:func:`augment`); it never flips W, because after
canonicalisation a W flip would swap the macula and nerve halves the NeuronAxon attention relies on
(model.md §9, D9).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

LATERALITIES = ("R", "L")

# Normalisation specs understood by :func:`normalise_intensity` (stored in the bundle metadata).
DEFAULT_NORMALISATION: dict[str, Any] = {"kind": "scale", "divisor": 255.0}


def _check_laterality(laterality: str) -> str:
    if laterality not in LATERALITIES:
        raise ValueError(f"laterality must be 'R' or 'L', got {laterality!r}")
    return laterality


def _check_volume(volume: np.ndarray | torch.Tensor, name: str = "volume") -> None:
    if volume.ndim != 3:
        raise ValueError(f"{name} must be 3-D (S, D, W), got shape {tuple(volume.shape)}")


def _check_grid(grid: Sequence[int]) -> tuple[int, int, int]:
    grid = tuple(int(g) for g in grid)
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"grid must be three positive sizes (S, D, W), got {grid}")
    return grid  # type: ignore[return-value]


def flip_w(array: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Mirror the last (W, lateral) axis of a numpy array or tensor."""
    if isinstance(array, torch.Tensor):
        return torch.flip(array, dims=(-1,))
    return np.ascontiguousarray(array[..., ::-1])


def canonicalise(volume: np.ndarray, laterality: str) -> np.ndarray:
    """Return ``volume`` in the canonical right-eye layout (flip W for a left eye, D8).

    Args:
        volume: ``(S, D, W)`` array in acquisition orientation.
        laterality: ``"R"`` (OD) or ``"L"`` (OS), e.g. from DICOM ImageLaterality (0020,0062).

    Returns:
        The same array for ``"R"``; a contiguous W-mirrored copy for ``"L"``.
    """
    _check_volume(volume)
    if _check_laterality(laterality) == "L":
        return flip_w(volume)  # type: ignore[return-value]
    return volume


def resample_tensor(tensor: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Trilinearly resample a ``(B, C, S, D, W)`` float tensor to ``grid`` (no-op when equal)."""
    grid = _check_grid(grid)
    if tuple(tensor.shape[-3:]) == grid:
        return tensor
    return F.interpolate(tensor, size=grid, mode="trilinear", align_corners=False)


def resample_volume(volume: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """Resample an ``(S, D, W)`` volume to ``grid`` with trilinear interpolation.

    Any mismatch on any axis triggers the resize (the reference resized only when *both* in-plane
    sizes differed, D10). Returns float32; intensities are not rescaled.
    """
    _check_volume(volume)
    grid = _check_grid(grid)
    array = np.asarray(volume, dtype=np.float32)
    if array.shape == grid:
        return array.copy()
    tensor = torch.from_numpy(np.ascontiguousarray(array))[None, None]
    return resample_tensor(tensor, grid)[0, 0].numpy()


def validate_normalisation(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check an intensity-normalisation spec and return it as a plain dict.

    Supported kinds: ``{"kind": "scale", "divisor": d}`` (x / d), ``{"kind": "zscore"}`` (per
    volume) or ``{"kind": "zscore", "mean": m, "std": s}`` (fixed), and ``{"kind": "none"}``.
    """
    if not isinstance(spec, Mapping) or "kind" not in spec:
        raise ValueError(f"intensity normalisation needs a 'kind' key, got {spec!r}")
    kind = spec["kind"]
    if kind == "scale":
        divisor = spec.get("divisor")
        if not isinstance(divisor, numbers.Real) or isinstance(divisor, bool) or divisor <= 0:
            raise ValueError(f"normalisation 'scale' needs a positive 'divisor', got {divisor!r}")
        return {"kind": "scale", "divisor": float(divisor)}
    if kind == "zscore":
        out: dict[str, Any] = {"kind": "zscore"}
        if ("mean" in spec) != ("std" in spec):
            raise ValueError("normalisation 'zscore' needs both 'mean' and 'std', or neither")
        if "mean" in spec:
            if not float(spec["std"]) > 0:
                raise ValueError(f"normalisation 'zscore' needs 'std' > 0, got {spec['std']!r}")
            out.update(mean=float(spec["mean"]), std=float(spec["std"]))
        return out
    if kind == "none":
        return {"kind": "none"}
    raise ValueError(f"unknown normalisation kind {kind!r} (expected 'scale', 'zscore' or 'none')")


def normalise_intensity(
    volume: np.ndarray | torch.Tensor, spec: Mapping[str, Any]
) -> np.ndarray | torch.Tensor:
    """Apply the bundle's intensity normalisation ``spec`` (see :func:`validate_normalisation`)."""
    spec = validate_normalisation(spec)
    is_tensor = isinstance(volume, torch.Tensor)
    x = volume.float() if is_tensor else np.asarray(volume, dtype=np.float32)
    if spec["kind"] == "scale":
        return x / spec["divisor"]
    if spec["kind"] == "zscore":
        if "mean" in spec:
            return (x - spec["mean"]) / spec["std"]
        std = float(x.std())
        return (x - float(x.mean())) / (std if std > 0 else 1.0)
    return x


def restore_map(
    map_small: np.ndarray | torch.Tensor, shape: Sequence[int], laterality: str
) -> np.ndarray:
    """Bring a model-grid map back to the input volume's grid and orientation.

    Trilinear upsampling to ``shape``, clipping to [0, 1] (interpolation can overshoot only by
    rounding, but the contract promises the range), then a W flip for a left eye.

    Args:
        map_small: ``(s, d, w)`` map (CARE or Grad-CAM) in canonical orientation.
        shape: ``(S, D, W)`` of the input volume.
        laterality: laterality of the input volume.

    Returns:
        float32 ``(S, D, W)`` array in [0, 1], in the input orientation.
    """
    _check_volume(map_small, "map_small")
    _check_laterality(laterality)
    tensor = torch.as_tensor(map_small, dtype=torch.float32).detach().cpu()
    out = resample_tensor(tensor[None, None], shape)[0, 0].clamp_(0.0, 1.0).numpy()
    return canonicalise(out, laterality).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------------
# Training-time augmentation (model.md §6 'g' and 'z'; optional 's'; never 'f', D9)


def augment_intensity(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """'g': contrast x α ∈ [0.85, 1.15], brightness + [0, 0.15], gamma ∈ [0.5, 2]; x in [0, 1].

    All three steps are monotone in x, so spatial structure (and left/right order) is untouched.
    """
    u1, u2, u3 = rng.random(3)
    x = x * (1.0 + 0.3 * (u1 - 0.5))
    x = np.clip(x + 0.15 * u2, 0.0, 1.0)
    return x ** (2.0 ** (2.0 * u3 - 1.0))


def augment_zoom(x: np.ndarray, rng: np.random.Generator, max_zoom: float = 1.25) -> np.ndarray:
    """'z': isotropic zoom f ~ U(1, max_zoom) (skipped below 1.02), then a random crop back to size.

    Trilinear rather than the reference's nearest neighbour: no label map rides along, and nearest
    neighbour adds block artefacts the network could learn.
    """
    f = rng.uniform(1.0, max_zoom)
    shape = x.shape
    if f < 1.02:
        return x
    big = tuple(max(int(round(n * f)), n) for n in shape)
    zoomed = resample_tensor(torch.from_numpy(np.ascontiguousarray(x))[None, None], big)[0, 0]
    starts = [int(rng.integers(0, b - n + 1)) for b, n in zip(big, shape, strict=True)]
    s, d, w = starts
    return zoomed[s : s + shape[0], d : d + shape[1], w : w + shape[2]].numpy().copy()


def augment(
    volume: np.ndarray,
    rng: np.random.Generator,
    *,
    keys: str = "gz",
    s_flip: bool = False,
    value_max: float = 255.0,
) -> np.ndarray:
    """Training augmentation of a canonical ``(S, D, W)`` volume with intensities in [0, value_max].

    Args:
        volume: canonicalised volume (already on the model grid).
        rng: seeded generator; the same seed gives the same augmentation.
        keys: subset of ``"gz"`` in application order ('g' intensity, 'z' zoom + crop).
        s_flip: also flip S with p = 0.5 (ablation; swaps superior and inferior hemiretinas).
        value_max: intensity that maps to 1.0 (the reference works on x / 255).

    Returns:
        float32 volume of the same shape, intensities in [0, value_max]. W is never mirrored.
    """
    _check_volume(volume)
    unknown = set(keys) - set("gz")
    if unknown:
        raise ValueError(
            f"unknown augmentation keys {sorted(unknown)} (only 'g' and 'z'; no W flip)"
        )
    x = np.asarray(volume, dtype=np.float32) / value_max
    for key in keys:
        x = augment_intensity(x, rng) if key == "g" else augment_zoom(x, rng)
    if s_flip and rng.random() < 0.5:
        x = x[::-1]
    return np.ascontiguousarray(x * value_max, dtype=np.float32)
