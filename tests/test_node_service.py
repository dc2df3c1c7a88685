"""The whole node in-process (receiver, sealer, worker, sender) against a real storage SCP:
delivery, retries and backoff, failure bookkeeping, restart, duplicates, TLS, audit."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time

import pytest
from node_support import (
    PATIENT_ID,
    PATIENT_NAME,
    Destination,
    echo,
    make_instance,
    make_tls_files,
    node_config,
    result_writer,
    store,
)
from pynetdicom import AE
from pynetdicom.sop_class import OphthalmicTomographyImageStorage  # type: ignore[attr-defined]

from monai_app.node.audit import read_audit
from monai_app.node.jobqueue import DELIVERED, FAILED, PENDING, PROCESSED
from monai_app.node.service import DicomNode, job_table, requeue_failed


@pytest.fixture
def dest():
    d = Destination().start()
    yield d
    d.stop()


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _start(config, process):
    node = DicomNode(config, process=process)
    node.start(worker_thread=True)
    return node


def _restart_until_delivered(config, jobs: int) -> DicomNode:
    """Start a node on ``config`` and wait until ``jobs`` jobs are delivered; returns it stopped."""
    node = _start(config, result_writer())
    try:
        assert _wait(lambda: node.queue.counts()[DELIVERED] == jobs)
    finally:
        node.stop()
    return node


def _run_until_failed(config, process):
    """Store one instance into a node running ``process``; return once its job has failed."""
    node = _start(config, process)
    try:
        store(node.receiver.port, [make_instance()])
        assert _wait(lambda: node.queue.counts()[FAILED] == 1)
    finally:
        node.stop()


def test_series_is_processed_once_delivered_and_spool_cleaned(tmp_path, dest, caplog):
    caplog.set_level("DEBUG")
    calls = []
    config = node_config(tmp_path, port=0, dest=dest)
    node = _start(config, result_writer(calls))
    try:
        ds = make_instance()
        assert store(node.receiver.port, [ds]) == [0]
        assert _wait(lambda: len(dest.received) == 1)
        assert node.wait_idle(5)
        result = dest.received[0]
        assert result.StudyInstanceUID == ds.StudyInstanceUID
        assert dest.calling == ["MONAI-OCT"]
        job = node.queue.jobs()[0]
        assert job.state == DELIVERED and job.model_version == "stub 0.0"
        assert node.spool.job_ids_on_disk() == [] and node.spool.incoming_series() == []
        # The same volume again, after delivery: acknowledged, never processed again.
        assert store(node.receiver.port, [ds]) == [0]
        time.sleep(config.quiet_period_s + 0.3)
        assert node.wait_idle(5)
        assert len(calls) == 1 and len(dest.received) == 1
    finally:
        node.stop()
    events = read_audit(config.audit_path)
    names = [e["event"] for e in events]
    assert names[:5] == ["received", "queued", "started", "finished", "delivered"]
    assert "duplicate" in names
    finished = next(e for e in events if e["event"] == "finished")
    delivered = next(e for e in events if e["event"] == "delivered")
    assert finished["model_version"] == "stub 0.0" and finished["inference_s"] == 0.01
    assert finished["processing_s"] > 0 and delivered["latency_s"] > 0
    assert delivered["files"] == 1
    text = config.audit_path.read_text() + caplog.text
    assert PATIENT_NAME not in text and PATIENT_ID not in text


def test_failing_pipeline_is_retried_then_kept_with_reason(tmp_path, dest):
    calls = []

    def broken(input_dir, output_dir):
        calls.append(input_dir)
        raise RuntimeError("model exploded")

    config = node_config(tmp_path, port=0, dest=dest)
    node = _start(config, broken)
    try:
        store(node.receiver.port, [make_instance()])
        assert _wait(lambda: node.queue.counts()[FAILED] == 1)
        time.sleep(0.3)  # no further attempts after failing
    finally:
        node.stop()
    assert len(calls) == config.worker.max_attempts == 2
    job = job_table(config)["jobs"][0]
    assert job["state"] == FAILED and job["reason"] == "RuntimeError: model exploded"
    # The input stays in the spool for an operator retry.
    assert requeue_failed(config) == [job["id"]]
    assert job_table(config)["jobs"][0]["state"] == PENDING
    events = [e["event"] for e in read_audit(config.audit_path)]
    assert events.count("retry") == 1 and events.count("failed") == 1


def test_destination_down_then_up_results_wait_and_arrive(tmp_path):
    dest = Destination()  # not started: connection refused
    config = node_config(tmp_path, port=0, dest=dest,
                         destination={"max_attempts": 100, "backoff_max_s": 0.2})
    node = _start(config, result_writer())
    try:
        ds = make_instance()
        store(node.receiver.port, [ds])
        assert _wait(lambda: node.queue.jobs()[0].send_attempts >= 3 if node.queue.jobs()
                     else False)
        assert node.queue.jobs()[0].state == PROCESSED
        dest.start()
        assert _wait(lambda: node.queue.counts()[DELIVERED] == 1)
        assert len(dest.received) == 1
    finally:
        node.stop()
        dest.stop()
    failures = [e for e in read_audit(config.audit_path) if e["event"] == "send_failed"]
    assert failures and "association" in failures[0]["reason"]
    # Exponential backoff, capped.
    delays = [e["delay_s"] for e in failures]
    assert delays[:3] == [0.05, 0.1, 0.2] and max(delays) == 0.2


def test_destination_rejecting_results_fails_after_max_attempts(tmp_path):
    dest = Destination(status=0xA700).start()
    config = node_config(tmp_path, port=0, dest=dest)
    node = _start(config, result_writer())
    try:
        store(node.receiver.port, [make_instance()])
        assert _wait(lambda: node.queue.counts()[FAILED] == 1)
        job = node.queue.jobs()[0]
    finally:
        node.stop()
        dest.stop()
    assert job.send_attempts == config.destination.max_attempts
    assert "0xA700" in job.reason
    # Results are kept for a later resend.
    assert (config.spool_dir / "jobs" / job.id / "output").is_dir()


def test_restart_resumes_pending_jobs_without_loss(tmp_path, dest):
    calls = []
    config = node_config(tmp_path, port=0, dest=dest)
    first = DicomNode(config, process=result_writer(calls))
    first.start(worker_thread=False)  # receive and queue, but never process
    sent = [make_instance(), make_instance()]
    assert store(first.receiver.port, sent) == [0, 0]
    assert _wait(lambda: first.queue.counts()[PENDING] == 2)
    first.stop()
    # Also a series received but not yet sealed when the node stopped.
    third = make_instance()
    second = DicomNode(config, process=result_writer(calls))
    second.start(worker_thread=True)
    try:
        assert store(second.receiver.port, [third]) == [0]
        assert _wait(lambda: len(dest.received) == 3)
        assert second.wait_idle(5)
    finally:
        second.stop()
    assert len(calls) == 3
    assert {str(d.StudyInstanceUID) for d in dest.received} == {
        str(d.StudyInstanceUID) for d in [*sent, third]}


def test_restart_mid_delivery_sends_only_unconfirmed_files(tmp_path, dest):
    config = node_config(tmp_path, port=0, dest=dest)
    node = DicomNode(config, process=result_writer())
    node.start(worker_thread=False)
    store(node.receiver.port, [make_instance(), make_instance(sop_uid=None)])
    assert _wait(lambda: node.queue.counts()[PENDING] == 2)
    node.stop()
    # Process both jobs now, then pretend the first file of job 1 was confirmed before a crash.
    node = DicomNode(config, process=result_writer())
    node.worker = None
    node.recover()
    from monai_app.node.worker import Worker

    worker = Worker(config, node.queue, node.spool, node.audit, result_writer())
    assert worker.run_once() and worker.run_once()
    job = node.queue.jobs()[0]
    first_file = next((node.spool.output_dir(job.id)).glob("*.dcm"))
    node.queue.record_delivery(job.id, first_file.name, "x")
    node.queue.close()
    node.audit.close()
    node = _restart_until_delivered(config, 2)
    assert len(dest.received) == 1  # job 1's only file was already confirmed
    delivered = [e for e in read_audit(config.audit_path) if e["event"] == "delivered"]
    assert sorted(e["sent_now"] for e in delivered) == [0, 1]


def test_interrupted_partial_output_is_never_sent(tmp_path, dest):
    config = node_config(tmp_path, port=0, dest=dest)
    node = DicomNode(config, process=result_writer())
    node.start(worker_thread=False)
    store(node.receiver.port, [make_instance()])
    assert _wait(lambda: node.queue.counts()[PENDING] == 1)
    # Simulate a crash in the middle of processing: claimed, half an output written.
    job = node.queue.claim_for_processing()
    partial = node.spool.new_output_dir(job.id)
    (partial / "half.dcm").write_bytes(b"DICM-truncated")
    node.stop()
    node = _restart_until_delivered(config, 1)
    assert len(dest.received) == 1 and dest.received[0].Modality == "OT"
    assert node.queue.path.exists()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_tls_on_receive_and_send(tmp_path):
    import ssl

    certs = make_tls_files(tmp_path / "pki")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(certs["server_cert"], certs["server_key"])
    dest = Destination().start(ssl_context=server_ctx)
    tls = {"enabled": True, "cert_file": str(certs["server_cert"]),
           "key_file": str(certs["server_key"]), "ca_file": str(certs["ca"])}
    config = node_config(
        tmp_path, port=0, dest=dest, tls=tls,
        destination={"tls": {"enabled": True, "ca_file": str(certs["ca"])}},
    )
    node = _start(config, result_writer())
    try:
        client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=certs["ca"])
        client_ctx.load_cert_chain(certs["client_cert"], certs["client_key"])
        ds = make_instance()
        # Plain TCP to the TLS port fails; TLS with a client certificate works.
        assert store(node.receiver.port, [ds]) is None
        assert store(node.receiver.port, [ds], tls_args=(client_ctx, "127.0.0.1")) == [0]
        assert _wait(lambda: len(dest.received) == 1)
    finally:
        node.stop()
        dest.stop()


def test_permanent_errors_fail_at_once(tmp_path, dest):
    class NoOCT(ValueError):
        pass

    calls = []

    def no_oct(input_dir, output_dir):
        calls.append(input_dir)
        raise NoOCT("no OCT volume in the input")

    no_oct.permanent_errors = (NoOCT,)
    config = node_config(tmp_path, port=0, dest=dest)
    _run_until_failed(config, no_oct)
    assert len(calls) == 1  # not retried


def test_shutdown_during_a_run_requeues_the_job_uncounted(tmp_path, dest):
    # A graph stopped early by a shutdown raises IncompleteRunError after writing part of the
    # results. Those must never be delivered; the job is processed again after the restart.
    from monai_app.pipeline import IncompleteRunError

    config = node_config(tmp_path, port=0, dest=dest)
    holder = {}

    def interrupted(input_dir, output_dir):
        holder["node"].request_stop()  # what the signal handler does
        (output_dir / "partial.dcm").write_bytes(b"DICM")
        raise IncompleteRunError("the run stopped after 0 of 1 volumes")

    node = holder["node"] = _start(config, interrupted)
    store(node.receiver.port, [make_instance()])
    assert _wait(lambda: node.stopping)
    node.stop()
    (job,) = job_table(config)["jobs"]
    assert (job["state"], job["attempts"], job["reason"]) == (
        PENDING, 0, "interrupted by shutdown")
    assert dest.received == []
    node = _restart_until_delivered(config, 1)
    assert len(dest.received) == 1 and dest.received[0].Modality == "OT"
    events = [e["event"] for e in read_audit(config.audit_path)]
    assert "interrupted" in events
    started = [e for e in read_audit(config.audit_path) if e["event"] == "started"]
    assert [e["attempt"] for e in started] == [1, 1]


def test_warm_up_runs_the_pipeline_on_a_synthetic_opt(tmp_path):
    from pydicom import dcmread

    from monai_app.node.config import OPT_SOP_CLASS_UID
    from monai_app.node.worker import warm_up

    seen = []

    def process(input_dir, output_dir):
        seen.extend(dcmread(p).SOPClassUID for p in input_dir.glob("*.dcm"))
        return []

    assert warm_up(process, tmp_path / "warm") >= 0
    assert seen == [OPT_SOP_CLASS_UID]
    assert not (tmp_path / "warm").exists()


def test_crash_between_sealing_and_queueing_loses_nothing(tmp_path, dest):
    from pydicom.filebase import DicomBytesIO

    from monai_app.node.spool import Spool

    config = node_config(tmp_path, port=0, dest=dest)
    spool = Spool(config.spool_dir)
    ds = make_instance()
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    # State on disk after a SIGKILL right after the rename into jobs/: a folder, no queue row.
    spool.write_instance(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), buffer.getvalue())
    spool.seal(str(ds.SeriesInstanceUID), "20260101T000000-orphan")
    # ... and a second series still in incoming/ with a half-written temporary file beside it.
    other = make_instance()
    buffer = DicomBytesIO()
    other.save_as(buffer, enforce_file_format=True)
    spool.write_instance(str(other.SeriesInstanceUID), str(other.SOPInstanceUID),
                         buffer.getvalue())
    (spool.incoming / str(other.SeriesInstanceUID) / ".x.dcm.1.partial").write_bytes(b"DI")
    node = _restart_until_delivered(config, 2)
    assert sorted(str(d.StudyInstanceUID) for d in dest.received) == sorted(
        [str(ds.StudyInstanceUID), str(other.StudyInstanceUID)])
    assert node.spool.job_ids_on_disk() == [] and node.spool.incoming_series() == []


def test_results_not_written_are_retried_not_sent_short(tmp_path, dest):
    """A pipeline run whose results could not all be written (disk full) is a failed attempt:
    the node never marks the series answered with results missing, and keeps its input."""
    write = result_writer()

    def disk_full_for_the_seg(input_dir, output_dir):
        entries = write(input_dir, output_dir)
        return [{**e, "unwritten": ["seg"]} for e in entries]

    config = node_config(tmp_path, port=0, dest=dest)
    _run_until_failed(config, disk_full_for_the_seg)
    job = job_table(config)["jobs"][0]
    assert job["reason"] == "OutputNotWrittenError: results not written: seg"
    assert dest.received == []
    assert any((config.spool_dir / "jobs" / job["id"]).rglob("*.dcm"))  # input kept for retry


def test_no_result_file_fails_the_job_instead_of_delivering_nothing(tmp_path, dest):
    config = node_config(tmp_path, port=0, dest=dest)
    _run_until_failed(config, lambda input_dir, output_dir: [])
    assert job_table(config)["jobs"][0]["reason"] == "the pipeline wrote no result file"
    assert DELIVERED not in [e["state"] for e in job_table(config)["jobs"]]


def test_an_unreadable_result_does_not_block_later_jobs(tmp_path, dest):
    """A result file that is not DICOM fails its own job after the delivery attempts; the next
    series is delivered meanwhile."""
    write = result_writer()
    calls = []

    def first_one_broken(input_dir, output_dir):
        calls.append(input_dir)
        if len(calls) == 1:
            (output_dir / "broken.dcm").write_bytes(b"not DICOM at all")
            return [{"series_instance_uid": "1.2.3", "outputs": ["broken.dcm"]}]
        return write(input_dir, output_dir)

    config = node_config(tmp_path, port=0, dest=dest)
    node = _start(config, first_one_broken)
    try:
        store(node.receiver.port, [make_instance()])
        assert _wait(lambda: len(calls) == 1)
        store(node.receiver.port, [make_instance()])
        assert _wait(lambda: node.queue.counts()[DELIVERED] == 1
                     and node.queue.counts()[FAILED] == 1)
    finally:
        node.stop()
    assert len(dest.received) == 1
    failed = next(j for j in job_table(config)["jobs"] if j["state"] == FAILED)
    assert "broken.dcm" in failed["reason"] or "DICOM" in failed["reason"]


def test_spool_error_outside_the_pipeline_does_not_strand_the_job(tmp_path, dest, monkeypatch):
    """An I/O error in the worker's own bookkeeping (here: publishing the output) is a failed
    attempt, never a job left "processing" until the next restart."""
    from monai_app.node.spool import Spool

    def no_space(self, job_id):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Spool, "commit_output", no_space)
    config = node_config(tmp_path, port=0, dest=dest)
    _run_until_failed(config, result_writer())
    assert "No space left on device" in job_table(config)["jobs"][0]["reason"]
    assert dest.received == []


def test_a_run_that_completes_during_shutdown_is_kept(tmp_path, dest):
    """SIGTERM while a run goes on: the run finishes (holoscan does not cut it short), and its
    results are kept for delivery instead of being thrown away and computed again."""
    config = node_config(tmp_path, port=0, dest=dest)
    holder = {}
    write = result_writer()

    def completes(input_dir, output_dir):
        holder["node"].request_stop()
        return write(input_dir, output_dir)

    node = holder["node"] = _start(config, completes)
    store(node.receiver.port, [make_instance()])
    assert _wait(lambda: node.stopping)
    assert _wait(lambda: node.queue.counts()[PROCESSED] + node.queue.counts()[DELIVERED] == 1)
    node.stop()
    (job,) = job_table(config)["jobs"]
    assert job["state"] in (PROCESSED, DELIVERED) and job["attempts"] == 1
    assert "interrupted" not in [e["event"] for e in read_audit(config.audit_path)]


def test_begin_stop_refuses_new_associations_and_finishes_the_current_job(tmp_path, dest):
    """SIGTERM's first step: the listening socket closes at once, the running job completes."""
    release, started = threading.Event(), threading.Event()
    writer = result_writer()

    def slow(input_dir, output_dir):
        started.set()
        release.wait(10)
        return writer(input_dir, output_dir)

    config = node_config(tmp_path, port=0, dest=dest)
    node = _start(config, slow)
    try:
        port = node.receiver.port
        store(port, [make_instance()])
        assert started.wait(10)
        # An association opened before the stop request may still store.
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(OphthalmicTomographyImageStorage)
        open_assoc = ae.associate("127.0.0.1", port, ae_title="MONAI-OCT")
        assert open_assoc.is_established
        node.begin_stop()
        assert echo(port) is None  # no new association
        late = make_instance()
        assert int(open_assoc.send_c_store(late).Status) == 0
        open_assoc.release()
        release.set()
        assert _wait(lambda: node.queue.counts()[PROCESSED] + node.queue.counts()[DELIVERED] == 1)
    finally:
        release.set()
        node.stop()
    # The late instance waits in the spool; the next start processes and delivers it.
    assert len(node.spool.incoming_series()) == 1
    node = _start(config, writer)
    try:
        assert _wait(lambda: len(dest.received) == 2)
    finally:
        node.stop()
    assert str(late.StudyInstanceUID) in {str(ds.StudyInstanceUID) for ds in dest.received}


def test_a_series_the_queue_refuses_is_queued_on_a_later_tick(tmp_path, dest, monkeypatch):
    """A queue error just after sealing (database locked) must not park the series until restart."""
    config = node_config(tmp_path, port=0, dest=dest)
    node = _start(config, result_writer())
    add_job, failures = node.queue.add_job, []

    def locked_once(*args, **kwargs):
        if not failures:
            failures.append(args[0])
            raise sqlite3.OperationalError("database is locked")
        return add_job(*args, **kwargs)

    monkeypatch.setattr(node.queue, "add_job", locked_once)
    try:
        store(node.receiver.port, [make_instance()])
        assert _wait(lambda: len(dest.received) == 1)
        assert [job.id for job in node.queue.jobs()] == failures  # the same job, no restart
    finally:
        node.stop()
