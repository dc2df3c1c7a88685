"""Tests for model.metrics."""

import json
import math
from itertools import product

import numpy as np
import pytest

from model.metrics import (
    auroc,
    binary_metrics,
    bootstrap_ci,
    evaluate_predictions,
    expected_calibration_error,
    plot_evaluation,
    roc_curve,
)


def _auroc_bruteforce(y, p):
    pos = [pi for yi, pi in zip(y, p, strict=True) if yi == 1]
    neg = [pi for yi, pi in zip(y, p, strict=True) if yi == 0]
    wins = sum((a > b) + 0.5 * (a == b) for a, b in product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_from_probabilities_differs_from_rounded():
    """D5: the reference's AUROC on rounded predictions is the balanced accuracy."""
    y = [0, 0, 1, 1]
    p = [0.1, 0.6, 0.7, 0.9]
    assert auroc(y, p) == 1.0
    rounded = [float(x >= 0.5) for x in p]
    assert auroc(y, rounded) == pytest.approx(0.75)
    m = binary_metrics(y, p)
    assert m["balanced_accuracy"] == pytest.approx(auroc(y, rounded))
    assert m["auroc"] != m["balanced_accuracy"]


def test_auroc_ties_and_bruteforce():
    assert auroc([0, 1], [0.5, 0.5]) == 0.5
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p = np.round(rng.random(60), 1)  # many ties
    assert auroc(y, p) == pytest.approx(_auroc_bruteforce(y, p))
    assert auroc(y, 1 - p) == pytest.approx(1 - auroc(y, p))


def test_auroc_single_class_is_nan():
    assert math.isnan(auroc([1, 1, 1], [0.2, 0.5, 0.9]))


def test_binary_metrics_values():
    y = [1, 1, 1, 0, 0, 0, 0, 1]
    p = [0.9, 0.8, 0.3, 0.2, 0.6, 0.1, 0.4, 0.5]
    m = binary_metrics(y, p)
    # TP 3 (0.9, 0.8, 0.5), FN 1, FP 1, TN 3
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(3 / 4)
    assert m["auroc"] == pytest.approx(_auroc_bruteforce(y, p))


def test_metrics_input_errors():
    with pytest.raises(ValueError, match="length"):
        binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="0 and 1"):
        binary_metrics([0, 2], [0.5, 0.5])


def test_ece_perfect_and_overconfident():
    y = np.array([0] * 50 + [1] * 50)
    assert expected_calibration_error(y, y.astype(float)) == 0.0
    # Always 0.95 for a 50/50 set: gap 0.45.
    assert expected_calibration_error(y, np.full(100, 0.95)) == pytest.approx(0.45)


def test_bootstrap_seeded_and_contains_point():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    p = np.clip(y * 0.4 + rng.random(80) * 0.6, 0, 1)
    a = bootstrap_ci(y, p, n_resamples=300, seed=5)
    b = bootstrap_ci(y, p, n_resamples=300, seed=5)
    assert a == b
    point = binary_metrics(y, p)
    for key in ("auroc", "accuracy", "sensitivity"):
        lo, hi = a[key]
        assert lo <= point[key] <= hi
        assert hi - lo > 0


def test_evaluate_predictions_json_and_rounded_auroc():
    y = [0, 0, 1, 1, 0, 1]
    p = [0.1, 0.6, 0.7, 0.9, 0.2, 0.4]
    out = evaluate_predictions(y, p, n_resamples=200, seed=0)
    json.dumps(out)  # serialisable
    assert out["n"] == 6 and out["n_glaucoma"] == 3
    assert set(out["metrics"]) >= {"auroc", "balanced_accuracy", "ece", "f1"}
    assert out["metrics"]["auroc"]["value"] == pytest.approx(_auroc_bruteforce(y, p))
    assert out["auroc_from_rounded"] == pytest.approx(out["metrics"]["balanced_accuracy"]["value"])


def test_roc_curve_endpoints():
    fpr, tpr = roc_curve([0, 1, 0, 1], [0.1, 0.9, 0.5, 0.5])
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc([0, 1, 0, 1], [0.1, 0.9, 0.5, 0.5]))


def test_plot_evaluation_writes_png(tmp_path):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 40)
    path = plot_evaluation(y, rng.random(40), tmp_path / "sub" / "eval.png", title="test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
