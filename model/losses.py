"""Classification and CARE/Grad-CAM consistency losses (model.md §7).

Consistency criteria take ``(gradcam, care)`` maps shaped ``(B, s, d, w)`` in [0, 1] (the model grid
divided by 8) and return a scalar that is 0 (its minimum) when the maps agree. Every criterion is
differentiable in both arguments: CARE comes from ``forward`` with its graph, Grad-CAM from the
training path, and the reference back-propagates into both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Plain cross-entropy on the two logits (= BCE on the softmax P(glaucoma)).

    No class weights: the reference's per-element weights summed to 1 per sample and only halved the
    loss (D3); the training data here are balanced.
    """
    return F.cross_entropy(logits, labels.long())


def _check_maps(gradcam: torch.Tensor, care: torch.Tensor) -> None:
    if gradcam.shape != care.shape or gradcam.ndim != 4:
        raise ValueError(
            f"consistency maps must both be (B, s, d, w); got {tuple(gradcam.shape)} and "
            f"{tuple(care.shape)}"
        )


def mse_consistency(gradcam: torch.Tensor, care: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over all B·s·d·w voxels (the reference default)."""
    _check_maps(gradcam, care)
    return F.mse_loss(gradcam, care)


def pearson_consistency(gradcam: torch.Tensor, care: torch.Tensor) -> torch.Tensor:
    """1 − mean over the batch of the per-volume Pearson correlation (0 for identical maps).

    A constant map has no defined correlation; the epsilon makes it count as r = 0 with finite
    gradients (an all-zero Grad-CAM after its ReLU is common early in training).
    """
    _check_maps(gradcam, care)
    x = gradcam.flatten(1) - gradcam.flatten(1).mean(dim=1, keepdim=True)
    y = care.flatten(1) - care.flatten(1).mean(dim=1, keepdim=True)
    # eps bounds the 1/|x| gradient of a scale-free statistic near an all-zero map.
    eps = 1e-6 * x.shape[1]
    r = (x * y).sum(1) / torch.sqrt((x.square().sum(1) + eps) * (y.square().sum(1) + eps))
    return 1.0 - r.mean()


def _gaussian_kernel1d(size: int, sigma: float, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _blur3d(x: torch.Tensor, sizes: tuple[int, int, int], sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, 1, s, d, w)`` with replicate padding (keeps the size)."""
    for axis, size in enumerate(sizes):
        if size == 1:
            continue
        k = _gaussian_kernel1d(size, sigma, x.device, x.dtype)
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = size
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = size // 2  # F.pad lists the last axis first
        x = F.conv3d(F.pad(x, pad, mode="replicate"), k.view(shape))
    return x


def ssim_consistency(
    gradcam: torch.Tensor, care: torch.Tensor, *, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """1 − mean 3-D SSIM (Gaussian window 11, σ 1.5, data range 1, as the reference's settings).

    The window is clipped to each map axis (odd sizes), so it works on any map grid, including
    the tiny maps of test-sized models; the reference's 2-D MONAI SSIMLoss treated S as channels.
    """
    _check_maps(gradcam, care)
    sizes = tuple(min(window, n if n % 2 else n - 1) for n in gradcam.shape[1:])
    c1, c2 = 0.01**2, 0.03**2
    x, y = gradcam[:, None], care[:, None]
    mu_x, mu_y = _blur3d(x, sizes, sigma), _blur3d(y, sizes, sigma)
    var_x = _blur3d(x * x, sizes, sigma) - mu_x**2
    var_y = _blur3d(y * y, sizes, sigma) - mu_y**2
    cov = _blur3d(x * y, sizes, sigma) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return 1.0 - ssim.mean()


def kl_consistency(gradcam: torch.Tensor, care: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """KL(care ‖ gradcam) between the maps normalised to spatial distributions, batch mean.

    Both maps are shifted by ``eps`` and divided by their sum, so each is a proper distribution and
    the log is finite (the reference fed Grad-CAM to KLDivLoss as if it were log-probabilities).
    """
    _check_maps(gradcam, care)
    p = care.flatten(1) + eps
    q = gradcam.flatten(1) + eps
    p = p / p.sum(1, keepdim=True)
    q = q / q.sum(1, keepdim=True)
    return (p * (p.log() - q.log())).sum(1).mean()


CONSISTENCY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": mse_consistency,
    "pearson": pearson_consistency,
    "ssim": ssim_consistency,
    "kl": kl_consistency,
}


def get_consistency(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Consistency criterion by name: one of ``mse`` (default), ``pearson``, ``ssim``, ``kl``."""
    try:
        return CONSISTENCY[name]
    except KeyError:
        raise ValueError(
            f"unknown consistency criterion {name!r}; choose one of {sorted(CONSISTENCY)}"
        ) from None


def stage2_loss(
    cls_loss: torch.Tensor, cons_loss: torch.Tensor, weight: float = 0.75
) -> torch.Tensor:
    """L = (1 − w)·L_cls + w·L_cons (the reference's convex mix, not L_cls + w·L_cons)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"consistency weight must lie in [0, 1], got {weight}")
    return (1.0 - weight) * cls_loss + weight * cons_loss
