"""AI-CNet3D: 3D CNN with anatomy-informed cross-attention for glaucoma in OCT (model.md §2-§5).

Kenia, Li, Srivastava, Thakoor, MELBA 3 (2025), doi 10.59275/j.melba.2025-8d4c. Input
``(B, 1, S, D, W)`` (S = B-scans superior->inferior, D = axial depth, W = lateral, canonical right
eye with the macula in ``W[:W/2]``); every spatial size must divide by 8 (by ``2**(1 +
len(attention_after))`` in general). Class index 1 = glaucoma.

Layers: five ``Conv3d -> BatchNorm3d -> ReLU`` (k 7/s 2, k 5, k 3, k 3, k 3); after each conv
listed in ``attention_after`` an attention block and ``MaxPool3d(2)``; then global average pooling
(``AdaptiveAvgPool3d(1)``, fixing defect D1 unless ``faithful_pool``), ``Linear(C, 2)`` and softmax.
CARE is read from the input of conv 5, Grad-CAM from conv 5's raw (pre-BN) output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.attention import (
    EPABlock,
    HemiretinalAttention,
    HemiretinalNeuronAxonAttention,
    NeuronAxonAttention,
    make_attention_block,
)
from model.maps import (
    bn_affine,
    care_map,
    gradcam_from_weights,
    gradcam_weights_autograd,
    gradcam_weights_closed_form,
    pool_window,
)

__all__ = [
    "ATTENTION_TYPES",
    "AICNet3D",
    "AICNet3DOutput",
    "EPABlock",
    "HemiretinalAttention",
    "HemiretinalNeuronAxonAttention",
    "NeuronAxonAttention",
]

ATTENTION_TYPES = ("Hemiretinal", "NeuronAxon", "HemiretinalNeuronAxon", "EPA", "none")
GLAUCOMA = 1


class AICNet3DOutput(NamedTuple):
    """Forward output of :class:`AICNet3D`.

    Attributes:
        logits: (B, num_classes).
        probabilities: softmax of ``logits``, (B, num_classes); column 1 = P(glaucoma).
        care: CARE map (B, S/8, D/8, W/8) in [0, 1], with autograd graph in training.
        conv5: raw pre-BN output of conv 5, (B, C, S/8, D/8, W/8), the Grad-CAM layer.
    """

    logits: Tensor
    probabilities: Tensor
    care: Tensor
    conv5: Tensor


def _conv_block(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """``Conv3d (bias) -> BatchNorm3d -> ReLU`` with 'same' padding for odd kernels."""
    return nn.Sequential(
        nn.Conv3d(cin, cout, kernel, stride=stride, padding=kernel // 2),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
    )


class AICNet3D(nn.Module):
    """AI-CNet3D classifier with CARE and Grad-CAM maps.

    Args:
        in_channels: input channels (1 for OCT intensity).
        channels: width C of every conv layer.
        num_classes: output classes (2: no glaucoma, glaucoma).
        attention: "Hemiretinal", "NeuronAxon", "HemiretinalNeuronAxon", "EPA" or "none"
            (the Maetschke 2019 backbone; the max pools stay).
        attention_after: conv indices (1..4) followed by an attention block and MaxPool3d(2).
        heads: attention heads.
        input_size: (S, D, W) grid; only EPA depends on it (its Linformer projection has N inputs).
        faithful_pool: use the reference ``AvgPool3d(kernel=min(grid), stride=grid)`` that
            averages only a corner cube of the conv-5 grid (defect D1), for parity only.
        dropout: Dropout3d probability before each block's 1x1x1 residual conv.
        attention_dropout: dropout on the attention matrices.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 32,
        num_classes: int = 2,
        attention: str = "Hemiretinal",
        attention_after: Sequence[int] = (2, 4),
        heads: int = 4,
        input_size: Sequence[int] = (128, 192, 112),
        faithful_pool: bool = False,
        dropout: float = 0.1,
        attention_dropout: float = 0.15,
    ) -> None:
        super().__init__()
        if attention not in ATTENTION_TYPES:
            raise ValueError(f"attention must be one of {ATTENTION_TYPES}, got {attention!r}")
        after = tuple(sorted({int(i) for i in attention_after}))
        if len(after) != len(tuple(attention_after)) or not all(1 <= i <= 4 for i in after):
            raise ValueError(f"attention_after must be distinct conv indices in 1..4: {after}")
        self.attention_type = attention
        self.attention_after = after
        self.input_size = tuple(int(s) for s in input_size)
        self.faithful_pool = faithful_pool
        self.conv1 = _conv_block(in_channels, channels, 7, stride=2)
        self.conv2 = _conv_block(channels, channels, 5)
        self.conv3 = _conv_block(channels, channels, 3)
        self.conv4 = _conv_block(channels, channels, 3)
        self.conv5 = nn.Conv3d(channels, channels, 3, padding=1)
        self.bn5 = nn.BatchNorm3d(channels)
        self.pool = nn.MaxPool3d(2)
        self.global_pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(channels, num_classes)
        blocks = {}
        for n_before, index in enumerate(after):
            grid = [s // 2 ** (1 + n_before) for s in self.input_size]
            blocks[str(index)] = make_attention_block(
                attention, channels, grid, heads, dropout, attention_dropout
            )
        self.attention = nn.ModuleDict(blocks)

    @property
    def downsampling(self) -> int:
        """Total spatial reduction from the input to the conv-5 / map grid."""
        return 2 ** (1 + len(self.attention_after))

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Convs 1-4 with attention blocks and pools, then conv 5.

        Returns:
            (input of conv 5 = output of the last attention block + pool, raw conv-5 output).
        """
        if x.ndim != 5:
            raise ValueError(f"expected input (B, C, S, D, W), got shape {tuple(x.shape)}")
        factor = self.downsampling
        if any(s % factor for s in x.shape[2:]):
            raise ValueError(f"every spatial size must divide by {factor}, got {tuple(x.shape)}")
        h = x
        for index, conv in enumerate((self.conv1, self.conv2, self.conv3, self.conv4), start=1):
            h = conv(h)
            if str(index) in self.attention:
                h = self.pool(self.attention[str(index)](h))
        return h, self.conv5(h)

    def head(self, conv5: Tensor) -> Tensor:
        """``BN5 -> ReLU -> global pool -> fc``: raw conv-5 output -> logits (B, num_classes)."""
        return self._pool_fc(F.relu(self.bn5(conv5)))

    def _pool_fc(self, activated: Tensor) -> Tensor:
        if self.faithful_pool:
            grid = activated.shape[2:]
            pooled = F.avg_pool3d(activated, kernel_size=min(grid), stride=tuple(grid))
        else:
            pooled = self.global_pool(activated)
        return self.fc(pooled.flatten(1))

    def forward(self, x: Tensor) -> AICNet3DOutput:
        """``(B, 1, S, D, W)`` -> logits, probabilities, CARE and raw conv-5 output."""
        care_features, conv5 = self.features(x)
        logits = self.head(conv5)
        return AICNet3DOutput(logits, logits.softmax(dim=1), care_map(care_features), conv5)

    def gradcam(
        self, output: AICNet3DOutput, target: Tensor | int | None = None, method: str = "auto"
    ) -> Tensor:
        """Grad-CAM of the softmax probability of the predicted (or ``target``) class.

        Only the head is on the gradient path; BN5 uses the statistics of the forward (running in
        eval, batch in train) as constants, so the maps are per-sample. The weights ``w_c`` are
        constants and the map keeps ``output.conv5``'s graph: a consistency loss against CARE
        back-propagates into conv 5 and upstream.

        Args:
            output: this model's forward output.
            target: class index per sample (B,) or one int; default argmax.
            method: "closed" (closed form, no backward), "autograd" (one backward through the head
                on a detached copy of conv 5) or "auto": "autograd" when training with grad
                enabled, else "closed". Both give the same weights.

        Returns:
            (B, S/8, D/8, W/8) in [0, 1].
        """
        conv5 = output.conv5
        scale, shift = bn_affine(self.bn5, conv5)
        if method == "auto":
            autograd = self.training and torch.is_grad_enabled()
            method = "autograd" if autograd and not torch.is_inference_mode_enabled() else "closed"
        if method == "closed":
            window = pool_window(tuple(conv5.shape[2:]), self.faithful_pool)
            weights = gradcam_weights_closed_form(
                conv5, output.probabilities, self.fc.weight, scale, shift, window, target
            )
        elif method == "autograd":
            affine = (scale[:, None, None, None], shift[:, None, None, None])

            def head(a: Tensor) -> Tensor:
                # clone: the statistics may be inference tensors, which autograd cannot save
                return self._pool_fc(F.relu(a * affine[0].clone() + affine[1].clone()))

            weights = gradcam_weights_autograd(conv5, head, target)
        else:
            raise ValueError(f"method must be 'auto', 'closed' or 'autograd', got {method!r}")
        return gradcam_from_weights(conv5, weights)

    def explain(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """P(glaucoma), CARE and Grad-CAM in one call without a backward pass (use in eval mode).

        Returns:
            (probabilities (B,), care (B, S/8, D/8, W/8), gradcam (B, S/8, D/8, W/8)).
        """
        with torch.inference_mode():
            output = self(x)
            gradcam = self.gradcam(output, method="closed")
        return output.probabilities[:, GLAUCOMA], output.care, gradcam
