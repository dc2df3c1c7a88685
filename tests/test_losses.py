"""Tests for model.losses: every consistency criterion and the classification loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from model.losses import (
    CONSISTENCY,
    classification_loss,
    get_consistency,
    kl_consistency,
    stage2_loss,
)

SHAPES = [(2, 16, 24, 14), (2, 2, 3, 2)]  # the paper's map grid and a test-sized model's


def _maps(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g)
    return a / a.flatten(1).amax(1).view(-1, 1, 1, 1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(CONSISTENCY))
def test_identical_maps_give_minimum(name, shape):
    crit = get_consistency(name)
    a = _maps(shape)
    same = crit(a, a.clone())
    assert same.ndim == 0
    assert abs(float(same)) < 1e-4
    other = crit(a, _maps(shape, seed=1))
    assert float(other) > float(same) + 1e-3


@pytest.mark.parametrize("name", sorted(CONSISTENCY))
def test_closer_maps_score_lower(name):
    crit = get_consistency(name)
    target = _maps((2, 8, 12, 8))
    noise = _maps((2, 8, 12, 8), seed=3)
    near = crit(0.9 * target + 0.1 * noise, target)
    far = crit(0.3 * target + 0.7 * noise, target)
    assert float(near) < float(far)


@pytest.mark.parametrize("name", sorted(CONSISTENCY))
def test_gradients_finite_even_for_zero_gradcam(name):
    crit = get_consistency(name)
    for nonzero, g in ((True, _maps((2, 4, 6, 4))), (False, torch.zeros(2, 4, 6, 4))):
        gradcam = g.clone().requires_grad_(True)
        care = _maps((2, 4, 6, 4), seed=2).requires_grad_(True)
        loss = crit(gradcam, care)
        loss.backward()
        assert math.isfinite(loss.item())
        assert torch.isfinite(gradcam.grad).all() and torch.isfinite(care.grad).all()
        assert gradcam.grad.abs().sum() > 0
        if nonzero:  # a constant Grad-CAM has no correlation to move, so Pearson's CARE grad is 0
            assert care.grad.abs().sum() > 0


def test_kl_matches_definition_and_is_asymmetric():
    p = torch.tensor([[[[0.1, 0.4], [0.5, 1.0]]]])
    q = torch.tensor([[[[1.0, 0.2], [0.3, 0.1]]]])
    pn = (p.flatten() + 1e-6) / (p.flatten() + 1e-6).sum()
    qn = (q.flatten() + 1e-6) / (q.flatten() + 1e-6).sum()
    expected = float((pn * (pn / qn).log()).sum())
    assert float(kl_consistency(q, p)) == pytest.approx(expected, rel=1e-5)
    assert float(kl_consistency(q, p)) != pytest.approx(float(kl_consistency(p, q)), rel=1e-3)
    assert float(kl_consistency(q, p)) >= 0


def test_mismatched_shapes_rejected():
    with pytest.raises(ValueError, match="consistency maps"):
        get_consistency("mse")(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 3))


def test_unknown_criterion_names_choices():
    with pytest.raises(ValueError, match="pearson"):
        get_consistency("cosine")


def test_classification_loss_is_plain_cross_entropy():
    logits = torch.tensor([[2.0, -1.0], [0.5, 1.5], [0.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    loss = classification_loss(logits, labels)
    p1 = logits.softmax(1)[:, 1]
    bce = F.binary_cross_entropy(p1, labels.float())
    assert float(loss) == pytest.approx(float(bce), rel=1e-5)  # CE on logits == BCE on P(glaucoma)


def test_stage2_loss_mix():
    cls, cons = torch.tensor(2.0), torch.tensor(4.0)
    assert float(stage2_loss(cls, cons, 0.75)) == pytest.approx(0.25 * 2 + 0.75 * 4)
    with pytest.raises(ValueError, match="weight"):
        stage2_loss(cls, cons, 1.5)
