"""Benchmark the one-shot command ``python -m monai_app`` on the sample study.

Not a test. Runs the CLI as a fresh process ``--repeats`` times on the sample study (two OPT
volumes, written once with ``monai_app.sample_study``) and splits each run's wall time into

- ``startup``: everything that is not a per-volume step (interpreter, imports of torch, MONAI and
  the SDK, model load, graph set-up, exit), i.e. wall time minus the steps below;
- ``load``, ``preprocess``, ``inference``, ``write``: summed over the volumes, from the timings
  the application records in ``results.json``.

It reports medians over the runs and checks the issue's goal: the pipeline's own work
(load + preprocess + write) costs less than the inference itself.

Usage::

    python bench/bench_app.py [--repeats 5] [--model DIR | --paper-size] [--out FILE]

``--paper-size`` runs an untrained bundle at the paper's size (128x192x112 grid, 32 channels,
Hemiretinal): the demo model is so small that the output writing dominates, and this shows the
same pipeline with a model as costly as the real one (its probabilities mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_model import machine  # noqa: E402

STEPS = ("load", "preprocess", "inference", "write")


def one_run(study: Path, output: Path, model: Path | None) -> dict[str, float]:
    """Run the CLI once in a fresh process; return wall time and per-step sums (seconds)."""
    command = [sys.executable, "-m", "monai_app", "-i", str(study), "-o", str(output)]
    if model is not None:
        command += ["-m", str(model)]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - started
    entries = json.loads((output / "results.json").read_text())["results"]
    steps = {step: sum(e["timings"].get(step, 0.0) for e in entries) for step in STEPS}
    return {"wall": wall, "startup": wall - sum(steps.values()), **steps, "volumes": len(entries)}


PAPER_GRID = (128, 192, 112)


def paper_size_bundle(folder: Path) -> Path:
    """An untrained AI-CNet3D bundle at the paper's size (BN statistics from two batches)."""
    import torch

    from model.bundle import BundleMetadata, save_bundle
    from model.network import AICNet3D

    torch.manual_seed(0)
    net = AICNet3D(channels=32, input_size=PAPER_GRID, attention="Hemiretinal")
    with torch.no_grad():
        for _ in range(2):
            net.train()(torch.rand(1, 1, *PAPER_GRID) * 255)
    metadata = BundleMetadata(
        name="aicnet3d_paper_size_untrained", version="0.0.0", input_grid=PAPER_GRID,
        network_kwargs={"channels": 32, "attention": "Hemiretinal"},
    )
    return save_bundle(net.eval(), metadata, folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", type=Path, default=None, help="bundle (default: demo model)")
    parser.add_argument("--paper-size", action="store_true",
                        help="an untrained bundle at the paper's size instead of the demo model")
    parser.add_argument("--out", type=Path, default=None,
                        help="default bench/results/app_bench.json (app_bench_paper_size.json)")
    args = parser.parse_args(argv)
    name = "app_bench_paper_size.json" if args.paper_size else "app_bench.json"
    args.out = args.out or ROOT / "bench/results" / name
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "study"
        subprocess.run([sys.executable, "-m", "monai_app.sample_study", str(study)], cwd=ROOT,
                       check=True, capture_output=True)
        if args.paper_size:
            args.model = paper_size_bundle(Path(tmp) / "paper_size_bundle")
        runs = [one_run(study, Path(tmp) / f"out{i}", args.model) for i in range(args.repeats)]

    median = {key: statistics.median(r[key] for r in runs) for key in ("wall", "startup", *STEPS)}
    own_work = median["load"] + median["preprocess"] + median["write"]
    report = {
        "machine": machine(),
        "study": "monai_app.sample_study default: 2 OPT volumes, 64x128x96",
        "model": "untrained, paper size 128x192x112, 32 channels" if args.paper_size
        else str(args.model or "demo bundle"),
        "repeats": args.repeats,
        "median_seconds": {key: round(value, 4) for key, value in median.items()},
        "pipeline_work_seconds": round(own_work, 4),
        "pipeline_work_over_inference": round(own_work / median["inference"], 3),
        "goal_met": own_work < median["inference"],
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("median_seconds", "pipeline_work_over_inference",
                                             "goal_met")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
