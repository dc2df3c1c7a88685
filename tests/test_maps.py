"""CARE and Grad-CAM (model.md §5): definitions, closed form vs autograd, the training path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.maps import care_map, gradcam_from_weights, normalise_map
from model.network import AICNet3D

VARIANTS = ("Hemiretinal", "NeuronAxon", "HemiretinalNeuronAxon", "EPA", "none")
SHAPES = ((16, 24, 16), (24, 32, 16), (32, 48, 24))


def _net(attention: str, shape: tuple, faithful_pool: bool = False, seed: int = 0) -> AICNet3D:
    """A small eval-mode float64 net with non-trivial BN5 statistics and attention strength."""
    torch.manual_seed(seed)
    net = AICNet3D(attention=attention, channels=8, input_size=shape, faithful_pool=faithful_pool)
    net = net.double().eval()
    with torch.no_grad():
        net.bn5.running_mean.uniform_(-0.2, 0.2)
        net.bn5.running_var.uniform_(0.01, 0.1)
        net.bn5.weight.uniform_(-1.0, 2.0)  # negative scales exercise the sign handling
        net.bn5.bias.uniform_(-0.5, 0.5)
        for block in net.attention.values():
            if hasattr(block, "gamma"):
                block.gamma.fill_(0.5)
    return net


def _full_autograd_gradcam(net: AICNet3D, x: torch.Tensor, target=None) -> torch.Tensor:
    """Textbook Grad-CAM: backward of p_k through the whole network, hook on conv 5."""
    out = net(x)
    out.conv5.retain_grad()
    k = out.probabilities.argmax(1) if target is None else torch.as_tensor(target).expand(len(x))
    out.probabilities.gather(1, k[:, None]).sum().backward()
    w = out.conv5.grad.mean(dim=(2, 3, 4))
    cam = F.relu(torch.einsum("bc,bcsdw->bsdw", w, out.conv5.detach()))
    return cam / (cam.amax(dim=(1, 2, 3), keepdim=True) + 1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("faithful_pool", (False, True))
def test_closed_form_equals_full_autograd(variant: str, shape: tuple, faithful_pool: bool) -> None:
    """Eval mode: closed form under inference_mode == autograd through the whole network."""
    net = _net(variant, shape, faithful_pool)
    x = torch.randn(2, 1, *shape, dtype=torch.float64)
    expected = _full_autograd_gradcam(net, x)
    with torch.inference_mode():
        got = net.gradcam(net(x))
    assert got.shape == (2, *(s // 8 for s in shape))
    assert expected.amax() > 0.5  # non-degenerate maps
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_closed_form_equals_full_autograd_float32_and_target() -> None:
    """Also in float32 (to ~1e-5) and for an explicit (non-predicted) target class."""
    net = _net("HemiretinalNeuronAxon", (16, 24, 16)).float()
    x = torch.randn(3, 1, 16, 24, 16)
    for target in (None, 0, 1):
        expected = _full_autograd_gradcam(net, x, target)
        with torch.inference_mode():
            got = net.gradcam(net(x), target=target)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ("Hemiretinal", "HemiretinalNeuronAxon"))
@pytest.mark.parametrize("faithful_pool", (False, True))
@pytest.mark.parametrize("training", (False, True))
def test_closed_form_equals_head_autograd(
    variant: str, faithful_pool: bool, training: bool
) -> None:
    """The two implementations agree in eval (running stats) and train (batch stats) mode."""
    net = _net(variant, (16, 24, 16), faithful_pool).train(training)
    x = torch.randn(3, 1, 16, 24, 16, dtype=torch.float64)
    out = net(x)
    closed = net.gradcam(out, method="closed")
    autograd = net.gradcam(out, method="autograd")
    torch.testing.assert_close(closed, autograd)
    assert closed.amax() > 0.5


def test_autograd_method_works_under_inference_mode() -> None:
    net = _net("Hemiretinal", (16, 24, 16))
    x = torch.randn(2, 1, 16, 24, 16, dtype=torch.float64)
    with torch.inference_mode():
        out = net(x)
        torch.testing.assert_close(net.gradcam(out, method="autograd"), net.gradcam(out))
    with pytest.raises(ValueError, match="method"):
        net.gradcam(out, method="guided")


def test_train_mode_gradcam_is_per_sample() -> None:
    """Train mode: sample b's map is the gradient of its own probability only.

    The BN5 batch statistics are constants, so with the batch statistics fixed, the map of a
    sample equals Grad-CAM of a head that sees that sample alone.
    """
    net = _net("Hemiretinal", (16, 24, 16)).train()
    x = torch.randn(3, 1, 16, 24, 16, dtype=torch.float64)
    out = net(x)
    maps = net.gradcam(out)
    a = out.conv5.detach()
    var, mean = torch.var_mean(a, dim=(0, 2, 3, 4), unbiased=False)
    for b in range(3):
        ab = a[b : b + 1].clone().requires_grad_(True)
        logits = net.fc(
            F.relu(F.batch_norm(ab, mean, var, net.bn5.weight, net.bn5.bias, eps=1e-5)).mean(
                dim=(2, 3, 4)
            )
        )
        p = logits.softmax(1)
        p[0, p.argmax()].backward()
        w = ab.grad.mean(dim=(2, 3, 4))
        torch.testing.assert_close(maps[b : b + 1], gradcam_from_weights(a[b : b + 1], w))


def test_training_path_backpropagates_consistency_loss() -> None:
    """Stage 2: L(gradcam, care) reaches conv weights (conv 5 and upstream) and the attention;
    the Grad-CAM weights are constants, so the fc layer gets no gradient from it."""
    torch.manual_seed(3)
    net = AICNet3D(channels=8).train()
    with torch.no_grad():
        for block in net.attention.values():
            block.gamma.fill_(0.5)
    out = net(torch.randn(2, 1, 16, 24, 16))
    cam = net.gradcam(out)
    assert cam.requires_grad
    F.mse_loss(cam, out.care).backward()
    for name in (
        "conv1.0.weight",
        "conv4.0.weight",
        "conv5.weight",
        "attention.4.ca.1.v.weight",
        "attention.4.gamma",
    ):
        grad = net.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert net.fc.weight.grad is None


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_maps_shape_and_range(variant: str, shape: tuple) -> None:
    net = _net(variant, shape).float()
    with torch.inference_mode():
        out = net(torch.rand(2, 1, *shape) * 255)
        cam = net.gradcam(out)
    for m in (out.care, cam):
        assert m.shape == (2, *(s // 8 for s in shape))
        assert m.dtype == torch.float32
        assert m.min() >= 0 and m.max() <= 1


def test_care_is_read_from_the_last_attention_block_after_pooling() -> None:
    """CARE = ReLU(channel mean of A2 + P2) / (max + 1e-5), per sample."""
    net = _net("Hemiretinal", (16, 24, 16))
    captured = {}
    net.attention["4"].register_forward_hook(lambda m, i, o: captured.setdefault("a2", o))
    x = torch.randn(2, 1, 16, 24, 16, dtype=torch.float64)
    with torch.inference_mode():
        out = net(x)
    feats = F.max_pool3d(captured["a2"], 2)
    raw = F.relu(feats.mean(dim=1))
    expected = raw / (raw.amax(dim=(1, 2, 3), keepdim=True) + 1e-5)
    torch.testing.assert_close(out.care, expected)
    torch.testing.assert_close(care_map(feats), expected)


def test_normalise_map_per_sample() -> None:
    raw = torch.stack([torch.full((2, 3, 2), -1.0), torch.arange(12.0).reshape(2, 3, 2)])
    out = normalise_map(raw)
    assert torch.all(out[0] == 0)
    torch.testing.assert_close(out[1].amax(), torch.tensor(11 / (11 + 1e-5)))


@pytest.mark.parametrize("variant", ("Hemiretinal", "EPA"))
def test_explain_one_call_without_backward(variant: str) -> None:
    """explain = P(glaucoma), CARE, Grad-CAM of one forward; no graph, matches forward+gradcam."""
    net = _net(variant, (16, 24, 16)).float()
    x = torch.randn(2, 1, 16, 24, 16, requires_grad=True)
    prob, care, cam = net.explain(x)
    assert prob.shape == (2,) and not prob.requires_grad and not cam.requires_grad
    assert x.grad is None
    with torch.inference_mode():
        out = net(x)
        torch.testing.assert_close(prob, out.probabilities[:, 1])
        torch.testing.assert_close(care, out.care)
        torch.testing.assert_close(cam, net.gradcam(out))
