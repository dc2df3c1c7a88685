"""Explanation maps of AI-CNet3D: CARE and Grad-CAM (model.md §5).

Both maps live on the conv-5 grid ``(B, S/8, D/8, W/8)`` and are scaled to [0, 1] per sample.

Grad-CAM's gradient path is only the head ``BN5 -> ReLU -> pool -> fc -> softmax`` on the raw
conv-5 output ``A``. With BN written as a per-channel affine map ``a' = A * scale + shift``,
``z_c = mean_Omega ReLU(a'_c)``, ``l = W z + b`` and ``p = softmax(l)``::

    dp_k/dz_c    = p_k (W_kc - sum_j p_j W_jc)
    dp_k/dA_c(v) = dp_k/dz_c * scale_c * 1[a'_c(v) > 0] * 1[v in Omega] / |Omega|

so the Grad-CAM weights ``w_c = mean_v dp_k/dA_c(v)`` need no backward pass
(:func:`gradcam_weights_closed_form`). :func:`gradcam_weights_autograd` computes the same weights
with one backward through the head only. In both, the BN statistics are constants, so each
sample's weights depend on its own prediction only (per-sample Grad-CAM, defect D10).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MAP_EPS",
    "bn_affine",
    "care_map",
    "gradcam_from_weights",
    "gradcam_weights_autograd",
    "gradcam_weights_closed_form",
    "normalise_map",
    "pool_window",
]

MAP_EPS = 1e-5
_SPATIAL = (-3, -2, -1)


def normalise_map(raw: Tensor, eps: float = MAP_EPS) -> Tensor:
    """``ReLU(raw) / (max ReLU(raw) + eps)`` per sample: (B, S, D, W) -> [0, 1)."""
    pos = F.relu(raw)
    peak = pos.amax(dim=_SPATIAL, keepdim=True)
    return pos / (peak + eps)


def care_map(features: Tensor, eps: float = MAP_EPS) -> Tensor:
    """CARE (Channel Attention REpresentation): channel mean of the attention-block features.

    Args:
        features: output of the last attention block + max pool, (B, C, S, D, W).

    Returns:
        ``ReLU(mean_c F_c) / (max + eps)``, (B, S, D, W) in [0, 1]; keeps the autograd graph.
    """
    return normalise_map(features.mean(dim=1), eps)


def pool_window(grid: tuple[int, int, int], faithful: bool) -> tuple[slice, slice, slice]:
    """The voxels Omega that the head's global pool averages.

    With ``faithful`` the reference ``AvgPool3d(kernel=min(grid), stride=grid)`` (defect D1) sees
    only the corner cube ``[0:k]^3``; otherwise (adaptive pooling) every voxel.
    """
    if not faithful:
        return (slice(None),) * 3
    k = min(grid)
    return (slice(0, k),) * 3


def bn_affine(bn: nn.BatchNorm3d, a: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel ``(scale, shift)`` with ``bn(a) = a * scale + shift``, statistics as constants.

    Uses the running statistics in eval mode and the batch statistics of ``a`` (biased variance,
    as BatchNorm normalises with) in train mode; both returned detached, shape (C,).
    """
    a = a.detach()
    if bn.training or not bn.track_running_stats:
        var, mean = torch.var_mean(a, dim=(0, *_SPATIAL), unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    scale = torch.rsqrt(var + bn.eps)
    shift = -mean * scale
    if bn.affine:
        scale = scale * bn.weight.detach()
        shift = shift * bn.weight.detach() + bn.bias.detach()
    return scale, shift


def _target_index(probabilities: Tensor, target: Tensor | int | None) -> Tensor:
    b = probabilities.shape[0]
    if target is None:
        return probabilities.argmax(dim=1)
    target = torch.as_tensor(target, device=probabilities.device, dtype=torch.long)
    return target.expand(b) if target.ndim == 0 else target


def gradcam_weights_closed_form(
    conv5: Tensor,
    probabilities: Tensor,
    fc_weight: Tensor,
    scale: Tensor,
    shift: Tensor,
    window: tuple[slice, slice, slice],
    target: Tensor | int | None = None,
) -> Tensor:
    """Grad-CAM channel weights ``w_c = mean_v dp_k/dA_c(v)`` without a backward pass.

    Args:
        conv5: raw (pre-BN) conv-5 output A, (B, C, S, D, W).
        probabilities: softmax output of the head for ``conv5``, (B, K).
        fc_weight: the final linear layer's weight, (K, C).
        scale, shift: BN5 as a per-channel affine map (:func:`bn_affine`), (C,).
        window: the pooled voxels Omega (:func:`pool_window`).
        target: class index per sample (B,) or one int; default the predicted class.

    Returns:
        Detached weights (B, C).
    """
    a = conv5.detach()
    p = probabilities.detach().to(a.dtype)
    k = _target_index(p, target)
    w = fc_weight.detach().to(a.dtype)
    active = (a * scale[:, None, None, None] + shift[:, None, None, None]) > 0
    active = active[(slice(None), slice(None), *window)]
    window_size = active[0, 0].numel()
    count = active.sum(dim=_SPATIAL, dtype=a.dtype)  # (B, C): |{v in Omega : a'_c(v) > 0}|
    p_k = p.gather(1, k[:, None])  # (B, 1)
    dp_dz = p_k * (w[k] - p @ w)  # (B, C)
    return dp_dz * scale * count / (window_size * a[0, 0].numel())


def gradcam_weights_autograd(
    conv5: Tensor, head: Callable[[Tensor], Tensor], target: Tensor | int | None = None
) -> Tensor:
    """Grad-CAM channel weights by one backward pass through ``head`` only.

    Args:
        conv5: raw conv-5 output A, (B, C, S, D, W); only a detached copy is differentiated, so
            the caller's graph is untouched and no parameter receives a gradient.
        head: maps A to logits (B, K); it must treat the BN statistics as constants, so that
            sample b's probability depends on A[b] alone (per-sample Grad-CAM).
        target: class index per sample (B,) or one int; default the predicted class.

    Returns:
        Detached weights (B, C).
    """
    with torch.inference_mode(False), torch.enable_grad():
        a = conv5.detach().clone().requires_grad_(True)
        p = head(a).softmax(dim=1)
        k = _target_index(p.detach(), target)
        (grad,) = torch.autograd.grad(p.gather(1, k[:, None]).sum(), a)
    return grad.mean(dim=_SPATIAL)


def gradcam_from_weights(conv5: Tensor, weights: Tensor, eps: float = MAP_EPS) -> Tensor:
    """``ReLU(sum_c w_c A_c) / (max + eps)``: (B, C, S, D, W), (B, C) -> (B, S, D, W) in [0, 1].

    ``conv5`` keeps its graph (a consistency loss reaches conv 5 and everything upstream);
    ``weights`` are constants.
    """
    return normalise_map(torch.einsum("bc,bcsdw->bsdw", weights.detach(), conv5), eps)
