"""Train AI-CNet3D: stage 1 classification, stage 2 CARE/Grad-CAM consistency fine-tuning.

Recipe (model.md §7): NAdam (lr 1e-4, betas 0.9/0.999, eps 1e-8, momentum_decay 4e-3), batch 4,
early stopping on the validation classification loss with patience 25. Stage 2 starts from the
stage-1 best checkpoint with a new optimiser and minimises (1 − w)·CE + w·consistency(Grad-CAM,
CARE), w = 0.75. Fixes against the reference: validation in eval() + no_grad (D4), plain CE (D3),
AUROC from probabilities (D5), patient-level split (D6), seeded everything with the split logged
(D7), laterality canonicalisation (D8), no W-flip augmentation (D9).

Outputs in RUN_DIR: train.log, history.jsonl (one line per epoch), split.json, stage1_best.pt,
stage2_best.pt, evaluation.json + evaluation.png (held-out test split); with --bundle-out, a MONAI
bundle of the final model. Run ``python -m model.train --help`` for the options; ``--config FILE``
reads the same options from YAML (keys are the option names, e.g. ``batch_size: 4``).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model.data import (
    OCTDataset,
    Sample,
    describe_split,
    dicom_samples,
    folder_samples,
    phantom_samples,
    split_by_patient,
    zenodo_samples,
)
from model.evaluate import evaluate_model
from model.losses import classification_loss, get_consistency, stage2_loss
from model.metrics import auroc
from model.phantoms import GLAUCOMA_SIGNS
from model.transforms import DEFAULT_NORMALISATION

logger = logging.getLogger("model.train")

DEFAULT_GRID = (64, 96, 56)


# --------------------------------------------------------------------------------------------------
# Reproducibility


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) RNGs (D7)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32  # distinct per worker and epoch, derived from the loader
    random.seed(seed)
    np.random.seed(seed)


def make_loader(
    dataset: OCTDataset, batch_size: int, *, shuffle: bool, seed: int, num_workers: int = 0
) -> torch.utils.data.DataLoader:
    """DataLoader with a seeded shuffle order and seeded workers."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_worker_init if num_workers else None,
        persistent_workers=False,  # workers re-copy the dataset, so set_epoch takes effect
    )


# --------------------------------------------------------------------------------------------------
# One epoch


def train_epoch(
    net: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    optimiser: torch.optim.Optimizer,
    device: torch.device,
    *,
    stage: int,
    consistency: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    weight: float = 0.75,
    progress: bool = False,
    desc: str = "",
) -> dict[str, float]:
    """One training epoch; returns mean loss, classification loss and (stage 2) consistency.

    Stage 2 follows model.md §7: forward -> (p, CARE); Grad-CAM on the training path (weights
    constant, conv-5 graph kept); L = (1 − w)·CE + w·consistency(Grad-CAM, CARE).
    """
    net.train()
    totals = {"loss": 0.0, "cls_loss": 0.0, "cons_loss": 0.0}
    n = 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch")
    for batch in bar:
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        out = net(x)
        cls = classification_loss(out.logits, y)
        if stage == 2:
            if consistency is None:
                raise ValueError("stage 2 needs a consistency criterion")
            cons = consistency(net.gradcam(out), out.care)
            loss = stage2_loss(cls, cons, weight)
        else:
            cons = torch.zeros((), device=device)
            loss = cls
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        b = x.shape[0]
        n += b
        totals["loss"] += loss.item() * b
        totals["cls_loss"] += cls.item() * b
        totals["cons_loss"] += cons.item() * b
        bar.set_postfix(loss=f"{totals['loss'] / n:.4f}")
    return {k: v / max(n, 1) for k, v in totals.items()}


@torch.no_grad()
def validate(
    net: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    consistency: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Validation in eval mode without gradients (D4).

    ``loss`` is the classification loss only (the early-stopping criterion in both stages);
    ``cons_loss`` (when a criterion is given) reports the map consistency for monitoring.
    """
    net.eval()
    total, total_cons, n = 0.0, 0.0, 0
    labels, probs = [], []
    for batch in loader:
        x = batch["image"].to(device)
        y = batch["label"].to(device)
        out = net(x)
        total += float(classification_loss(out.logits, y)) * x.shape[0]
        if consistency is not None:
            total_cons += float(consistency(net.gradcam(out), out.care)) * x.shape[0]
        n += x.shape[0]
        labels.extend(y.tolist())
        probs.extend(out.probabilities[:, 1].float().cpu().tolist())
    y_arr, p_arr = np.asarray(labels), np.asarray(probs)
    result = {
        "loss": total / max(n, 1),
        "auroc": auroc(y_arr, p_arr) if n else float("nan"),
        "accuracy": float(np.mean((p_arr >= 0.5) == y_arr)) if n else float("nan"),
    }
    if consistency is not None:
        result["cons_loss"] = total_cons / max(n, 1)
    return result


# --------------------------------------------------------------------------------------------------
# One stage


@dataclass
class StageResult:
    """Outcome of :func:`train_stage`."""

    stage: int
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None


def make_optimiser(net: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """NAdam with the reference settings (model.md §7)."""
    return torch.optim.NAdam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                             weight_decay=0.0, momentum_decay=4e-3)


def train_stage(
    net: torch.nn.Module,
    train_loader: torch.utils.data.DataLoader,
    val_loader: torch.utils.data.DataLoader,
    *,
    stage: int,
    epochs: int,
    patience: int = 25,
    lr: float = 1e-4,
    consistency: str = "mse",
    weight: float = 0.75,
    device: torch.device | str = "cpu",
    run_dir: Path | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
    progress: bool = False,
) -> StageResult:
    """Train one stage with early stopping on the validation classification loss.

    The best weights are kept in memory and, with ``run_dir``, saved to ``stage<N>_best.pt``
    (``{"state_dict", "stage", "epoch", "val_loss", **checkpoint_extra}``); every epoch is appended
    to ``run_dir/history.jsonl`` and logged. Restores the best weights into ``net`` at the end.
    """
    device = torch.device(device)
    criterion = get_consistency(consistency)
    optimiser = make_optimiser(net, lr)  # a new optimiser per stage
    best = StageResult(stage, copy.deepcopy(net.state_dict()), 0, math.inf, 0)
    stale = 0
    ckpt = run_dir / f"stage{stage}_best.pt" if run_dir else None
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        train_loader.dataset.set_epoch(epoch)
        train = train_epoch(net, train_loader, optimiser, device, stage=stage,
                            consistency=criterion if stage == 2 else None, weight=weight,
                            progress=progress, desc=f"stage {stage} epoch {epoch}")
        val = validate(net, val_loader, device, criterion)
        improved = val["loss"] < best.best_val_loss
        record = {
            "stage": stage, "epoch": epoch,
            **{f"train_{k}": v for k, v in train.items()},
            **{f"val_{k}": v for k, v in val.items()},
            "seconds": time.perf_counter() - start, "best": improved,
        }
        best.history.append(record)
        logger.info(
            "stage %d epoch %d: train loss %.4f (cls %.4f, cons %.4f) | val loss %.4f auroc %.3f "
            "acc %.3f cons %.4f | %.1f s%s", stage, epoch, train["loss"], train["cls_loss"],
            train["cons_loss"], val["loss"], val["auroc"], val["accuracy"], val["cons_loss"],
            record["seconds"], " *" if improved else "",
        )
        if run_dir:
            with (run_dir / "history.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
        if improved:
            best.best_state = copy.deepcopy(net.state_dict())
            best.best_epoch, best.best_val_loss, stale = epoch, val["loss"], 0
            if ckpt:
                torch.save({"state_dict": best.best_state, "stage": stage, "epoch": epoch,
                            "val_loss": val["loss"], **(checkpoint_extra or {})}, ckpt)
        else:
            stale += 1
        best.epochs_run = epoch
        if stale >= patience:
            logger.info("stage %d: early stop after %d epochs without improvement", stage, stale)
            break
    net.load_state_dict(best.best_state)
    best.checkpoint = ckpt
    logger.info("stage %d: best epoch %d, val loss %.4f", stage, best.best_epoch,
                best.best_val_loss)
    return best


# --------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m model.train``."""
    p = argparse.ArgumentParser(
        prog="python -m model.train",
        description="Train AI-CNet3D (stage 1 classification, stage 2 CARE/Grad-CAM consistency).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="YAML file of option defaults (keys = option "
                   "names with underscores); command-line options override it")
    src = p.add_argument_group("data source (exactly one)")
    src.add_argument("--zenodo", type=Path, help="folder in the Zenodo 1481223 layout "
                     "(<Normal|POAG>-<id>-<yyyy>-<mm>-<dd>-<OD|OS>.npy)")
    src.add_argument("--glaucoma", type=Path,
                     help="folder of glaucoma .npy volumes (with --normal)")
    src.add_argument("--normal", type=Path, help="folder of non-glaucoma .npy volumes")
    src.add_argument("--patient-regex", help="regex (group 'patient') for the patient id in "
                     "--glaucoma/--normal file names")
    src.add_argument("--dicom", type=Path, help="folder of OCT DICOM files (with --labels)")
    src.add_argument("--labels", type=Path, help="CSV: SeriesInstanceUID,label[,patient_id]")
    src.add_argument("--phantoms", type=int, help="generate this many synthetic phantoms")
    src.add_argument("--phantom-seed", type=int, help="phantom-set seed (default: --seed)")
    src.add_argument("--phantom-shape", type=int, nargs=3, metavar=("S", "D", "W"),
                     help="phantom grid (default: --grid)")
    src.add_argument("--phantom-signs", nargs="+", choices=GLAUCOMA_SIGNS,
                     default=list(GLAUCOMA_SIGNS),
                     help="glaucomatous signs of the phantoms (default: all); one sign alone is "
                          "for controlled experiments")
    src.add_argument("--split", type=float, nargs=3, default=(0.65, 0.15, 0.20),
                     metavar=("TRAIN", "VAL", "TEST"), help="patient-level split fractions")

    net = p.add_argument_group("network")
    net.add_argument("--grid", type=int, nargs=3, default=DEFAULT_GRID, metavar=("S", "D", "W"),
                     help="model input grid; volumes are resampled to it (each divisible by 8)")
    net.add_argument("--channels", type=int, default=32, help="conv width C")
    net.add_argument("--attention", default="Hemiretinal",
                     choices=["Hemiretinal", "NeuronAxon", "HemiretinalNeuronAxon", "EPA", "none"])
    net.add_argument("--init", type=Path, help="initial weights: a stage checkpoint (.pt) or a "
                     "bundle folder; required for --stage 2")

    tr = p.add_argument_group("training")
    tr.add_argument("--stage", choices=["1", "2", "both"], default="both")
    tr.add_argument("--consistency", choices=["mse", "pearson", "ssim", "kl"], default="mse")
    tr.add_argument("--weight", type=float, default=0.75, help="consistency weight w (stage 2)")
    tr.add_argument("--epochs", type=int, default=250, help="maximum epochs per stage")
    tr.add_argument("--stage2-epochs", type=int, help="maximum stage-2 epochs (default --epochs)")
    tr.add_argument("--patience", type=int, default=25, help="early-stopping patience (epochs)")
    tr.add_argument("--batch-size", type=int, default=4)
    tr.add_argument("--lr", type=float, default=1e-4, help="NAdam learning rate")
    tr.add_argument("--no-augment", action="store_true", help="disable 'g' + 'z' augmentation")
    tr.add_argument("--s-flip", action="store_true", help="ablation: random S flip (p 0.5)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--num-workers", type=int, default=0)
    tr.add_argument("--no-cache", action="store_true",
                    help="do not keep resampled volumes in memory (large data sets)")
    tr.add_argument("--device", default=None, help="torch device (default cuda if available)")
    tr.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    tr.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")

    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, default=Path("runs/aicnet3d"), help="RUN_DIR")
    out.add_argument("--bundle-out", type=Path, help="write a MONAI bundle of the final model")
    out.add_argument("--bundle-name", default="aicnet3d_demo")
    out.add_argument("--bundle-version", default="1.0.0")
    out.add_argument("--eval-resamples", type=int, default=1000, help="bootstrap resamples")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line, with ``--config`` YAML values as defaults; validate the source."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config is not None:
        import yaml

        try:
            config = yaml.safe_load(pre.config.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            parser.error(f"cannot read --config {pre.config}: {exc}")
        if not isinstance(config, dict):
            parser.error(f"--config {pre.config}: expected a mapping of option: value")
        known = {a.dest for a in parser._actions}
        config = {str(k).replace("-", "_"): v for k, v in config.items()}
        unknown = sorted(set(config) - known)
        if unknown:
            parser.error(f"--config {pre.config}: unknown option(s) {unknown}")
        for key in ("stage",):
            if key in config:
                config[key] = str(config[key])
        parser.set_defaults(**config)
    args = parser.parse_args(argv)
    for key in ("zenodo", "glaucoma", "normal", "dicom", "labels", "init", "out", "bundle_out"):
        if isinstance(getattr(args, key), str):
            setattr(args, key, Path(getattr(args, key)))
    sources = [args.zenodo is not None, args.glaucoma is not None or args.normal is not None,
               args.dicom is not None or args.labels is not None, args.phantoms is not None]
    if sum(sources) != 1:
        parser.error("give exactly one data source: --zenodo DIR | --glaucoma DIR --normal DIR | "
                     "--dicom DIR --labels CSV | --phantoms N")
    if (args.glaucoma is None) != (args.normal is None):
        parser.error("--glaucoma and --normal go together")
    if (args.dicom is None) != (args.labels is None):
        parser.error("--dicom and --labels go together")
    if args.stage == "2" and args.init is None:
        parser.error("--stage 2 needs --init (the stage-1 checkpoint or a bundle)")
    if any(g % 8 for g in args.grid):
        parser.error(f"--grid sizes must divide by 8, got {list(args.grid)}")
    if not 0 <= args.weight <= 1:
        parser.error("--weight must lie in [0, 1]")
    return args


def load_samples(args: argparse.Namespace) -> tuple[list[Sample], dict[str, Any]]:
    """Samples from the selected source, and a JSON description of the source."""
    if args.zenodo is not None:
        return zenodo_samples(args.zenodo), {"kind": "zenodo", "folder": str(args.zenodo)}
    if args.glaucoma is not None:
        return (folder_samples(args.glaucoma, args.normal, patient_pattern=args.patient_regex),
                {"kind": "folders", "glaucoma": str(args.glaucoma), "normal": str(args.normal)})
    if args.dicom is not None:
        return (dicom_samples(args.dicom, args.labels),
                {"kind": "dicom", "folder": str(args.dicom), "labels": str(args.labels)})
    seed = args.seed if args.phantom_seed is None else args.phantom_seed
    shape = tuple(args.phantom_shape or args.grid)
    signs = [sign for sign in GLAUCOMA_SIGNS if sign in args.phantom_signs]
    source = {"kind": "phantoms", "count": args.phantoms, "seed": seed, "shape": list(shape)}
    if tuple(signs) != GLAUCOMA_SIGNS:
        source["signs"] = signs
    return phantom_samples(args.phantoms, seed, shape=shape, signs=signs), source


def network_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """AICNet3D constructor arguments from the CLI."""
    return {"channels": args.channels, "attention": args.attention,
            "input_size": tuple(args.grid)}


def load_initial_weights(net: torch.nn.Module, path: Path) -> None:
    """Load ``--init``: a checkpoint written by this module, a bare state_dict, or a bundle."""
    if path.is_dir():
        from model.bundle import load_bundle

        state = load_bundle(path)[0].state_dict()
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    net.load_state_dict(state)
    logger.info("initial weights from %s", path)


def _setup_logging(run_dir: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger("model")
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        if getattr(h, "_aicnet3d_train", False):
            root.removeHandler(h)
            h.close()
    handlers: list[logging.Handler] = [logging.FileHandler(run_dir / "train.log"),
                                       logging.StreamHandler(sys.stderr)]
    for h in handlers:
        h.setFormatter(fmt)
        h._aicnet3d_train = True  # type: ignore[attr-defined]
        root.addHandler(h)


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The bundle's compact evaluation record."""
    return {
        "n": report["n"],
        "metrics": {k: {"value": round(v["value"], 4), "ci95": [round(c, 4) for c in v["ci95"]]}
                    for k, v in report["metrics"].items()},
        "auroc_from_rounded": report["auroc_from_rounded"],
        "interpretability": report.get("interpretability"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole pipeline for parsed ``args``; returns the evaluation document."""
    from model.network import AICNet3D

    run_dir = args.out
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "history.jsonl").unlink(missing_ok=True)
    _setup_logging(run_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    logger.info("options %s", json.dumps(options))
    logger.info("seed %d (python, numpy, torch), device %s, torch threads %d", args.seed, device,
                torch.get_num_threads())

    samples, source = load_samples(args)
    split = split_by_patient(samples, fractions=args.split, seed=args.seed)
    (run_dir / "split.json").write_text(json.dumps(
        describe_split(split, seed=args.seed, fractions=list(args.split), source=source),
        indent=1) + "\n")
    for name, ss in split.items():
        logger.info("split %s: %d volumes, %d patients, %d glaucoma", name, len(ss),
                    len({s.patient_id for s in ss}), sum(s.label for s in ss))
    if not split["train"] or not split["val"] or not split["test"]:
        raise SystemExit("the split left train, val or test empty: use more data")

    norm = dict(DEFAULT_NORMALISATION)
    train_ds = OCTDataset(split["train"], args.grid, norm, augment=not args.no_augment,
                          s_flip=args.s_flip, seed=args.seed, cache=not args.no_cache)
    val_ds = OCTDataset(split["val"], args.grid, norm, cache=not args.no_cache)
    train_loader = make_loader(train_ds, args.batch_size, shuffle=True, seed=args.seed,
                               num_workers=args.num_workers)
    val_loader = make_loader(val_ds, args.batch_size, shuffle=False, seed=args.seed,
                             num_workers=args.num_workers)

    kwargs = network_kwargs(args)
    net = AICNet3D(**kwargs).to(device)
    if args.init is not None:
        load_initial_weights(net, args.init)
    extra = {"network_kwargs": kwargs, "grid": list(args.grid), "seed": args.seed,
             "intensity_normalisation": norm}
    common = dict(patience=args.patience, lr=args.lr, consistency=args.consistency,
                  weight=args.weight, device=device, run_dir=run_dir, checkpoint_extra=extra,
                  progress=not args.no_progress)
    results: dict[int, StageResult] = {}
    models: dict[int, dict[str, torch.Tensor]] = {}
    if args.stage in ("1", "both"):
        results[1] = train_stage(net, train_loader, val_loader, stage=1, epochs=args.epochs,
                                 **common)
        models[1] = results[1].best_state
    elif args.init is not None:
        models[1] = copy.deepcopy(net.state_dict())  # the given stage-1 model, for comparison
    if args.stage in ("2", "both"):
        seed_everything(args.seed)  # stage 2 starts from the same seed (model.md §7)
        results[2] = train_stage(net, train_loader, val_loader, stage=2,
                                 epochs=args.stage2_epochs or args.epochs, **common)
        models[2] = results[2].best_state
    final_stage = max(models)

    evaluation: dict[str, Any] = {
        "final_stage": final_stage, "seed": args.seed, "source": source,
        "test_counts": {"volumes": len(split["test"]),
                        "glaucoma": sum(s.label for s in split["test"])},
        "stages": {},
    }
    for stage, state in sorted(models.items()):
        net.load_state_dict(state)
        name = "evaluation" if stage == final_stage else f"evaluation_stage{stage}"
        report = evaluate_model(
            net, split["test"], args.grid, norm, device=device, batch_size=args.batch_size,
            n_resamples=args.eval_resamples, seed=args.seed, out_dir=run_dir, name=name,
            title=f"stage {stage}, held-out test split ({len(split['test'])} volumes)",
        )
        if stage in results:
            report["training"] = {"best_epoch": results[stage].best_epoch,
                                  "best_val_loss": results[stage].best_val_loss,
                                  "epochs_run": results[stage].epochs_run}
        evaluation["stages"][f"stage{stage}"] = report
        m = report["metrics"]
        logger.info("stage %d test: AUROC %.3f [%.3f, %.3f], accuracy %.3f, ECE %.3f", stage,
                    m["auroc"]["value"], *m["auroc"]["ci95"], m["accuracy"]["value"],
                    m["ece"]["value"])
        if report.get("interpretability"):
            i = report["interpretability"]
            logger.info("stage %d interpretability: CARE %.2f, Grad-CAM %.2f of glaucomatous "
                        "phantoms favour the thinned hemiretina; mean r(CARE, Grad-CAM) %.3f",
                        stage, i["care_thinned_hemiretina_fraction"],
                        i["gradcam_thinned_hemiretina_fraction"],
                        i["care_gradcam_pearson_r_mean"])
    (run_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    net.load_state_dict(models[final_stage])

    if args.bundle_out is not None:
        from model.bundle import BundleMetadata, save_bundle

        final = evaluation["stages"][f"stage{final_stage}"]
        meta = BundleMetadata(
            name=args.bundle_name,
            version=args.bundle_version,
            input_grid=tuple(args.grid),
            network_kwargs=kwargs,
            intensity_normalisation=norm,
            consistency=({"criterion": args.consistency, "weight": args.weight}
                         if final_stage == 2 else None),
            changelog={args.bundle_version: f"trained by model.train (seed {args.seed})"},
            training={
                "source": source, "seed": args.seed, "split": list(args.split),
                "counts": {k: len(v) for k, v in split.items()},
                "epochs_run": {f"stage{k}": r.epochs_run for k, r in results.items()},
                "best_epoch": {f"stage{k}": r.best_epoch for k, r in results.items()},
                "batch_size": args.batch_size, "lr": args.lr, "patience": args.patience,
                "optimiser": "NAdam(betas=(0.9, 0.999), eps=1e-8, momentum_decay=4e-3)",
                "augmentation": "none" if args.no_augment else
                "gz" + (" + S flip" if args.s_flip else ""),
            },
            evaluation={"held_out_test_split": _summary(final),
                        **({"stage1_interpretability":
                            evaluation["stages"]["stage1"].get("interpretability")}
                           if final_stage == 2 and "stage1" in evaluation["stages"] else {})},
        )
        save_bundle(net, meta, args.bundle_out, figures=[run_dir / "evaluation.png"])
        logger.info("bundle written to %s", args.bundle_out)
    return evaluation


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m model.train``."""
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
