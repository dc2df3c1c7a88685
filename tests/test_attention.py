"""Attention blocks (model.md §3): parameter counts, the §3.2 formula, defect D2's write-back."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.attention import (
    ALGORITHMS,
    ChannelCrossAttention,
    CrossRegionAttention,
    EPABlock,
    HemiretinalAttention,
    HemiretinalNeuronAxonAttention,
    NeuronAxonAttention,
    make_attention_block,
)

VARIANTS = ("Hemiretinal", "NeuronAxon", "HemiretinalNeuronAxon")
GRIDS = ((4, 3, 6), (2, 5, 4), (6, 4, 8))  # (S, D, W) seen by a block; S and W even

# model.md §3.3, written out independently of model/attention.py.
# region name -> (S half, W half) with 0 = first half, 1 = second half, None = whole axis
REGIONS = {
    "Hemiretinal": {"sup": (0, None), "inf": (1, None)},
    "NeuronAxon": {"mac": (None, 0), "nerve": (None, 1)},
    "HemiretinalNeuronAxon": {
        "sup_mac": (0, 0),
        "sup_nerve": (0, 1),
        "inf_mac": (1, 0),
        "inf_nerve": (1, 1),
    },
}
CALLS = {  # ca[k]: (query, key/value)
    "Hemiretinal": [("sup", "inf"), ("inf", "sup")],
    "NeuronAxon": [("mac", "nerve"), ("nerve", "mac")],
    "HemiretinalNeuronAxon": [
        ("sup_mac", "inf_mac"),
        ("inf_mac", "sup_mac"),
        ("sup_nerve", "inf_nerve"),
        ("inf_nerve", "sup_nerve"),
        ("sup_nerve", "sup_mac"),
        ("sup_mac", "sup_nerve"),
        ("inf_nerve", "inf_mac"),
        ("inf_mac", "inf_nerve"),
    ],
}
NORM = {
    "sup": 1,
    "inf": 2,
    "mac": 1,
    "nerve": 2,
    "sup_mac": 1,
    "inf_mac": 1,
    "sup_nerve": 2,
    "inf_nerve": 2,
}


def _index(variant: str, name: str, s: int, w: int) -> tuple[slice, ...]:
    """Index of a region into (B, C, S, D, W)."""
    hs, hw = REGIONS[variant][name]
    s_idx = slice(None) if hs is None else slice(hs * s // 2, (hs + 1) * s // 2)
    w_idx = slice(None) if hw is None else slice(hw * w // 2, (hw + 1) * w // 2)
    return (slice(None), slice(None), s_idx, slice(None), w_idx)


def _tokens(region: torch.Tensor) -> torch.Tensor:
    """(B, C, s, d, w) -> (B, n, C) in S-major order, W fastest."""
    return region.flatten(2).transpose(1, 2)


def _block(variant: str, channels: int = 8, seed: int = 0) -> CrossRegionAttention:
    """A float64 eval-mode block with gamma = 1 and non-trivial norms/temperatures."""
    torch.manual_seed(seed)
    block = make_attention_block(variant, channels, (0, 0, 0)).double().eval()
    block.chunk_tokens = 4  # several tiles per region even on tiny grids
    with torch.no_grad():
        block.gamma.fill_(1.0)
        for norm in (block.norm1, block.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
        for ca in block.ca:
            ca.temperature.uniform_(0.5, 3.0)
            ca.proj.bias.uniform_(-0.5, 0.5)
    return block


def reference_ca(ca: ChannelCrossAttention, xq: torch.Tensor, xkv: torch.Tensor) -> torch.Tensor:
    """§3.2 written out per head for one sample: (n, C), (n, C) -> (n, C)."""
    q, k, v = xq @ ca.q.weight.T, xkv @ ca.k.weight.T, xkv @ ca.v.weight.T
    d = q.shape[1] // ca.heads
    heads = []
    for i in range(ca.heads):
        cols = slice(i * d, (i + 1) * d)
        qi, ki, vi = q[:, cols].T, k[:, cols].T, v[:, cols].T  # d x n
        qi = qi / qi.norm(dim=1, keepdim=True)
        ki = ki / ki.norm(dim=1, keepdim=True)
        a = torch.softmax(ca.temperature[i] * qi @ ki.T, dim=1)  # d x d
        heads.append((a @ vi).T)
    return torch.cat(heads, dim=1) @ ca.proj.weight.T + ca.proj.bias


def reference_block(block: CrossRegionAttention, variant: str, x: torch.Tensor) -> torch.Tensor:
    """Region by region: each call's output added onto its query region's own voxels."""
    b, c, s, d, w = x.shape
    norms = {1: block.norm1, 2: block.norm2}
    y = x.clone()
    for ca, (query, source) in zip(block.ca, CALLS[variant], strict=True):
        qi, si = _index(variant, query, s, w), _index(variant, source, s, w)
        shape = y[qi].shape
        for n in range(b):
            xq = norms[NORM[query]](_tokens(x[qi])[n])
            xs = norms[NORM[source]](_tokens(x[si])[n])
            out = block.gamma * reference_ca(ca, xq, xs)  # (n_region, C), S-major
            y[qi][n] += out.T.reshape(shape[1:])
    return y + block.residual(y)


def defective_block(block: CrossRegionAttention, variant: str, x: torch.Tensor) -> torch.Tensor:
    """The reference code's write-back (defect D2): region-major concat added to S-major x_tok."""
    b, c, s, d, w = x.shape
    norms = {1: block.norm1, 2: block.norm2}
    outs = []
    for ca, (query, source) in zip(block.ca, CALLS[variant], strict=True):
        qi, si = _index(variant, query, s, w), _index(variant, source, s, w)
        xq, xs = norms[NORM[query]](_tokens(x[qi])), norms[NORM[source]](_tokens(x[si]))
        outs.append(torch.stack([reference_ca(ca, xq[n], xs[n]) for n in range(b)]))
    if variant == "HemiretinalNeuronAxon":
        att = torch.cat(outs[:4], dim=1) + torch.cat(outs[4:], dim=1)
    else:
        att = torch.cat(outs, dim=1)
    y_tok = _tokens(x) + block.gamma * att
    y = y_tok.transpose(1, 2).reshape(x.shape)
    return y + block.residual(y)


def test_block_parameter_counts() -> None:
    """model.md §3.1: 4,132 per call; 9,608 (H, NA) and 34,400 (HNA) per block at C = 32."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ChannelCrossAttention(32, 4)) == 4132
    assert count(HemiretinalAttention(32)) == 9608
    assert count(NeuronAxonAttention(32)) == 9608
    assert count(HemiretinalNeuronAxonAttention(32)) == 34400
    n = 32 * 48 * 28
    # qkvv 4,096 + shared E (64 N + 64) + 2 temperatures (8) + 2 x Linear(32, 16) + block 1,152
    assert count(EPABlock(32, (32, 48, 28))) == 4096 + 64 * n + 64 + 8 + 2 * 528 + 64 + 32 + 1056


def test_initial_values() -> None:
    """gamma starts at 1e-6, every per-head temperature at 1; norm3/norm4 exist (unused)."""
    block = HemiretinalNeuronAxonAttention(32)
    assert torch.all(block.gamma == 1e-6)
    assert all(torch.all(ca.temperature == 1) for ca in block.ca)
    assert block.norm3.weight.shape == block.norm4.weight.shape == (32,)
    assert block.ca[0].attn_drop.p == 0.15 and block.dropout.p == 0.1


def test_channel_attention_matches_formula() -> None:
    """The batched direct path equals §3.2 written out per head."""
    torch.manual_seed(1)
    ca = ChannelCrossAttention(8, 4).double().eval()
    with torch.no_grad():
        ca.temperature.uniform_(0.5, 3.0)
    xq, xkv = torch.randn(2, 30, 8, dtype=torch.float64), torch.randn(2, 30, 8, dtype=torch.float64)
    got = ca(xq, xkv)
    for n in range(2):
        torch.testing.assert_close(got[n], reference_ca(ca, xq[n], xkv[n]))


def test_gram_mixing_matches_direct() -> None:
    """CA(X_q <- X_kv) = X_kv M^T + b_o with M from the Gram matrices alone."""
    torch.manual_seed(2)
    ca = ChannelCrossAttention(8, 4).double().eval()
    xq, xkv = torch.randn(3, 40, 8, dtype=torch.float64), torch.randn(3, 40, 8, dtype=torch.float64)
    m = ca.mixing(xq.mT @ xq, xkv.mT @ xkv, xq.mT @ xkv)
    torch.testing.assert_close(xkv @ m.mT + ca.proj.bias, ca(xq, xkv))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_block_matches_region_by_region_reference(
    variant: str, grid: tuple, algorithm: str
) -> None:
    """D2: every algorithm equals the region-by-region computation of model.md §3.3."""
    block = _block(variant)
    block.algorithm = algorithm
    x = torch.randn(2, 8, *grid, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), reference_block(block, variant, x))


@pytest.mark.parametrize("variant", VARIANTS)
def test_streaming_paths_agree(variant: str) -> None:
    """The "gram" block gives the same result whatever the slab size, with or without autograd
    (in-place writes vs concatenation), in either memory format, and in train mode with dropout
    off; the input is never modified in place."""
    block = _block(variant)
    x = torch.randn(2, 8, 4, 3, 6, dtype=torch.float64)
    with torch.no_grad():
        expected = reference_block(block, variant, x)
    for fmt in (torch.contiguous_format, torch.channels_last_3d):
        xf = x.contiguous(memory_format=fmt)
        for chunk in (1, 2, 7, 10_000):
            block.chunk_tokens = chunk
            with torch.no_grad():
                torch.testing.assert_close(block(xf), expected)
            torch.testing.assert_close(block(xf).detach(), expected)  # autograd path
        block.train()
        block.dropout.p = 0.0
        for ca in block.ca:
            ca.attn_drop.p = 0.0
        torch.testing.assert_close(block(xf).detach(), expected)
        block.eval()
        torch.testing.assert_close(xf, x)


def test_residual_dropout_is_channelwise_per_sample() -> None:
    """Train mode: R_b = I + W diag(mask_b), mask_b in {0, 1/(1-p)}^C drawn per sample (the
    Dropout3d of model.md §3.1 folded into the residual map); eval: I + W for every sample."""
    torch.manual_seed(6)
    block = HemiretinalAttention(16, dropout=0.5)
    w = block.residual.weight.reshape(16, 16).detach()
    x = torch.zeros(3, 16, 2, 2, 2)
    block.train()
    r = block._residual_map(3, x).detach()
    masks = []
    for b in range(3):
        scale = (r[b] - torch.eye(16)) / w  # column c = mask_b[c]
        mask = scale[0]
        torch.testing.assert_close(scale, mask.expand(16, 16))
        assert set(mask.round(decimals=5).tolist()) <= {0.0, 2.0}
        masks.append(mask)
    assert any(not torch.equal(masks[0], m) for m in masks[1:])
    assert any((m == 0).any() and (m == 2).any() for m in masks)
    block.eval()
    torch.testing.assert_close(
        block._residual_map(3, x).detach(), (torch.eye(16) + w).expand(3, 16, 16)
    )


@pytest.mark.parametrize("variant", ("NeuronAxon", "HemiretinalNeuronAxon"))
def test_reference_write_back_is_detected(variant: str) -> None:
    """The region-by-region check would fail on the reference code's write-back (D2)."""
    block = _block(variant)
    x = torch.randn(1, 8, 4, 3, 6, dtype=torch.float64)
    with torch.no_grad():
        wrong = defective_block(block, variant, x)
        assert not torch.allclose(block(x), wrong, atol=1e-3)
        # Hemiretinal's S-major concat is already correct in the reference.
        hemi = _block("Hemiretinal")
        torch.testing.assert_close(hemi(x), defective_block(hemi, "Hemiretinal", x))


def _isolate(block: CrossRegionAttention, keep: int) -> None:
    """Silence every call except ``ca[keep]`` and the 1x1x1 residual, so out = x + gamma CA_k."""
    with torch.no_grad():
        for k, ca in enumerate(block.ca):
            if k != keep:
                ca.proj.weight.zero_()
                ca.proj.bias.zero_()
        block.residual.weight.zero_()
        block.residual.bias.zero_()


def _affine_misfit(target: torch.Tensor, source: torch.Tensor) -> float:
    """Relative residual of the best fit target ~ [LN(source), 1] P, (n, C) each."""
    # LayerNorm rows sum to 0, so one normalised channel is redundant: drop it for full rank.
    normalised = F.layer_norm(source, source.shape[-1:])[:, :-1]
    design = torch.cat([normalised, torch.ones_like(source[:, :1])], 1)
    fit = torch.linalg.lstsq(design, target).solution
    return float((design @ fit - target).norm() / target.norm())


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_call_writes_to_its_query_region_by_translation(variant: str) -> None:
    """D2 and the HNA quadrant map, without trusting any reference code.

    With only call k active, ``out - x`` is zero outside k's query region, and inside it token t is
    an affine function (one matrix for the whole region) of the normalised key/value token t, i.e.
    the voxel of the other region at the translated position.
    """
    s, d, w = 4, 5, 6
    x = torch.randn(1, 8, s, d, w, dtype=torch.float64)
    for k, (query, source) in enumerate(CALLS[variant]):
        block = _block(variant, seed=k)
        _isolate(block, k)
        with torch.no_grad():
            delta = block(x) - x
        qi, si = _index(variant, query, s, w), _index(variant, source, s, w)
        outside = delta.clone()
        outside[qi] = 0
        assert outside.abs().max() == 0, f"call {k} wrote outside region {query}"
        assert delta[qi].abs().max() > 1e-3
        assert _affine_misfit(_tokens(delta[qi])[0], _tokens(x[si])[0]) < 1e-8
        # The same check rejects a translation by anything but the region offset.
        shifted = torch.roll(_tokens(x[si])[0], shifts=1, dims=0)
        assert _affine_misfit(_tokens(delta[qi])[0], shifted) > 1e-2


@pytest.mark.parametrize("variant", ("NeuronAxon", "HemiretinalNeuronAxon"))
def test_translation_check_rejects_reference_write_back(variant: str) -> None:
    """The locality check above fails on the reference code's concatenation (defect D2)."""
    s, d, w = 4, 5, 6
    x = torch.randn(1, 8, s, d, w, dtype=torch.float64)
    block = _block(variant)
    _isolate(block, 0)
    query = CALLS[variant][0][0]
    with torch.no_grad():
        delta = defective_block(block, variant, x) - x
    outside = delta.clone()
    outside[_index(variant, query, s, w)] = 0
    assert outside.abs().max() > 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
def test_equivariant_to_a_shared_permutation_of_region_tokens(variant: str) -> None:
    """Permuting the in-region token order identically in every region permutes the output alike.

    The Gram statistics are invariant, so correct write-back implies equivariance; the reference
    write-back of NeuronAxon/HNA breaks it.
    """
    s, d, w = 4, 3, 6
    block = _block(variant)
    x = torch.randn(2, 8, s, d, w, dtype=torch.float64)
    names = list(REGIONS[variant])
    n = _tokens(x[_index(variant, names[0], s, w)]).shape[1]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(3))

    def permute(t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        for name in names:
            idx = _index(variant, name, s, w)
            region = out[idx]
            out[idx] = _tokens(region)[:, perm].transpose(1, 2).reshape(region.shape)
        return out

    with torch.no_grad():
        torch.testing.assert_close(block(permute(x)), permute(block(x)))
        if variant != "Hemiretinal":
            wrong = defective_block(block, variant, permute(x))
            assert not torch.allclose(wrong, permute(defective_block(block, variant, x)), atol=1e-3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_mode_dropout_and_gradients(variant: str) -> None:
    """Train mode is stochastic (dropout), eval deterministic; every used parameter gets a grad."""
    torch.manual_seed(4)
    block = make_attention_block(variant, 8, (0, 0, 0))
    with torch.no_grad():
        block.gamma.fill_(1.0)
    x = torch.randn(2, 8, 4, 3, 6)
    block.train()
    a, b = block(x), block(x)
    assert not torch.allclose(a, b)
    a.square().sum().backward()
    unused = {"norm3.weight", "norm3.bias", "norm4.weight", "norm4.bias"}
    for name, p in block.named_parameters():
        if name not in unused:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x), block(x))


def test_odd_region_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="even"):
        NeuronAxonAttention(8)(torch.randn(1, 8, 4, 4, 5))


def test_epa_block_shapes_and_grid() -> None:
    """EPA keeps the shape, is a near-identity at init (gamma 1e-6) and checks its grid."""
    torch.manual_seed(5)
    grid = (4, 6, 4)
    block = make_attention_block("EPA", 8, grid).eval()
    assert block.epa.E.in_features == math.prod(grid)
    x = torch.randn(2, 8, *grid)
    with torch.no_grad():
        out = block(x)
        torch.testing.assert_close(out, x + block.residual(x), atol=1e-4, rtol=1e-4)
        block.gamma.fill_(1.0)
        assert (block(x) - out).abs().max() > 1e-2
    with pytest.raises(ValueError, match="grid"):
        block(torch.randn(1, 8, 4, 6, 6))


def test_unknown_attention_rejected() -> None:
    with pytest.raises(ValueError, match="unknown attention"):
        make_attention_block("Spatial", 8, (2, 2, 2))
    assert isinstance(make_attention_block("none", 8, (2, 2, 2)), torch.nn.Identity)
