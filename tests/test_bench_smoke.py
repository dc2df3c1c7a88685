"""Smoke test of ``make bench`` (``bench/run_all.py``): the quick inference part end to end in a
subprocess (a few seconds; the whole quick run takes about a minute, too long for CI), and the
JSON and chart writer on a synthetic report with every panel filled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from bench.run_all import headline, write_outputs

ROOT = Path(__file__).resolve().parents[1]
TOP_KEYS = {"machine", "settings", "total_wall_s", "summary", "parts"}


def _check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size[0] > 800 and image.size[1] > 400


def test_quick_inference_part_writes_json_and_png(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench.run_all", "--quick", "--parts", "inference",
         "--out-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert TOP_KEYS <= set(report)
    machine = report["machine"]
    assert {"cpu_model", "logical_cpus", "torch", "torch_threads_default"} <= set(machine)
    assert report["settings"]["mode"] == "quick"
    part = report["parts"]["inference"]
    assert part["peak_rss_mb"] > 50 and part["part_wall_s"] > 0
    (row,) = report["summary"]["inference"]
    assert row["bundle"] == "demo" and row["plain_forward_ms"] > 0
    assert row["predictor_call_over_forward"] > 0
    _check_png(tmp_path / "benchmark.png")


def _synthetic_parts() -> dict:
    latency = {"median": 3.6, "p95": 4.0, "n": 20, "min": 3.5, "max": 4.1, "mean": 3.7}
    return {
        "model": {"results": [
            {"variant": v, "grid": g, "latency": {"forward": {"median_ms": f},
                                                  "explain": {"median_ms": f * 1.01}}}
            for v in ("Hemiretinal", "EPA") for g, f in (([128, 192, 112], 670.0),
                                                          ([64, 96, 56], 96.0))
        ], "peak_rss_mb": 1456.0, "part_wall_s": 120.0},
        "inference": {"bundles": {"demo": {
            "model_grid": [64, 96, 56],
            "latency": {k: {"median_ms": v} for k, v in (
                ("plain_forward", 90.0), ("predictor_infer", 92.0), ("predictor_call", 110.0))},
            "predictor_call_over_forward": 1.22, "predictor_infer_over_forward": 1.02,
        }}, "peak_rss_mb": 390.0, "part_wall_s": 30.0},
        "app": {"median_seconds": {"wall": 6.8, "startup": 6.3, "load": 0.02, "preprocess": 0.01,
                                   "inference": 0.12, "write": 0.35},
                "peak_rss_mb": 640.0, "part_wall_s": 40.0},
        "node": {"latency": {"arrival_at_node_to_last_result_stored_s": latency,
                             "store_into_orthanc_to_results_visible_s": latency},
                 "burst": {"latency_s": latency, "series_per_hour": 4000.0},
                 "peak_rss_mb": 740.0, "part_wall_s": 240.0},
        "load": {"senders": 4, "series_per_round": 24, "rounds": 3, "lost": 0,
                 "duplicated_processing": 0, "duplicated_results": 0, "latency_s": latency,
                 "series_per_hour": 5000.0,
                 "node_rss_mb": {"start": 620.0, "after_warm_up": 700.0, "end": 720.0,
                                 "peak": 730.0},
                 "peak_rss_mb": 730.0, "part_wall_s": 60.0},
    }


def test_headline_and_chart_from_a_synthetic_report(tmp_path):
    parts = _synthetic_parts()
    summary = headline(parts)
    assert len(summary["model_latency_ms"]) == 4
    assert summary["inference"][0]["predictor_call_over_forward"] == 1.22
    assert set(summary["node_latency_s"]) == {
        "Orthanc: node arrival -> results stored", "Orthanc: store -> results visible",
        "Orthanc burst", "load: last instance -> last result"}
    assert summary["node_series_per_hour"] == {"Orthanc burst": 4000.0, "load": 5000.0}
    assert set(summary["peak_rss_mb"]) == set(parts) and summary["errors"] == {}
    report = {"machine": {"cpu_model": "Test CPU", "logical_cpus": 2, "torch": "x"},
              "settings": {"mode": "full", "torch_threads": 2}, "total_wall_s": 1.0,
              "summary": summary, "parts": parts}
    json_path, png_path = write_outputs(report, tmp_path / "out")
    assert json.loads(json_path.read_text())["summary"] == json.loads(json.dumps(summary))
    _check_png(png_path)
    # A report with every part missing still gives a (mostly empty) chart.
    _, empty_png = write_outputs({"summary": headline({})}, tmp_path / "empty")
    _check_png(empty_png)
