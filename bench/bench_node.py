"""Benchmark of the DICOM node behind a real Orthanc (not a test; a few minutes on 2 cores).

    .venv/bin/python -m bench.bench_node [--series 20] [--model model/bundles/aicnet3d_demo |
                                          --paper-size]

Orthanc (``deploy/orthanc/`` configuration, OnStableSeries routing) and the node
(``python -m monai_app.node``) run as subprocesses on loopback; the node is warm (its start-up
warm-up run plus one discarded series) before anything is timed.

Phase 1, latency: the series are stored into Orthanc one at a time; for each, the time from the
last instance *arriving at the node* (audit ``received``) to the last result *stored in Orthanc*
(audit ``delivered``: written after Orthanc's C-STORE response for the last file). The quiet
period is part of it (no DICOM message says a series is complete). Also the user-facing time
from the C-STORE into Orthanc until the SR, SEG and PDF are visible through Orthanc's REST API
(adds Orthanc's StableAge and routing).

Phase 2, throughput: all series stored into Orthanc at once; series per hour from the first
arrival at the node to the last delivery.

Per series, the node's processing time (the in-process pipeline call) is compared with the model
inference alone (``timings.inference`` in results.json: forward pass and maps on the model grid).

Writes ``bench/results/node_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from orthanc_harness import NodeProcess, Orthanc, store_files, wait_for  # noqa: E402

from bench.bench_model import machine as bench_model_machine  # noqa: E402
from monai_app.node.audit import read_audit  # noqa: E402

DEMO_BUNDLE = REPO / "model" / "bundles" / "aicnet3d_demo"
RESULT_MODALITIES = ("SR", "SEG", "DOC")


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100])."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": round(statistics.median(values), 4),
        "p95": round(percentile(values, 95), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "mean": round(statistics.fmean(values), 4),
    }


def write_series(out: Path, count: int, shape: tuple[int, int, int]) -> list[Path]:
    """``count`` single-instance OPT series (alternating eyes and classes), one study each."""
    from model.phantoms import make_phantom
    from monai_app.sample_study import phantom_to_opt_dataset

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        phantom = make_phantom(1000 + i, glaucoma=bool(i % 2), laterality="RL"[i % 2],
                               shape=shape)
        ds = phantom_to_opt_dataset(
            phantom, patient_id=f"BENCH-{i:03d}", patient_name=f"Bench^{i:03d}",
            patient_birth_date="19700101", patient_sex="O",
            study_instance_uid=f"2.25.{9_000_000 + i}", study_id=str(i), accession_number="",
            series_number=1,
        )
        path = out / f"series_{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _uids(path: Path) -> tuple[str, str]:
    from pydicom import dcmread

    ds = dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def _results_visible(orthanc: Orthanc, study_uid: str) -> bool:
    found = [s["MainDicomTags"].get("Modality") for s in orthanc.find_series(study_uid)]
    return all(m in found for m in RESULT_MODALITIES)


def _events(node: NodeProcess, series_uid: str) -> dict[str, dict[str, Any]]:
    """Last audit record of each event type for one series."""
    out: dict[str, dict[str, Any]] = {}
    for record in read_audit(node.audit_path):
        if record.get("series_instance_uid") == series_uid:
            out[record["event"]] = record
    return out


def _delivered(node: NodeProcess, series_uid: str):
    return _events(node, series_uid).get("delivered")


def memory_mb(pid: int) -> dict[str, float]:
    """Current (``VmRSS``) and peak (``VmHWM``) resident set size of process ``pid`` in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            key, value = line.split(":")
            values[key] = round(int(value.split()[0]) / 1024, 1)
    return values


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.workdir)
    for sub in ("node", "orthanc", "series"):
        shutil.rmtree(work / sub, ignore_errors=True)
    shape = tuple(args.shape)
    paths = write_series(work / "series", args.series + 1 + args.series_burst, shape)
    warm, latency_set = paths[0], paths[1:args.series + 1]
    burst_set = paths[args.series + 1:]

    node = NodeProcess(work / "node", quiet_period_s=args.quiet,
                       worker={"model_path": str(args.model)})
    orthanc = Orthanc(work / "orthanc", node_aet=node.AET, node_port=node.port,
                      stable_age=args.stable_age)
    node.start(dest_port=orthanc.dicom_port)
    orthanc.start()
    result: dict[str, Any] = {}
    try:
        t0 = time.monotonic()
        node.wait_ready(timeout=300)
        startup_s = time.monotonic() - t0
        # One discarded series: the first real run after the warm-up.
        study, series = _uids(warm)
        store_files(orthanc.dicom_port, [warm], called_ae=Orthanc.AET)
        wait_for(lambda: _delivered(node, series), 300, 0.2, "warm-up series")

        latencies, user_facing, processing, inference, queue_to_delivered = [], [], [], [], []
        ratio, overhead, steps = [], [], {}
        for path in latency_set:
            study, series = _uids(path)
            start = time.monotonic()
            store_files(orthanc.dicom_port, [path], called_ae=Orthanc.AET)
            wait_for(lambda s=study: _results_visible(orthanc, s), 300, 0.05, "results")
            user_facing.append(time.monotonic() - start)
            events = wait_for(lambda s=series: (e := _events(node, s)).get("delivered") and e,
                              60, 0.05, "audit")
            latencies.append(events["delivered"]["t"] - events["received"]["t"])
            queue_to_delivered.append(events["delivered"]["t"] - events["queued"]["t"])
            processing.append(events["finished"]["processing_s"])
            inference.append(events["finished"]["inference_s"])
            ratio.append(processing[-1] / inference[-1])
            (entry,) = events["finished"]["results"]
            timings = entry.get("timings", {})
            for key, value in timings.items():
                steps.setdefault(key, []).append(value)
            # What the graph run and the node add around the pipeline's own timed steps.
            overhead.append(processing[-1] - timings.get("total", 0.0))
            print(f"{path.name}: node latency {latencies[-1]:.2f} s, processing "
                  f"{processing[-1]:.2f} s, inference {inference[-1]:.2f} s", flush=True)

        burst: dict[str, Any] = {}
        if burst_set:
            series_uids = [_uids(p)[1] for p in burst_set]
            store_files(orthanc.dicom_port, burst_set, called_ae=Orthanc.AET)
            wait_for(lambda: all(_delivered(node, s) for s in series_uids), 3600, 0.2,
                     "burst delivery")
            events = [_events(node, s) for s in series_uids]
            first = min(e["received"]["t"] for e in events)
            last = max(e["delivered"]["t"] for e in events)
            burst = {
                "series": len(burst_set),
                "first_arrival_to_last_delivery_s": round(last - first, 3),
                "series_per_hour": round(len(burst_set) / (last - first) * 3600, 1),
                "latency_s": summary([e["delivered"]["t"] - e["received"]["t"]
                                      for e in events]),
            }
        memory = memory_mb(node.proc.pid)
        audit = read_audit(node.audit_path)
        failures = [e for e in audit if e["event"] in ("failed", "retry", "send_failed")]
        result = {
            "machine": bench_model_machine(),
            "model": str(args.model),
            "model_version": next((e.get("model_version") for e in audit
                                   if e["event"] == "finished"), None),
            "volume_shape": list(shape),
            "settings": {"quiet_period_s": args.quiet, "orthanc_stable_age_s": args.stable_age},
            "node_startup_s": round(startup_s, 2),
            "latency": {
                "series": len(latency_set),
                "arrival_at_node_to_last_result_stored_s": summary(latencies),
                "queued_to_last_result_stored_s": summary(queue_to_delivered),
                "store_into_orthanc_to_results_visible_s": summary(user_facing),
            },
            "processing": {
                "node_processing_s": summary(processing),
                "model_inference_s": summary(inference),
                "processing_over_inference": summary(ratio),
                "pipeline_steps_s": {k: summary(v) for k, v in steps.items()},
                "graph_and_node_overhead_s": summary(overhead),
                "goal": "node processing <= 1.5 x model inference",
                "goal_met": statistics.median(ratio) <= 1.5,
            },
            "burst": burst,
            "node_memory_mb": memory,
            "failures": len(failures),
        }
    finally:
        node_code = node.stop()
        orthanc_code = orthanc.stop()
    result["clean_exit"] = {"node": node_code, "orthanc": orthanc_code}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=20, help="series in the latency phase")
    parser.add_argument("--series-burst", type=int, default=20,
                        help="series stored at once in the throughput phase (0: skip)")
    parser.add_argument("--model", type=Path, default=DEMO_BUNDLE)
    parser.add_argument("--paper-size", action="store_true",
                        help="an untrained network of the paper's size instead of --model "
                             "(writes node_bench_paper_size.json by default)")
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 128, 96),
                        metavar=("S", "D", "W"), help="native grid of the volumes")
    parser.add_argument("--quiet", type=float, default=3.0, help="node quiet period (s)")
    parser.add_argument("--stable-age", type=int, default=3, help="Orthanc StableAge (s)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_node"))
    parser.add_argument("--out", type=Path, default=None,
                        help="default bench/results/node_bench.json (node_bench_paper_size.json)")
    args = parser.parse_args(argv)
    if args.series < 1:
        parser.error("--series must be >= 1")
    name = "node_bench_paper_size.json" if args.paper_size else "node_bench.json"
    args.out = args.out or REPO / "bench" / "results" / name
    if args.paper_size:
        from bench.bench_app import paper_size_bundle

        args.model = paper_size_bundle(args.workdir.parent / "bench_node_paper_size_bundle")
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
