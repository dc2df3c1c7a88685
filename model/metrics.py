"""Binary classification metrics for glaucoma detection (class 1 = glaucoma).

AUROC is computed from probabilities (Mann-Whitney U with average ranks for ties), not from
rounded predictions: the reference's rounded "AUROC" equals the balanced accuracy (model.md §8, D5);
both are reported. Confidence intervals are seeded percentile bootstraps over cases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

METRIC_NAMES = (
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "balanced_accuracy",
    "auroc",
)


def _as_arrays(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray):
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true and scores differ in length: {y.size} vs {p.size}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must contain only 0 and 1")
    return y, p


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def _rankdata(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    # Start index of each run of equal values.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_vals)) + 1]
    ends = np.r_[starts[1:], values.size]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) + 0.5 P(tie) (Mann-Whitney U).

    Returns NaN when only one class is present.
    """
    y, p = _as_arrays(y_true, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _rankdata(p)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def confusion(y_true, prob, threshold: float = 0.5) -> dict[str, int]:
    """TP, FP, TN, FN for predictions ``prob >= threshold``."""
    y, p = _as_arrays(y_true, prob)
    pred = p >= threshold
    return {
        "tp": int(np.sum(pred & (y == 1))),
        "fp": int(np.sum(pred & (y == 0))),
        "tn": int(np.sum(~pred & (y == 0))),
        "fn": int(np.sum(~pred & (y == 1))),
    }


def binary_metrics(y_true, prob, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, precision, F1, balanced accuracy and AUROC.

    Threshold-based metrics use ``prob >= threshold``; AUROC uses the probabilities. Undefined
    ratios (e.g. precision with no positive prediction) are NaN.
    """
    c = confusion(y_true, prob, threshold)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    sens = _ratio(tp, tp + fn)
    spec = _ratio(tn, tn + fp)
    prec = _ratio(tp, tp + fp)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "sensitivity": sens,
        "specificity": spec,
        "precision": prec,
        "f1": f1,
        "balanced_accuracy": (sens + spec) / 2.0,
        "auroc": auroc(y_true, prob),
    }


def reliability_bins(y_true, prob, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Equal-width bins of P(glaucoma): count, mean predicted probability, observed frequency."""
    y, p = _as_arrays(y_true, prob)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / count, np.nan)
        freq = np.where(count > 0, sum_y / count, np.nan)
    return {"edges": edges, "count": count, "mean_prob": mean_p, "frequency": freq}


def expected_calibration_error(y_true, prob, n_bins: int = 10) -> float:
    """ECE of P(glaucoma): Σ_b (n_b / n) |observed frequency_b − mean probability_b|, equal bins."""
    bins = reliability_bins(y_true, prob, n_bins)
    n = bins["count"].sum()
    if n == 0:
        return float("nan")
    used = bins["count"] > 0
    gap = np.abs(bins["frequency"][used] - bins["mean_prob"][used])
    return float(np.sum(bins["count"][used] * gap) / n)


def bootstrap_ci(
    y_true,
    prob,
    metric: Callable[[np.ndarray, np.ndarray], dict[str, float]] | None = None,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals for every value returned by ``metric`` (cases resampled).

    Resamples where a metric is undefined (NaN, e.g. AUROC with one class) are ignored for it.
    """
    y, p = _as_arrays(y_true, prob)
    metric = metric or (lambda yy, pp: binary_metrics(yy, pp))
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        idx = rng.integers(0, y.size, y.size)
        for key, value in metric(y[idx], p[idx]).items():
            draws.setdefault(key, []).append(value)
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out = {}
    for key, values in draws.items():
        arr = np.asarray(values, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        out[key] = (
            (float(np.percentile(arr, lo_q)), float(np.percentile(arr, hi_q)))
            if arr.size
            else (float("nan"), float("nan"))
        )
    return out


def evaluate_predictions(
    y_true,
    prob,
    *,
    threshold: float = 0.5,
    n_resamples: int = 1000,
    seed: int = 0,
    n_bins: int = 10,
) -> dict:
    """Everything the evaluation report needs, JSON-serialisable.

    Returns ``{"n", "n_glaucoma", "threshold", "metrics": {name: {"value", "ci95"}}, "ece",
    "auroc_from_rounded"}``; ``auroc_from_rounded`` is the reference's D5 number for comparison.
    """
    y, p = _as_arrays(y_true, prob)

    def with_ece(yy: np.ndarray, pp: np.ndarray) -> dict[str, float]:
        values = binary_metrics(yy, pp, threshold)
        values["ece"] = expected_calibration_error(yy, pp, n_bins)
        return values

    point = with_ece(y, p)
    cis = bootstrap_ci(y, p, with_ece, n_resamples=n_resamples, seed=seed)
    return {
        "n": int(y.size),
        "n_glaucoma": int(y.sum()),
        "threshold": threshold,
        "bootstrap": {"resamples": n_resamples, "seed": seed, "level": 0.95},
        "metrics": {k: {"value": point[k], "ci95": list(cis[k])} for k in (*METRIC_NAMES, "ece")},
        "auroc_from_rounded": auroc(y, (p >= threshold).astype(float)),
    }


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    y, p = _as_arrays(y_true, scores)
    order = np.argsort(-p, kind="mergesort")
    y_sorted, p_sorted = y[order], p[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(p_sorted)), y.size - 1]
    tps = np.cumsum(y_sorted)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    n_pos, n_neg = max(int(y.sum()), 1), max(int(y.size - y.sum()), 1)
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos]


def plot_evaluation(y_true, prob, path: str | Path, *, title: str = "", n_bins: int = 10) -> Path:
    """Write a PNG with the ROC curve and the reliability diagram of P(glaucoma)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, p = _as_arrays(y_true, prob)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_roc, ax_rel) = plt.subplots(1, 2, figsize=(9, 4.2))
    fpr, tpr = roc_curve(y, p)
    ax_roc.plot(fpr, tpr, lw=2, label=f"AUROC {auroc(y, p):.3f}")
    ax_roc.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax_roc.set(xlabel="1 − specificity", ylabel="sensitivity", title="ROC", xlim=(0, 1),
               ylim=(0, 1))
    ax_roc.legend(loc="lower right")
    bins = reliability_bins(y, p, n_bins)
    centres = (bins["edges"][:-1] + bins["edges"][1:]) / 2
    used = bins["count"] > 0
    bars = ax_rel.bar(centres[used], bins["frequency"][used], width=1 / n_bins, edgecolor="k",
                      alpha=0.7, label=f"ECE {expected_calibration_error(y, p, n_bins):.3f}")
    ax_rel.bar_label(bars, labels=[f"n={int(c)}" for c in bins["count"][used]], fontsize=7)
    ax_rel.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax_rel.set(xlabel="predicted P(glaucoma)", ylabel="observed glaucoma fraction",
               title="Reliability", xlim=(0, 1), ylim=(0, 1))
    ax_rel.legend(loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
