"""Every benchmark in one command: ``make bench`` (``python -m bench.run_all``). Not part of CI.

Parts, each run in a fresh process so that its peak memory is its own:

- ``model``: ``bench/bench_model.py``, forward and ``explain`` latency per attention variant;
- ``inference``: our inference (``model.Predictor`` as the app calls it: prepare, forward with
  CARE and Grad-CAM, maps restored to the input grid) against a plain eager PyTorch forward of the
  same network, same input, same threads, timed alternately; the ratio is reported;
- ``app``: ``bench/bench_app.py``, one-shot CLI wall time by step;
- ``node``: ``bench/bench_node.py``, node latency and burst throughput behind a real Orthanc
  (skipped when Orthanc is not installed);
- ``load``: ``bench/node_load.py``, several modalities storing series at once into
  ``python -m monai_app.node`` with the real pipeline: latency, series per hour, node RSS.

Every figure is a median of repeated runs. Peak memory of a part is the largest ``ru_maxrss`` of
any of its processes (the part's own process or a child it waited for: model workers, CLI runs,
node, Orthanc). Writes ``bench/results/benchmark.json`` and ``bench/results/benchmark.png``
(``--out-dir``); the parts' own JSON files (``model_bench.json`` ...) are left as they are, their
reports are nested under ``parts``.

Usage::

    python -m bench.run_all                  # full run (about 6 min on 2 cores)
    python -m bench.run_all --quick --out-dir /tmp/bench   # smoke run (about 70 s)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO_BUNDLE = ROOT / "model" / "bundles" / "aicnet3d_demo"
RESULTS = ROOT / "bench" / "results"
PARTS = ("model", "inference", "app", "node", "load")
#: Native grid of the benchmark volumes (the sample study's).
VOLUME_SHAPE = (64, 128, 96)

SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "model": {"variants": None, "grids": None, "repeats": 5},
        "inference": {"bundles": ["demo", "paper_size"], "repeats": 10},
        "app": {"repeats": 5},
        "node": {"series": 20, "series_burst": 20},
        "load": {"senders": 4, "series_per_sender": 6, "rounds": 3},
    },
    "quick": {
        "model": {"variants": ["Hemiretinal"], "grids": ["64x96x56"], "repeats": 2},
        "inference": {"bundles": ["demo"], "repeats": 3},
        "app": {"repeats": 1},
        "node": {"series": 2, "series_burst": 0},
        "load": {"senders": 2, "series_per_sender": 2, "rounds": 1},
    },
}


# -- parts (each runs in its own process) -------------------------------------------------------


def _threads_args(threads: int | None) -> list[str]:
    return [] if threads is None else ["--threads", str(threads)]


def part_model(settings: dict[str, Any], work: Path, threads: int | None) -> dict[str, Any]:
    """``bench_model`` for the configured variants and grids."""
    from bench import bench_model

    argv = ["--repeats", str(settings["repeats"]), "--out", str(work / "model.json"),
            *_threads_args(threads)]
    if settings["variants"]:
        argv += ["--variants", *settings["variants"]]
    if settings["grids"]:
        argv += ["--grid", *settings["grids"]]
    bench_model.main(argv)
    return json.loads((work / "model.json").read_text())


def part_app(settings: dict[str, Any], work: Path, threads: int | None) -> dict[str, Any]:
    """``bench_app`` on the sample study with the demo model (CLI threads: torch default)."""
    from bench import bench_app

    bench_app.main(["--repeats", str(settings["repeats"]), "--out", str(work / "app.json")])
    return json.loads((work / "app.json").read_text())


def part_node(settings: dict[str, Any], work: Path, threads: int | None) -> dict[str, Any]:
    """``bench_node`` (real Orthanc), or a note why it was skipped."""
    sys.path.insert(0, str(ROOT / "tests"))
    from orthanc_harness import ORTHANC_BIN

    if not Path(ORTHANC_BIN).exists():
        return {"skipped": f"Orthanc not installed ({ORTHANC_BIN})"}
    from bench import bench_node

    bench_node.main(["--series", str(settings["series"]),
                     "--series-burst", str(settings["series_burst"]),
                     "--workdir", str(work / "node"), "--out", str(work / "node.json")])
    return json.loads((work / "node.json").read_text())


def part_load(settings: dict[str, Any], work: Path, threads: int | None) -> dict[str, Any]:
    """The node load scenario with the real pipeline and the demo model."""
    from bench.node_load import bench_real_pipeline

    return bench_real_pipeline(work / "load", DEMO_BUNDLE, settings["senders"],
                               settings["series_per_sender"], settings["rounds"], VOLUME_SHAPE)


def inference_comparison(bundles: dict[str, Path], repeats: int) -> dict[str, Any]:
    """Our predictor against a plain eager forward of its own network, per bundle.

    Three calls, alternated round-robin so that load from other processes hits all alike:
    ``plain_forward`` (``net(x)`` under ``torch.inference_mode``, x already on the model grid),
    ``predictor_infer`` (``Predictor.infer``: forward with CARE and Grad-CAM, the app's inference
    step) and ``predictor_call`` (``Predictor.__call__``: also resampling, normalisation and the
    maps restored to the input grid), all from the same phantom volume.
    """
    import torch

    from bench.bench_model import latency_summary, timed_alternating
    from model.phantoms import make_phantom
    from model.predictor import load_predictor

    volume = make_phantom(7, glaucoma=True, laterality="R", shape=VOLUME_SHAPE).volume
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "volume_shape": list(volume.shape),
                           "repeats": repeats, "bundles": {}}
    for name, path in bundles.items():
        predictor = load_predictor(path, device="cpu")
        x = predictor.prepare(volume, "R")

        def forward(net: torch.nn.Module = predictor.net, x: torch.Tensor = x) -> None:
            with torch.inference_mode():
                net(x)

        times = timed_alternating({
            "plain_forward": forward,
            "predictor_infer": lambda p=predictor, x=x: p.infer(x),
            "predictor_call": lambda p=predictor: p(volume, "R"),
        }, repeats, "cpu")
        base = times["plain_forward"]
        out["bundles"][name] = {
            "model_grid": list(predictor.metadata.input_grid),
            "latency": latency_summary(times),
            **{f"{key}_over_forward": statistics.median(times[key]) / statistics.median(base)
               for key in ("predictor_infer", "predictor_call")},
            **{f"{key}_over_forward_paired_median": statistics.median(
                t / f for t, f in zip(times[key], base, strict=True))
               for key in ("predictor_infer", "predictor_call")},
        }
        print(f"inference {name}: forward {statistics.median(base):.1f} ms, predictor.infer "
              f"{statistics.median(times['predictor_infer']):.1f} ms, predictor call "
              f"{statistics.median(times['predictor_call']):.1f} ms", flush=True)
    return out


def part_inference(settings: dict[str, Any], work: Path, threads: int | None) -> dict[str, Any]:
    """:func:`inference_comparison` on the demo bundle (and, in full mode, a paper-size one)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    bundles = {"demo": DEMO_BUNDLE}
    if "paper_size" in settings["bundles"]:
        from bench.bench_app import paper_size_bundle

        bundles["paper_size"] = paper_size_bundle(work / "paper_size_bundle")
    return inference_comparison(bundles, settings["repeats"])


PART_FUNCTIONS: dict[str, Callable[[dict[str, Any], Path, int | None], dict[str, Any]]] = {
    "model": part_model, "inference": part_inference, "app": part_app, "node": part_node,
    "load": part_load,
}


def _peak_rss_mb() -> dict[str, float]:
    """ru_maxrss (KiB on Linux) of this process and of its largest waited-for descendant."""
    return {
        "self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "children": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }


def run_part_here(name: str, mode: str, out: Path, threads: int | None) -> None:
    """Run one part in this process and write its report (plus peak memory) to ``out``."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"bench_{name}_") as tmp:
        report = PART_FUNCTIONS[name](SETTINGS[mode][name], Path(tmp), threads)
    rss = _peak_rss_mb()
    report["ru_maxrss_mb"] = rss
    report["peak_rss_mb"] = max(rss.values())
    report["part_wall_s"] = round(time.perf_counter() - start, 1)
    out.write_text(json.dumps(report, indent=2) + "\n")


def run_part(name: str, mode: str, threads: int | None) -> dict[str, Any]:
    """Run a part in a fresh interpreter (own ru_maxrss); its report, or the error."""
    with tempfile.TemporaryDirectory(prefix="bench_part_") as tmp:
        out = Path(tmp) / "part.json"
        command = [sys.executable, "-m", "bench.run_all", "--part", name, "--part-out", str(out),
                   *(["--quick"] if mode == "quick" else []), *_threads_args(threads)]
        done = subprocess.run(command, cwd=ROOT, check=False, stderr=subprocess.PIPE, text=True)
        if done.returncode or not out.exists():
            return {"error": (done.stderr or "failed").strip().splitlines()[-5:]}
        return json.loads(out.read_text())


# -- summary, JSON and chart ---------------------------------------------------------------------


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def headline(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figures worth reading (and charting) from the parts' full reports."""
    model = [
        {"variant": r["variant"], "grid": "x".join(map(str, r["grid"])),
         "forward_ms": round(r["latency"]["forward"]["median_ms"], 1),
         "explain_ms": round(r["latency"]["explain"]["median_ms"], 1)}
        for r in _get(parts, "model", "results") or [] if "latency" in r
    ]
    inference = [
        {"bundle": name, "model_grid": "x".join(map(str, b["model_grid"])),
         **{f"{k}_ms": round(b["latency"][k]["median_ms"], 1)
            for k in ("plain_forward", "predictor_infer", "predictor_call")},
         "predictor_call_over_forward": round(b["predictor_call_over_forward"], 3),
         "predictor_infer_over_forward": round(b["predictor_infer_over_forward"], 3)}
        for name, b in (_get(parts, "inference", "bundles") or {}).items()
    ]
    node_latency: dict[str, dict[str, float]] = {}
    throughput: dict[str, float] = {}
    for label, keys in {
        "Orthanc: node arrival -> results stored": ("node", "latency",
                                                   "arrival_at_node_to_last_result_stored_s"),
        "Orthanc: store -> results visible": ("node", "latency",
                                             "store_into_orthanc_to_results_visible_s"),
        "Orthanc burst": ("node", "burst", "latency_s"),
        "load: last instance -> last result": ("load", "latency_s"),
    }.items():
        if stats := _get(parts, *keys):
            node_latency[label] = {"median": stats["median"], "p95": stats["p95"]}
    if value := _get(parts, "node", "burst", "series_per_hour"):
        throughput["Orthanc burst"] = value
    if value := _get(parts, "load", "series_per_hour"):
        throughput["load"] = value
    load = parts.get("load", {})
    return {
        "model_latency_ms": model,
        "inference": inference,
        "app_median_seconds": _get(parts, "app", "median_seconds"),
        "node_latency_s": node_latency,
        "node_series_per_hour": throughput,
        "load": {k: load[k] for k in ("senders", "series_per_round", "rounds", "lost",
                                      "duplicated_processing", "duplicated_results",
                                      "surplus_results", "failures", "node_rss_mb")
                 if k in load},
        "peak_rss_mb": {n: p["peak_rss_mb"] for n, p in parts.items() if "peak_rss_mb" in p},
        "part_wall_s": {n: p["part_wall_s"] for n, p in parts.items() if "part_wall_s" in p},
        "errors": {n: p.get("error") or p.get("skipped") for n, p in parts.items()
                   if "error" in p or "skipped" in p},
    }


def write_chart(summary: dict[str, Any], path: Path, title: str = "") -> None:
    """A 2x3 PNG of the headline figures; panels without data say so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    ax = axes.flat

    def empty(a: Any, what: str) -> None:
        a.text(0.5, 0.5, f"{what}: not measured", ha="center", va="center",
               transform=a.transAxes)
        a.set_axis_off()

    def bars(a: Any, labels: list[str], series: dict[str, list[float]], unit: str) -> None:
        width = 0.8 / max(len(series), 1)
        for i, (name, values) in enumerate(series.items()):
            pos = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
            drawn = a.bar(pos, values, width, label=name)
            a.bar_label(drawn, fmt=lambda v: f"{v:.0f}" if v >= 100 else f"{v:.3g}",
                        fontsize=6 if len(series) * len(labels) > 12 else 7)
        a.set_xticks(range(len(labels)), labels, fontsize=7)
        a.set_ylabel(unit)
        a.legend(fontsize=8)

    rows = summary.get("model_latency_ms") or []
    if rows:
        variants = list(dict.fromkeys(r["variant"] for r in rows))
        names = [v.replace("NeuronAxon", "\nNeuronAxon").lstrip() for v in variants]
        series: dict[str, list[float]] = {}
        for grid in dict.fromkeys(r["grid"] for r in rows):
            for kind in ("forward", "explain"):
                by = {r["variant"]: r[f"{kind}_ms"] for r in rows if r["grid"] == grid}
                series[f"{kind} {grid}"] = [by.get(v, 0.0) for v in variants]
        bars(ax[0], names, series, "ms (median)")
        ax[0].set_title("Model: forward vs explain (CARE + Grad-CAM)")
    else:
        empty(ax[0], "model latency")

    rows = summary.get("inference") or []
    if rows:
        labels = [f"{r['bundle']} ({r['model_grid']})\ncall/forward "
                  f"{r['predictor_call_over_forward']:.2f}x" for r in rows]
        bars(ax[1], labels, {k: [r[f"{k}_ms"] for r in rows] for k in
                             ("plain_forward", "predictor_infer", "predictor_call")},
             "ms (median)")
        ax[1].set_title("Our inference vs plain eager forward")
    else:
        empty(ax[1], "inference comparison")

    steps = summary.get("app_median_seconds")
    if steps:
        left = 0.0
        for key in ("startup", "load", "preprocess", "inference", "write"):
            value = steps.get(key, 0.0)
            ax[2].barh([0], [value], left=left, label=f"{key} {value:.2f} s")
            left += value
        ax[2].set_yticks([])
        ax[2].set_xlabel("s (median)")
        ax[2].legend(fontsize=8, loc="upper center", ncol=2, bbox_to_anchor=(0.5, -0.15))
        ax[2].set_title(f"CLI one-shot run, wall {steps.get('wall', left):.1f} s")
    else:
        empty(ax[2], "CLI steps")

    latency = summary.get("node_latency_s") or {}
    if latency:
        labels = [k.replace(": ", ":\n").replace(" -> ", " ->\n") for k in latency]
        bars(ax[3], labels, {s: [v[s] for v in latency.values()] for s in ("median", "p95")},
             "s")
        rates = summary.get("node_series_per_hour") or {}
        ax[3].set_title("Node latency; " + ", ".join(f"{k} {v:.0f} series/h"
                                                     for k, v in rates.items()), fontsize=9)
    else:
        empty(ax[3], "node latency")

    peaks = summary.get("peak_rss_mb") or {}
    if peaks:
        bars(ax[4], list(peaks), {"peak RSS": list(peaks.values())}, "MiB (ru_maxrss)")
        ax[4].set_title("Peak memory per part")
    else:
        empty(ax[4], "peak memory")

    rss = (summary.get("load") or {}).get("node_rss_mb")
    if rss:
        keys = [k for k in ("start", "after_warm_up", "end", "peak") if rss.get(k) is not None]
        bars(ax[5], keys, {"node RSS": [rss[k] for k in keys]}, "MiB")
        ax[5].set_title("Node memory during the load scenario")
    else:
        empty(ax[5], "node memory under load")

    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_outputs(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """``benchmark.json`` and ``benchmark.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "benchmark.json", out_dir / "benchmark.png"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    m = report.get("machine", {})
    title = (f"{m.get('cpu_model', '?')}, {m.get('logical_cpus', '?')} CPUs, torch "
             f"{m.get('torch', '?')}, {report.get('settings', {}).get('torch_threads', '?')} "
             f"thread(s), mode {report.get('settings', {}).get('mode', '?')}")
    write_chart(report.get("summary", {}), png_path, title)
    return json_path, png_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few repeats, small grid")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the model and inference parts (default: torch's)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--part-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    # Idle OpenMP threads must not spin on a shared machine (see bench_model's study).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.part:
        run_part_here(args.part, mode, args.part_out, args.threads)
        return 0

    started = time.perf_counter()
    load_before = os.getloadavg()
    parts: dict[str, dict[str, Any]] = {}
    for name in args.parts:
        print(f"== {name}", flush=True)
        parts[name] = run_part(name, mode, args.threads)
        print(f"== {name}: {parts[name].get('part_wall_s', 'failed')} s", flush=True)
    # Imported last: torch in this process would inflate the children's ru_maxrss (a forked
    # child starts with its parent's resident pages counted).
    from bench.bench_model import machine

    info = machine()
    report = {
        "machine": {**info, "load_average_at_start": load_before},
        "settings": {"mode": mode, "parts": SETTINGS[mode],
                     "torch_threads": args.threads or info["torch_threads_default"],
                     "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
                     "volume_shape": list(VOLUME_SHAPE)},
        "total_wall_s": round(time.perf_counter() - started, 1),
        "summary": headline(parts),
        "parts": parts,
    }
    json_path, png_path = write_outputs(report, args.out_dir)
    print(json.dumps(report["summary"], indent=2))
    print(f"wrote {json_path} and {png_path} in {report['total_wall_s']:.0f} s")
    return 1 if any("error" in p for p in parts.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
