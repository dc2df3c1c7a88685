"""Load test of the in-process node: four modalities store 40 series (3 instances each) at once.

Nothing may be lost or duplicated: every series processed exactly once, every result instance
delivered exactly once. The latency (last instance stored -> last result delivered) is reported,
not asserted (wall-clock thresholds are flaky on shared CI machines). Memory must stay flat: the
process's RSS after the main round is compared with the RSS after a warm-up round.
The same scenario with the real pipeline runs in ``make bench`` (``bench/node_load.py``).
"""

from __future__ import annotations

import gc
import logging
import os

import pytest
from node_support import make_instance, node_config, result_writer

from bench.node_load import TimedDestination, run_round
from monai_app.node.service import DicomNode

SENDERS = 4
SERIES_PER_SENDER = 10
INSTANCES_PER_SERIES = 3
#: RSS growth allowed from after the warm-up round to after the main round. The stub pipeline
#: holds nothing, so real growth is a few MB (allocator noise); a leak of one series' worth of
#: data per job would exceed it.
MAX_RSS_GROWTH_MB = 50

LOG = logging.getLogger(__name__)


def _series(count: int) -> list[list]:
    """``count`` series, each alone in its study, of ``INSTANCES_PER_SERIES`` instances."""
    out = []
    for _ in range(count):
        first = make_instance()
        out.append([first] + [
            make_instance(study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID)
            for _ in range(INSTANCES_PER_SERIES - 1)
        ])
    return out


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_concurrent_senders_lose_nothing_duplicate_nothing_memory_flat(tmp_path, capsys):
    dest = TimedDestination().start()
    config = node_config(tmp_path, port=0, dest=dest)
    node = DicomNode(config, process=result_writer())
    node.start(worker_thread=True)
    common = {"dest": dest, "senders": SENDERS, "audit_path": config.audit_path,
              "results_per_instance": 1, "pid": os.getpid(), "timeout": 60.0}
    try:
        warm = run_round(node.receiver.port, series=_series(SENDERS * 5), **common)
        main_series = _series(SENDERS * SERIES_PER_SENDER)
        gc.collect()
        rss_warm = warm["rss_mb_after"]
        result = run_round(node.receiver.port, series=main_series, **common)
        gc.collect()
    finally:
        node.stop()
        dest.stop()

    for name, r in (("warm-up", warm), ("main", result)):
        assert r["lost"] == [], f"{name}: series lost: {r['lost']}"
        assert r["duplicated_processing"] == [], f"{name}: processed twice"
        assert r["duplicated_results"] == [] and r["surplus_results"] == 0
        assert r["failures"] == 0
    assert result["series"] == SENDERS * SERIES_PER_SENDER
    assert result["results_delivered"] == SENDERS * SERIES_PER_SENDER * INSTANCES_PER_SERIES
    growth = result["rss_mb_after"] - rss_warm
    latency = result["latency_s"]
    line = (f"node load: {SENDERS} senders x {SERIES_PER_SENDER} series x "
            f"{INSTANCES_PER_SERIES} instances; latency (last instance stored -> last result "
            f"delivered, quiet period {config.quiet_period_s} s) median {latency['median']:.3f} s"
            f", p95 {latency['p95']:.3f} s; {result['series_per_hour']:.0f} series/h; RSS "
            f"{rss_warm:.1f} -> {result['rss_mb_after']:.1f} MB ({growth:+.1f} MB)")
    LOG.info(line)
    with capsys.disabled():
        print("\n" + line)
    assert growth < MAX_RSS_GROWTH_MB
