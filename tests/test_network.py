"""AICNet3D (model.md §2, §4, §9 D1): parameter counts, shapes, sizes and the global pool."""

from __future__ import annotations

import pytest
import torch

from model.network import ATTENTION_TYPES, AICNet3D, AICNet3DOutput

SHAPES = ((16, 24, 16), (24, 32, 16), (32, 48, 24))  # (S, D, W), each divisible by 8

# model.md §4 at input 128 x 192 x 112, 32 channels, attention after convs 2 and 4.
PARAMETERS = {
    "Hemiretinal": 241_682,
    "NeuronAxon": 241_682,
    "HemiretinalNeuronAxon": 291_266,
    "EPA": 25_007_826,
    "none": 222_466,
}


def _net(attention: str, shape: tuple[int, int, int], **kwargs) -> AICNet3D:
    torch.manual_seed(0)
    return AICNet3D(attention=attention, channels=8, input_size=shape, **kwargs).eval()


@pytest.mark.parametrize("attention", ATTENTION_TYPES)
def test_parameter_count_matches_specification(attention: str) -> None:
    """Exact counts of model.md §4 (construction only, no forward at full size)."""
    net = AICNet3D(attention=attention)
    assert sum(p.numel() for p in net.parameters()) == PARAMETERS[attention]


def test_layer_geometry_matches_specification() -> None:
    """Kernels/strides/paddings of model.md §2 and the reference parameter split."""
    net = AICNet3D()
    convs = [net.conv1[0], net.conv2[0], net.conv3[0], net.conv4[0], net.conv5]
    assert [c.kernel_size[0] for c in convs] == [7, 5, 3, 3, 3]
    assert [c.stride[0] for c in convs] == [2, 1, 1, 1, 1]
    assert [c.padding[0] for c in convs] == [3, 2, 1, 1, 1]
    assert [sum(p.numel() for p in c.parameters()) for c in convs] == [
        11_008,
        128_032,
        27_680,
        27_680,
        27_680,
    ]
    assert sorted(net.attention) == ["2", "4"]
    assert net.fc.in_features == 32 and net.fc.out_features == 2


@pytest.mark.parametrize("attention", ATTENTION_TYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_shapes(attention: str, shape: tuple[int, int, int]) -> None:
    """Any grid divisible by 8 works; outputs have the contract's shapes and ranges."""
    net = _net(attention, shape)
    x = torch.randn(2, 1, *shape)
    with torch.inference_mode():
        out = net(x)
    small = tuple(s // 8 for s in shape)
    assert isinstance(out, AICNet3DOutput)
    assert out.logits.shape == out.probabilities.shape == (2, 2)
    torch.testing.assert_close(out.probabilities, out.logits.softmax(1))
    assert out.care.shape == (2, *small)
    assert out.conv5.shape == (2, 8, *small)
    assert out.care.min() >= 0 and out.care.max() <= 1


def test_sizes_not_divisible_by_eight_are_rejected() -> None:
    net = _net("Hemiretinal", (16, 24, 16))
    with pytest.raises(ValueError, match="divide by 8"):
        net(torch.randn(1, 1, 16, 24, 12))
    with pytest.raises(ValueError, match=r"\(B, C, S, D, W\)"):
        net(torch.randn(1, 16, 24, 16))


def test_epa_needs_its_input_size() -> None:
    """EPA's Linformer projection fixes N; another grid is rejected with a clear message."""
    net = _net("EPA", (16, 24, 16))
    with pytest.raises(ValueError, match="grid"):
        net(torch.randn(1, 1, 24, 32, 16))


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="attention must be one of"):
        AICNet3D(attention="Spatial")
    with pytest.raises(ValueError, match="attention_after"):
        AICNet3D(attention_after=(2, 5))


def test_attention_after_sets_the_map_grid() -> None:
    """One attention block -> maps at S/4 (and inputs divisible by 4 suffice)."""
    net = AICNet3D(channels=8, attention_after=(3,)).eval()
    with torch.inference_mode():
        out = net(torch.randn(1, 1, 12, 20, 8))
    assert out.care.shape == (1, 3, 5, 2)


def test_batch_independence_in_eval() -> None:
    """In eval mode each sample's outputs do not depend on the rest of the batch."""
    net = _net("HemiretinalNeuronAxon", (16, 24, 16))
    x = torch.randn(3, 1, 16, 24, 16)
    with torch.inference_mode():
        full, single = net(x), net(x[1:2])
    torch.testing.assert_close(full.probabilities[1:2], single.probabilities)
    torch.testing.assert_close(full.care[1:2], single.care)


def _perturbed_logits(net: AICNet3D, x: torch.Tensor, region: tuple) -> tuple:
    """Logits without and with a large perturbation of conv 5's raw output in ``region``."""

    def hook(module, args, output):
        output = output.clone()
        output[region] += 50.0
        return output

    with torch.inference_mode():
        plain = net(x).logits
        handle = net.conv5.register_forward_hook(hook)
        try:
            perturbed = net(x).logits
        finally:
            handle.remove()
    return plain, perturbed


@pytest.mark.parametrize("attention", ("Hemiretinal", "none"))
def test_d1_global_pool_sees_every_voxel(attention: str) -> None:
    """D1: conv-5 features outside the reference pool's corner cube change the prediction.

    Grid 16 x 24 x 16 -> conv 5 on 2 x 3 x 2: the reference AvgPool3d(kernel 2, stride (2, 3, 2))
    averages [0:2]^3 and drops D index 2; adaptive pooling must not.
    """
    x = torch.randn(2, 1, 16, 24, 16)
    dropped = (slice(None), slice(None), slice(None), 2, slice(None))
    plain, perturbed = _perturbed_logits(_net(attention, (16, 24, 16)), x, dropped)
    assert (plain - perturbed).abs().max() > 1e-3
    faithful = _net(attention, (16, 24, 16), faithful_pool=True)
    plain, perturbed = _perturbed_logits(faithful, x, dropped)
    torch.testing.assert_close(plain, perturbed)
    # ... while the corner it keeps does matter.
    kept = (slice(None), slice(None), 0, 0, 0)
    plain, perturbed = _perturbed_logits(faithful, x, kept)
    assert (plain - perturbed).abs().max() > 1e-3


def test_d1_faithful_pool_at_reference_geometry() -> None:
    """At 128 x 192 x 112 (conv-5 grid 16 x 24 x 14) the faithful pool is the reference
    AvgPool3d(14, stride (16, 24, 14)): S >= 14 and D >= 14 are dropped. Head only, no forward."""
    torch.manual_seed(1)
    faithful, adaptive = AICNet3D(faithful_pool=True).eval(), AICNet3D().eval()
    adaptive.load_state_dict(faithful.state_dict())
    a = torch.randn(1, 32, 16, 24, 14)
    bumped = a.clone()
    bumped[:, :, 14:] += 50.0
    bumped[:, :, :, 14:] += 50.0
    with torch.inference_mode():
        expected = faithful.fc(torch.relu(faithful.bn5(a))[:, :, :14, :14, :14].mean((2, 3, 4)))
        torch.testing.assert_close(faithful.head(a), expected)
        torch.testing.assert_close(faithful.head(bumped), faithful.head(a))
        assert (adaptive.head(bumped) - adaptive.head(a)).abs().max() > 1e-3


def test_train_step_reaches_every_layer() -> None:
    """A classification loss back-propagates into every conv and both attention blocks."""
    net = AICNet3D(channels=8).train()
    with torch.no_grad():
        for block in net.attention.values():
            block.gamma.fill_(1.0)
    out = net(torch.randn(2, 1, 16, 24, 16))
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1])).backward()
    for name in (
        "conv1.0.weight",
        "conv2.0.weight",
        "conv5.weight",
        "fc.weight",
        "attention.2.ca.0.q.weight",
        "attention.4.residual.weight",
    ):
        grad = net.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
