"""Held-out evaluation of an AI-CNet3D model: metrics with bootstrap CIs, ECE, figures, and the
interpretability check on phantoms.

Interpretability check (phantoms only; the thinned hemiretina is known): for each glaucomatous
volume, do the mean CARE and the mean Grad-CAM over the thinned hemiretina (superior ``S[:S/2]`` or
inferior ``S[S/2:]``) exceed their means over the other hemiretina? Reported as the fraction of
volumes where they do, with the mean per-volume Pearson r between CARE and Grad-CAM. Maps are
upsampled trilinearly from the map grid to the model grid first.

CLI (regenerates the README's metric table on a fresh phantom set)::

    python -m model.evaluate --bundle model/bundles/aicnet3d_demo --phantoms 200 --seed 20261128 \
        --out bench/results/demo_evaluation

``--signs thinning`` (or ``cup``) evaluates on the same eyes with one glaucomatous sign only: a
controlled check of which sign the model and its maps rely on.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.data import OCTDataset, Sample
from model.metrics import evaluate_predictions, plot_evaluation
from model.phantoms import GLAUCOMA_SIGNS
from model.transforms import resample_tensor

logger = logging.getLogger("model.evaluate")


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson r of two maps; NaN when either is constant."""
    x = a.flatten().double() - a.double().mean()
    y = b.flatten().double() - b.double().mean()
    den = float(torch.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum()) / den if den > 0 else float("nan")


def _hemiretina_means(m: torch.Tensor) -> tuple[float, float]:
    """Mean of an (S, D, W) map over the superior (S[:S/2]) and inferior (S[S/2:]) halves."""
    half = m.shape[0] // 2
    return float(m[:half].mean()), float(m[m.shape[0] - half :].mean())


@torch.no_grad()
def explain_samples(
    net: torch.nn.Module,
    samples: Sequence[Sample],
    grid: Sequence[int],
    normalisation: Mapping[str, Any],
    device: str | torch.device = "cpu",
    batch_size: int = 4,
) -> dict[str, Any]:
    """Run ``net.explain`` over ``samples`` (eval mode) and collect probabilities and map stats.

    Returns ``{"labels", "probabilities", "per_volume"}`` where ``per_volume`` holds, for each
    sample, the CARE and Grad-CAM hemiretina means and their Pearson r on the model grid.
    """
    net.eval()
    dataset = OCTDataset(samples, grid, normalisation, augment=False, cache=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    labels, probs, per_volume = [], [], []
    for batch in loader:
        prob, care, gradcam = net.explain(batch["image"].to(device))
        care_up = resample_tensor(care[:, None].float(), grid)[:, 0].clamp(0, 1).cpu()
        grad_up = resample_tensor(gradcam[:, None].float(), grid)[:, 0].clamp(0, 1).cpu()
        for i, index in enumerate(batch["index"].tolist()):
            sample = samples[index]
            c_sup, c_inf = _hemiretina_means(care_up[i])
            g_sup, g_inf = _hemiretina_means(grad_up[i])
            per_volume.append({
                "source_id": sample.source_id,
                "label": sample.label,
                "probability": float(prob[i]),
                "thinned_hemiretina": sample.thinned_hemiretina,
                "care_superior": c_sup, "care_inferior": c_inf,
                "gradcam_superior": g_sup, "gradcam_inferior": g_inf,
                "pearson_r": _pearson(care_up[i], grad_up[i]),
            })
        labels.extend(batch["label"].tolist())
        probs.extend(prob.float().cpu().tolist())
    return {"labels": np.asarray(labels), "probabilities": np.asarray(probs),
            "per_volume": per_volume}


def interpretability_summary(per_volume: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Fractions of glaucomatous phantoms whose CARE / Grad-CAM favour the thinned hemiretina.

    Returns None when no sample carries the thinned-hemiretina ground truth.
    """
    thinned = [v for v in per_volume if v.get("thinned_hemiretina") in ("superior", "inferior")]
    if not thinned:
        return None

    def favours(v: Mapping[str, Any], key: str) -> bool:
        inside = v[f"{key}_{v['thinned_hemiretina']}"]
        other = v[f"{key}_{'inferior' if v['thinned_hemiretina'] == 'superior' else 'superior'}"]
        return inside > other

    r_all = np.array([v["pearson_r"] for v in per_volume], dtype=float)
    r_glaucoma = np.array([v["pearson_r"] for v in thinned], dtype=float)
    return {
        "n_glaucoma_phantoms": len(thinned),
        "care_thinned_hemiretina_fraction": float(np.mean([favours(v, "care") for v in thinned])),
        "gradcam_thinned_hemiretina_fraction": float(
            np.mean([favours(v, "gradcam") for v in thinned])
        ),
        "care_gradcam_pearson_r_mean": float(np.nanmean(r_all)) if np.isfinite(r_all).any()
        else float("nan"),
        "care_gradcam_pearson_r_mean_glaucoma": float(np.nanmean(r_glaucoma))
        if np.isfinite(r_glaucoma).any() else float("nan"),
        "pearson_r_undefined": int(np.sum(~np.isfinite(r_all))),
        "maps_compared_on": "model grid (maps upsampled trilinearly)",
    }


def evaluate_model(
    net: torch.nn.Module,
    samples: Sequence[Sample],
    grid: Sequence[int],
    normalisation: Mapping[str, Any],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    threshold: float = 0.5,
    n_resamples: int = 1000,
    seed: int = 0,
    out_dir: str | Path | None = None,
    name: str = "evaluation",
    title: str = "",
) -> dict[str, Any]:
    """Metrics (with 95 % bootstrap CIs and ECE) and, for phantoms, the interpretability check.

    With ``out_dir``, writes ``<name>.json``, ``<name>.png`` (ROC + reliability) and
    ``<name>_per_volume.jsonl`` there. Returns the JSON document.
    """
    if not samples:
        raise ValueError("no samples to evaluate")
    result = explain_samples(net, samples, grid, normalisation, device, batch_size)
    report = evaluate_predictions(result["labels"], result["probabilities"], threshold=threshold,
                                  n_resamples=n_resamples, seed=seed)
    report["interpretability"] = interpretability_summary(result["per_volume"])
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        png = plot_evaluation(result["labels"], result["probabilities"], out / f"{name}.png",
                              title=title)
        report["figure"] = png.name
        (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        with (out / f"{name}_per_volume.jsonl").open("w") as f:
            for row in result["per_volume"]:
                f.write(json.dumps(row) + "\n")
    return report


def format_table(report: Mapping[str, Any]) -> str:
    """Markdown table of a report's metrics (value and 95 % CI)."""
    rows = ["| metric | value | 95 % CI |", "|---|---|---|"]
    for key, entry in report["metrics"].items():
        lo, hi = entry["ci95"]
        rows.append(f"| {key} | {entry['value']:.3f} | {lo:.3f}–{hi:.3f} |")
    interp = report.get("interpretability")
    if interp:
        rows.append(f"| CARE favours thinned hemiretina | "
                    f"{interp['care_thinned_hemiretina_fraction']:.3f} | |")
        rows.append(f"| Grad-CAM favours thinned hemiretina | "
                    f"{interp['gradcam_thinned_hemiretina_fraction']:.3f} | |")
        rows.append(f"| mean Pearson r (CARE, Grad-CAM) | "
                    f"{interp['care_gradcam_pearson_r_mean']:.3f} | |")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m model.evaluate``."""
    p = argparse.ArgumentParser(
        prog="python -m model.evaluate",
        description="Evaluate a bundle on a fresh held-out set of synthetic phantoms.",
    )
    p.add_argument("--bundle", required=True, type=Path, help="MONAI bundle folder")
    p.add_argument("--phantoms", type=int, default=200, help="number of phantoms (default 200)")
    p.add_argument("--seed", type=int, default=20261128,
                   help="phantom-set seed; use one the training never saw")
    p.add_argument("--shape", type=int, nargs=3, metavar=("S", "D", "W"), default=None,
                   help="phantom grid (default: the bundle's input grid)")
    p.add_argument("--out", type=Path, default=None,
                   help="write evaluation.json / .png / _per_volume.jsonl here")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--device", default=None, help="torch device (default cuda if available)")
    p.add_argument("--signs", nargs="+", choices=GLAUCOMA_SIGNS, default=list(GLAUCOMA_SIGNS),
                   help="glaucomatous signs of the phantoms (default: all, as in training)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="evaluate these weights instead of the bundle's: a model.train checkpoint "
                        "(e.g. runs/aicnet3d_demo/stage1_best.pt, the model before stage 2)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m model.evaluate``."""
    from model.bundle import load_bundle
    from model.data import phantom_samples

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    net, meta = load_bundle(args.bundle, device=device)
    if args.checkpoint is not None:
        checkpoint = torch.load(args.checkpoint, map_location=device, weights_only=False)
        net.load_state_dict(checkpoint.get("state_dict", checkpoint))
    shape = tuple(args.shape) if args.shape else meta.input_grid
    logger.info("generating %d phantoms (seed %d, shape %s)", args.phantoms, args.seed, shape)
    samples = phantom_samples(args.phantoms, args.seed, shape=shape, signs=args.signs)
    report = evaluate_model(
        net, samples, meta.input_grid, meta.intensity_normalisation, device=device,
        batch_size=args.batch_size, threshold=meta.threshold, n_resamples=args.resamples,
        seed=args.seed, out_dir=args.out,
        title=f"{meta.name} {meta.version}: {args.phantoms} phantoms, seed {args.seed}",
    )
    report["bundle"] = {"name": meta.name, "version": meta.version, "path": str(args.bundle)}
    if args.checkpoint is not None:
        report["checkpoint"] = str(args.checkpoint)
    report["phantoms"] = {"count": args.phantoms, "seed": args.seed, "shape": list(shape),
                          "signs": list(args.signs)}
    if args.out is not None:
        (args.out / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
