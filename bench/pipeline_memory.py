"""Memory of the in-process pipeline over many runs (what the DICOM node does per series).

Not a test. Runs :func:`monai_app.pipeline.process_folder` (the holoscan graph, model loaded once)
on the sample study ``--runs`` times in this process and records the RSS after each checkpoint,
to tell a leak in the pipeline from growth elsewhere in the node.

Usage::

    python -m bench.pipeline_memory [--runs 60] [--out bench/results/pipeline_memory.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = (1, 5, 10, 20, 30, 40, 60, 80, 100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/pipeline_memory.json")
    args = parser.parse_args(argv)
    from bench.bench_model import machine
    from bench.bench_node import memory_mb
    from monai_app.pipeline import process_folder

    rss: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "study"
        subprocess.run([sys.executable, "-m", "monai_app.sample_study", str(study)], cwd=ROOT,
                       check=True, capture_output=True)
        for run in range(1, args.runs + 1):
            out = Path(tmp) / "out"
            process_folder(study, out)
            shutil.rmtree(out)
            if run in CHECKPOINTS or run == args.runs:
                gc.collect()
                rss[run] = memory_mb(os.getpid())["VmRSS"]
                print(f"run {run}: RSS {rss[run]:.0f} MB", flush=True)
    report = {"machine": machine(), "study": "sample study, 2 OPT volumes per run",
              "runs": args.runs, "rss_mb_after_run": rss}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
