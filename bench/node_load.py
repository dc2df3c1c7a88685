"""Load scenario for the DICOM node: several modalities storing many series at once.

``senders`` threads, each over its own association, store their share of the series into a node
on loopback; a :class:`TimedDestination` stands in for the PACS and notes when each result
arrives. One call of :func:`run_round` is one round; it reports what was lost or duplicated, the
latency of each series (its last instance stored -> its last result delivered, both timed by this
process, so the node's quiet period is part of it), series per hour and the node's RSS before and
after.

Used by ``tests/test_node_load.py`` (in-process node, stub pipeline) and by
``bench/run_all.py`` (:func:`bench_real_pipeline`: ``python -m monai_app.node`` subprocess, real
pipeline and model).
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from node_support import Destination  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402

from bench.bench_node import memory_mb, summary, write_series  # noqa: E402
from monai_app.node.audit import read_audit  # noqa: E402

Series = Sequence[Dataset]


class TimedDestination(Destination):
    """A storage SCP that records (arrival time, study UID, SOP instance UID) of each result.

    It keeps no datasets (unlike :class:`Destination`), so a long run does not grow this
    process's memory with the results it receives.
    """

    def __init__(self, ae_title: str = "PACS", port: int | None = None) -> None:
        super().__init__(ae_title=ae_title, port=port)
        self.arrivals: list[tuple[float, str, str]] = []

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        record = (time.time(), str(ds.StudyInstanceUID), str(ds.SOPInstanceUID))
        with self._lock:
            self.arrivals.append(record)
        return 0x0000

    def sop_uids(self, studies: set[str] | None = None) -> list[str]:
        """SOP instance UIDs received (of ``studies`` only, if given), one per arrival."""
        with self._lock:
            return [sop for _, study, sop in self.arrivals if studies is None or study in studies]

    def by_study(self) -> dict[str, list[float]]:
        """Arrival times of the results, per study."""
        out: dict[str, list[float]] = {}
        with self._lock:
            for t, study, _ in self.arrivals:
                out.setdefault(study, []).append(t)
        return out


def _send(port: int, called_ae: str, share: list[Series], stored: dict[str, float],
          errors: list[str], calling_ae: str) -> None:
    """One modality: one association, every series of ``share`` instance by instance."""
    ae = AE(ae_title=calling_ae)
    for sop_class, syntax in {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
                              for series in share for ds in series}:
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        errors.append(f"{calling_ae}: association refused")
        return
    try:
        for series in share:
            for ds in series:
                status = assoc.send_c_store(ds)
                if not status or status.Status != 0:
                    errors.append(f"C-STORE status {getattr(status, 'Status', None)}")
            stored[str(series[0].SeriesInstanceUID)] = time.time()
    finally:
        assoc.release()


def store_concurrently(port: int, series: list[Series], senders: int,
                       called_ae: str = "MONAI-OCT",
                       calling_ae: str = "TESTSCU") -> dict[str, float]:
    """Store ``series`` from ``senders`` threads (round-robin shares); returns, per series UID,
    the time its last instance was acknowledged.

    Raises:
        RuntimeError: an association was refused or an instance not stored.
    """
    stored: dict[str, float] = {}
    errors: list[str] = []
    threads = [
        threading.Thread(target=_send, args=(port, called_ae, series[i::senders], stored, errors,
                                             calling_ae), name=f"sender-{i}")
        for i in range(senders)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} store error(s), first: {errors[0]}")
    return stored


def run_round(
    port: int,
    dest: TimedDestination,
    series: list[Series],
    senders: int,
    audit_path: Path,
    results_per_instance: int,
    pid: int,
    timeout: float = 120.0,
    settle_s: float = 0.5,
) -> dict[str, Any]:
    """Store ``series`` concurrently, wait for every result, and account for each series.

    Each series must be alone in its study (results are matched to series by study UID).

    Args:
        port: the node's DICOM port (called AE ``MONAI-OCT``, calling ``TESTSCU``).
        dest: the node's destination, already started.
        series: the series to store, each a list of datasets with file meta.
        senders: concurrent associations.
        audit_path: the node's audit log (processing counts per series come from it).
        results_per_instance: result files the pipeline writes per stored instance.
        pid: the node's process id (RSS before and after).
        timeout: seconds to wait for all results; on timeout the missing ones count as lost.
        settle_s: extra wait after the last delivery, so that a duplicate would show.

    Returns:
        ``lost`` (series missing a result or never processed), ``duplicated_processing`` (series
        processed more than once), ``duplicated_results`` (result SOP UIDs delivered more than
        once), ``surplus_results`` (results beyond those expected), ``failures``
        (failed/retry/send_failed audit events of these series),
        ``latency_s`` (summary) and ``latencies_s`` (per series), ``series_per_hour``,
        ``rss_mb_before`` and ``rss_mb_after``.
    """
    study_of = {str(s[0].SeriesInstanceUID): str(s[0].StudyInstanceUID) for s in series}
    if len(set(study_of.values())) != len(series):
        raise ValueError("each series needs its own study")
    expected = {study_of[str(s[0].SeriesInstanceUID)]: len(s) * results_per_instance
                for s in series}
    rss_before = memory_mb(pid)["VmRSS"]
    start = time.time()
    stored = store_concurrently(port, series, senders)

    def events(name: str) -> Counter[str]:
        return Counter(e.get("series_instance_uid") for e in read_audit(audit_path)
                       if e["event"] == name and e.get("series_instance_uid") in study_of)

    def complete() -> bool:
        arrived = dest.by_study()
        return (all(len(arrived.get(study, ())) >= n for study, n in expected.items())
                and len(events("delivered")) == len(series))

    deadline = time.monotonic() + timeout
    while not complete() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(settle_s)

    arrived = dest.by_study()
    processed = events("finished")
    latencies = [max(arrived[study_of[uid]]) - t for uid, t in stored.items()
                 if study_of[uid] in arrived]
    studies = set(study_of.values())
    sops = Counter(dest.sop_uids(studies))
    last = max((max(arrived[s]) for s in studies if s in arrived), default=time.time())
    return {
        "series": len(series),
        "instances": sum(len(s) for s in series),
        "senders": senders,
        "lost": sorted(uid for uid in study_of
                       if processed[uid] == 0
                       or len(arrived.get(study_of[uid], ())) < expected[study_of[uid]]),
        "duplicated_processing": sorted(uid for uid, n in processed.items() if n > 1),
        "duplicated_results": sorted(sop for sop, n in sops.items() if n > 1),
        "surplus_results": sum(max(0, len(arrived.get(study, ())) - n)
                               for study, n in expected.items()),
        "failures": sum(events(name).total() for name in ("failed", "retry", "send_failed")),
        "results_delivered": sum(sops.values()),
        "latency_s": summary(latencies) if latencies else None,
        "latencies_s": [round(v, 4) for v in latencies],
        "first_store_to_last_delivery_s": round(last - start, 3),
        "series_per_hour": round(len(series) / max(last - start, 1e-9) * 3600, 1),
        "rss_mb_before": rss_before,
        "rss_mb_after": memory_mb(pid)["VmRSS"],
    }


def bench_real_pipeline(
    workdir: Path,
    model: Path,
    senders: int = 4,
    series_per_sender: int = 6,
    rounds: int = 3,
    shape: tuple[int, int, int] = (64, 128, 96),
    quiet_period_s: float = 1.0,
) -> dict[str, Any]:
    """The load scenario against ``python -m monai_app.node`` with the real pipeline.

    One warm-up round (one series per sender) is discarded; then ``rounds`` rounds of
    ``senders * series_per_sender`` single-volume OPT series. Figures are medians over the rounds
    (latency: median and p95 over the series of all rounds, pooled).
    """
    from orthanc_harness import NodeProcess

    shutil.rmtree(workdir, ignore_errors=True)
    per_round = senders * series_per_sender
    paths = write_series(workdir / "series", senders + rounds * per_round, shape)
    from pydicom import dcmread

    datasets = [[dcmread(p)] for p in paths]
    dest = TimedDestination(ae_title="ORTHANC").start()
    node = NodeProcess(workdir / "node", quiet_period_s=quiet_period_s,
                       worker={"model_path": str(model)})
    node.start(dest_port=dest.port)
    try:
        node.wait_ready(timeout=300)
        pid = node.proc.pid  # type: ignore[union-attr]
        rss_start = memory_mb(pid)
        common = {"dest": dest, "senders": senders, "audit_path": node.audit_path,
                  "results_per_instance": 3, "pid": pid, "timeout": 600.0}
        warm = run_round(node.port, series=datasets[:senders], **common)
        results = []
        for r in range(rounds):
            chunk = datasets[senders + r * per_round:senders + (r + 1) * per_round]
            results.append(run_round(node.port, series=chunk, **common))
            print(f"load round {r + 1}/{rounds}: {per_round} series, median latency "
                  f"{results[-1]['latency_s']['median']:.2f} s, "
                  f"{results[-1]['series_per_hour']:.0f} series/h", flush=True)
        rss_end = memory_mb(pid)
    finally:
        node_exit = node.stop()
        dest.stop()
    return summarise_rounds(results, warm, rss_start, rss_end) | {
        "pipeline": "real (python -m monai_app.node subprocess, holoscan graph)",
        "model": str(model),
        "volume_shape": list(shape),
        "quiet_period_s": quiet_period_s,
        "node_clean_exit": node_exit,
    }


def summarise_rounds(rounds: list[dict[str, Any]], warm: dict[str, Any],
                     rss_start: dict[str, float], rss_end: dict[str, float]) -> dict[str, Any]:
    """Totals over the rounds: loss/duplication counts, pooled latency, median series/hour."""
    import statistics

    latencies = [v for r in rounds for v in r["latencies_s"]]
    return {
        "senders": rounds[0]["senders"],
        "series_per_round": rounds[0]["series"],
        "rounds": len(rounds),
        "lost": sum(len(r["lost"]) for r in rounds),
        "duplicated_processing": sum(len(r["duplicated_processing"]) for r in rounds),
        "duplicated_results": sum(len(r["duplicated_results"]) for r in rounds),
        "surplus_results": sum(r["surplus_results"] for r in rounds),
        "failures": sum(r["failures"] for r in rounds),
        "latency_s": summary(latencies) if latencies else None,
        "series_per_hour": statistics.median(r["series_per_hour"] for r in rounds),
        "node_rss_mb": {
            "start": rss_start["VmRSS"],
            "after_warm_up": warm["rss_mb_after"],
            "end": rss_end["VmRSS"],
            "peak": rss_end.get("VmHWM"),
        },
        "per_round": rounds,
    }
