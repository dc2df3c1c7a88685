"""Crash and restart: a real node process (``python -m monai_app.node``) is killed with SIGKILL
while it receives a series, while it processes one and while it sends results, then started
again. A storage SCP in the test process stands in for the PACS and keeps every instance it
stores as the bytes it received.

What the node guarantees, and what is checked here:

- Receiving: an instance is acknowledged only once it is durably in the spool (atomic rename),
  so a kill mid-association loses nothing acknowledged. The sender re-sends the series after its
  failed association (as a PACS retrying its C-STORE job, or an operator, does); the re-sent
  instances replace the spooled copies and the series is processed as one job. This relies on
  the re-send arriving within ``quiet_period_s`` of the restart (the quiet period of a series
  found in the spool starts at start-up): a re-send after that finds the first part already
  sealed, and the rest becomes a second job (nothing lost or processed twice, but the series is
  split). OCT cubes are one instance each, so this only affects multi-instance series.
- Processing: a job found in ``processing`` after the restart runs again (the killed run counts
  as an attempt); its ``output.partial`` folder, which here holds a complete and a truncated
  result of the killed run, is deleted and never sent.
- Sending: every file the destination confirms is recorded in the queue before the next one is
  sent, so after a restart only unconfirmed files are sent. Delivery is at-least-once in one
  window: a file the destination stored whose response the node never read (killed in between)
  is sent again. The copy is the identical SOP instance (same SOP Instance UID, same bytes),
  which a PACS stores once; ``test_kill_while_sending[response_lost]`` shows exactly that.

The node runs ``node_support:stub_pipeline`` (``worker.process_function``) instead of the model,
so a start takes well under a second and the moments to kill at are set by the test: the stub
holds a run (``NODE_TEST_HOLD_S``), the destination holds a C-STORE, the SCU pauses mid-series.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from node_support import (
    HOLD_ENV,
    Destination,
    echo,
    free_port,
    make_instance,
    store,
)
from orthanc_harness import wait_for
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt

from monai_app.node.config import OPT_SOP_CLASS_UID, NodeConfig, load_config
from monai_app.node.jobqueue import DELIVERED, PROCESSED, PROCESSING, STATES, JobQueue

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
STORED = 0x0000


class Pacs(Destination):
    """The destination: writes each stored instance to a file exactly as received, and can hold
    the ``hold_at``-th C-STORE (before storing it, or after storing it but before answering) so
    the test can kill the node in the middle of sending."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory
        directory.mkdir(parents=True)
        self.files: list[Path] = []
        self.requests = 0
        self.hold_at: int | None = None
        self.store_then_hold = False
        self.holding = threading.Event()
        self.release = threading.Event()

    def _on_store(self, event: evt.Event) -> int:
        with self._lock:
            self.requests += 1
            number = self.requests
        hold = number == self.hold_at
        if hold and not self.store_then_hold:
            self._hold()
            return 0xA700  # not stored (the node is gone by now anyway)
        path = self.directory / f"{number:03d}.dcm"
        path.write_bytes(event.encoded_dataset(include_meta=True))
        with self._lock:
            self.files.append(path)
        if hold:
            self._hold()  # stored, but the node dies before it reads the response
        return STORED

    def _hold(self) -> None:
        self.holding.set()
        self.release.wait(30)


class NodeProcess:
    """``python -m monai_app.node --config <yaml>`` as a child process (output in a log file)."""

    def __init__(self, config_path: Path, port: int, log_path: Path) -> None:
        self.config_path = config_path
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        """Start the node and wait until it answers C-ECHO."""
        environment = {k: v for k, v in os.environ.items() if k != HOLD_ENV}
        # The stub pipeline lives in tests/node_support.py.
        environment["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
        environment.update(env or {})
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "monai_app.node", "--config", str(self.config_path)],
                cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT,
            )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"node exited with {self.proc.returncode}:\n{self.log_tail()}")
            return echo(self.port) == STORED

        wait_for(ready, 30, 0.02, "the node to answer C-ECHO")

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or cleaned up."""
        assert self.proc is not None and self.proc.poll() is None, "node not running"
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL

    def terminate(self) -> int:
        """Clean stop (SIGTERM); returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


class Harness:
    """One node configuration, its process, and the destination it sends to."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.pacs = Pacs(tmp_path / "pacs").start()
        self.port = free_port()
        self.config_path = tmp_path / "node.yaml"
        self.node = NodeProcess(self.config_path, self.port, tmp_path / "node.log")
        self.config: NodeConfig | None = None

    def configure(self, quiet_period_s: float) -> NodeConfig:
        data = {
            "ae_title": "MONAI-OCT",
            "port": self.port,
            "allowed_callers": ["TESTSCU"],
            "spool_dir": "spool",
            "quiet_period_s": quiet_period_s,
            "min_free_mb": 0,
            "destination": {
                "ae_title": self.pacs.ae_title, "port": self.pacs.port, "max_attempts": 100,
                "backoff_initial_s": 0.05, "backoff_max_s": 0.2, "timeout_s": 10,
            },
            "worker": {
                "process_function": "node_support:stub_pipeline", "warmup": False,
                "max_attempts": 3, "retry_delay_s": 0.05,
            },
        }
        self.config_path.write_text(yaml.safe_dump(data))
        self.config = load_config(self.config_path)
        return self.config

    @property
    def spool(self) -> Path:
        assert self.config is not None
        return self.config.spool_dir

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Audit records so far (a line being appended right now is skipped)."""
        assert self.config is not None
        path = self.config.audit_path
        records = []
        for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return [r for r in records if name is None or r["event"] == name]

    def status(self) -> dict[str, Any]:
        """``python -m monai_app.node --config X status`` (the operator's view of the queue)."""
        run = subprocess.run(
            [sys.executable, "-m", "monai_app.node", "--config", str(self.config_path),
             "status"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
        return json.loads(run.stdout)

    def received(self) -> list[Dataset]:
        """Every instance the destination stored, each checked to be complete DICOM."""
        datasets = []
        for path in self.pacs.files:
            try:
                ds = dcmread(path)
                assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
                frames = int(ds.get("NumberOfFrames", 1))
                pixels = ds.Rows * ds.Columns * frames * ds.SamplesPerPixel
                assert len(ds.PixelData) == pixels * ds.BitsAllocated // 8
                assert ds.pixel_array.size == pixels
            except Exception as exc:  # noqa: BLE001  (any failure means a partial instance)
                pytest.fail(f"the destination got an incomplete instance ({path.name}): "
                            f"{type(exc).__name__}: {exc}")
            datasets.append(ds)
        return datasets

    def finish(self, series: dict[str, int]) -> tuple[list[Dataset], list[dict[str, Any]]]:
        """Wait for every series (study UID -> instances sent) to be delivered, stop the node
        cleanly, check the queue, the spool and what arrived; returns (results, jobs)."""
        wait_for(lambda: len(self.events("delivered")) >= len(series), 20, 0.02, "delivery")
        assert self.node.terminate() == 0, self.node.log_tail()
        table = self.status()
        assert table["counts"] == {**dict.fromkeys(STATES, 0), DELIVERED: len(series)}
        # Clean-up after delivery: no job folder, no series waiting, no temporary file.
        assert list((self.spool / "jobs").iterdir()) == []
        assert list((self.spool / "incoming").iterdir()) == []
        assert [p for p in self.spool.rglob("*") if "partial" in p.name] == []
        results = self.received()
        for study_uid, n_instances in series.items():
            mine = [ds for ds in results if ds.StudyInstanceUID == study_uid]
            # One Secondary Capture result per input instance (the stub's contract).
            assert len({ds.SOPInstanceUID for ds in mine}) == n_instances
            assert {ds.SOPClassUID for ds in mine} == {"1.2.840.10008.5.1.4.1.1.7"}
        assert {ds.StudyInstanceUID for ds in results} == set(series)
        # Each series is one job, processed to the end and delivered exactly once.
        assert len(table["jobs"]) == len(series)
        assert Counter(e["job_id"] for e in self.events("finished")) == Counter(
            j["id"] for j in table["jobs"])
        assert Counter(e["job_id"] for e in self.events("delivered")) == Counter(
            j["id"] for j in table["jobs"])
        return results, table["jobs"]

    def close(self) -> None:
        self.node.cleanup()
        self.pacs.release.set()
        self.pacs.stop()


@pytest.fixture
def harness(tmp_path):
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


def _series(n: int) -> list[Dataset]:
    study, series = generate_uid(), generate_uid()
    return [make_instance(study_uid=study, series_uid=series) for _ in range(n)]


def test_kill_while_receiving(harness):
    """Killed in an association after 2 of 4 instances were stored, with the 3rd half
    transferred: the SCU's association fails, it re-sends the series to the restarted node, and
    the series is processed once, as one job."""
    harness.configure(quiet_period_s=2.0)  # covers the restart before the re-send
    series = _series(4)
    # The 3rd instance spans several P-DATA PDUs (the node accepts 16 KiB PDUs).
    series[2] = make_instance(study_uid=series[0].StudyInstanceUID,
                              series_uid=series[0].SeriesInstanceUID, frames=300)
    harness.node.start()
    mid_instance, go_on = threading.Event(), threading.Event()
    statuses: list[int | None] = []
    pdus_of_third = [0]

    def hold_mid_instance(event: evt.Event) -> None:
        # Runs in the SCU's DUL thread after each PDU: blocking it stalls the transfer.
        if len(statuses) == 2:
            pdus_of_third[0] += 1
            if pdus_of_third[0] == 2:  # the command set and the first dataset fragment
                mid_instance.set()
                go_on.wait(30)

    def scu() -> None:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(OPT_SOP_CLASS_UID, ExplicitVRLittleEndian)
        ae.dimse_timeout = 3  # bounds the wait for a response that never comes
        assoc = ae.associate("127.0.0.1", harness.port, ae_title="MONAI-OCT",
                             evt_handlers=[(evt.EVT_DATA_SENT, hold_mid_instance)])
        try:
            for ds in series:
                if not assoc.is_established:
                    break  # aborted: the node is gone
                statuses.append(getattr(assoc.send_c_store(ds), "Status", None))
        finally:
            if assoc.is_established:
                assoc.release()

    sender = threading.Thread(target=scu, daemon=True)
    sender.start()
    assert mid_instance.wait(20)
    harness.node.kill()
    go_on.set()
    assert statuses == [STORED, STORED]
    # On disk: the two acknowledged instances, complete; nothing of the 3rd; not yet a job.
    (incoming,) = (harness.spool / "incoming").iterdir()
    assert sorted(p.name for p in incoming.iterdir()) == sorted(
        f"{ds.SOPInstanceUID}.dcm" for ds in series[:2])
    assert list((harness.spool / "jobs").iterdir()) == []

    harness.node.start()
    assert store(harness.port, series) == [STORED] * 4  # the PACS re-sends the whole series
    results, (job,) = harness.finish({series[0].StudyInstanceUID: 4})
    assert len(results) == 4 and job["instances"] == 4 and job["attempts"] == 1
    assert job["series_instance_uid"] == series[0].SeriesInstanceUID
    sender.join(10)
    assert not sender.is_alive() and STORED not in statuses[2:]  # never acknowledged


def test_kill_while_processing(harness):
    """Killed while the pipeline runs, with part of its output written: after the restart the
    job runs again and only the second run's results are delivered, once."""
    harness.configure(quiet_period_s=0.3)
    series = _series(2)
    harness.node.start(env={HOLD_ENV: "60"})
    assert store(harness.port, series) == [STORED] * 2
    truncated = wait_for(
        lambda: next((harness.spool / "jobs").glob("*/output.partial/truncated_result.dcm"),
                     None),
        20, 0.02, "the pipeline to be half-way")
    early_uid = dcmread(truncated.with_name("early_result.dcm")).SOPInstanceUID
    assert [e["event"] for e in harness.events()][-1] == "started"
    harness.node.kill()
    (job,) = harness.status()["jobs"]
    assert (job["state"], job["attempts"]) == (PROCESSING, 1)

    harness.node.start()  # no hold this time
    results, (job,) = harness.finish({series[0].StudyInstanceUID: 2})
    assert len(results) == 2 and early_uid not in {ds.SOPInstanceUID for ds in results}
    assert job["attempts"] == 2  # the killed run counts (a volume that kills the node stops)
    assert [e["attempt"] for e in harness.events("started")] == [1, 2]


@pytest.mark.parametrize("response_lost", [False, True], ids=["in_flight", "response_lost"])
def test_kill_while_sending(harness, response_lost):
    """Killed after 1 of 3 result files was confirmed, while the 2nd was at the destination:
    the restarted node sends the unconfirmed files only. ``in_flight``: the destination had not
    stored the 2nd file, each result arrives exactly once. ``response_lost``: it had stored it
    but the node died before reading the response, so that one file arrives twice, identical."""
    harness.configure(quiet_period_s=0.3)
    harness.pacs.hold_at, harness.pacs.store_then_hold = 2, response_lost
    series = _series(3)
    harness.node.start()
    assert store(harness.port, series) == [STORED] * 3
    assert harness.pacs.holding.wait(20), harness.node.log_tail()
    harness.node.kill()
    harness.pacs.release.set()
    queue = JobQueue(harness.spool / "queue.sqlite3")
    try:
        (job,) = queue.jobs()
        assert job.state == PROCESSED and len(queue.delivered_files(job.id)) == 1
    finally:
        queue.close()

    harness.node.start()
    results, _ = harness.finish({series[0].StudyInstanceUID: 3})
    (delivered,) = harness.events("delivered")
    assert (delivered["files"], delivered["sent_now"]) == (3, 2)
    counts = Counter(ds.SOPInstanceUID for ds in results)
    if not response_lost:
        assert len(results) == 3 and set(counts.values()) == {1}
        return
    assert len(results) == 4
    ((twice, n),) = [(uid, n) for uid, n in counts.items() if n > 1]
    assert n == 2
    first, second = [p for p, ds in zip(harness.pacs.files, results, strict=True)
                      if ds.SOPInstanceUID == twice]
    assert first.read_bytes() == second.read_bytes()  # the same instance, byte for byte
