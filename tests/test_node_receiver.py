"""Receiver (storage SCP): allow-list, atomic spooling before success, quiet-period sealing,
duplicates, ignored SOP classes, out-of-resources answers."""

from __future__ import annotations

import dataclasses
import socket
import time

import pytest
from node_support import (
    PATIENT_ID,
    PATIENT_NAME,
    SC_SOP_CLASS_UID,
    echo,
    free_port,
    make_instance,
    node_config,
    result_writer,
    store,
)
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from monai_app.node.audit import read_audit
from monai_app.node.receiver import SeriesTracker
from monai_app.node.sender import Sender
from monai_app.node.service import DicomNode


@pytest.fixture
def node(tmp_path):
    """A node that receives and seals (no worker/sender running: jobs stay pending)."""
    config = node_config(tmp_path, port=0)
    n = DicomNode(config, process=result_writer())
    n.recover()
    n.receiver.start()
    yield n
    n.receiver.stop()
    n.queue.close()
    n.audit.close()


def test_echo_and_allow_list(node):
    port = node.receiver.port
    assert echo(port) == 0x0000
    assert echo(port, calling_ae="INTRUDER") is None
    # An allow-listed AE title bound to another host is rejected too.
    assert echo(port, calling_ae="HOSTBOUND") is None
    rejected = [r for r in read_audit(node.config.audit_path) if r["event"] == "rejected"]
    assert [r["calling_ae"] for r in rejected] == ["INTRUDER", "HOSTBOUND"]


def test_unknown_caller_cannot_store(node):
    ds = make_instance()
    assert store(node.receiver.port, [ds], calling_ae="INTRUDER") is None
    assert node.spool.incoming_series() == []


def test_instance_is_on_disk_as_sent_before_success(node):
    ds = make_instance()
    assert store(node.receiver.port, [ds]) == [0x0000]
    # The file is complete the moment the response arrives: no waiting.
    path = node.spool.incoming / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
    stored = dcmread(path)
    assert stored.SOPInstanceUID == ds.SOPInstanceUID
    assert stored.PixelData == ds.PixelData
    assert stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert not list(path.parent.glob(".*"))  # no temporary file left


def test_quiet_period_groups_a_series_into_one_job(node):
    study = "1.2.826.0.1.3680043.8.498.1"
    series = "1.2.826.0.1.3680043.8.498.2"
    first = [make_instance(study, series) for _ in range(2)]
    other = make_instance(study)
    assert store(node.receiver.port, [*first, other]) == [0, 0, 0]
    assert node.seal_complete() == []  # still inside the quiet period
    time.sleep(node.config.quiet_period_s + 0.1)
    jobs = node.seal_complete()
    assert len(jobs) == 2
    by_series = {node.queue.get(j).series_uid: node.queue.get(j) for j in jobs}
    assert by_series[series].n_instances == 2 and by_series[series].study_uid == study
    assert by_series[str(other.SeriesInstanceUID)].n_instances == 1
    assert node.spool.incoming_series() == []
    events = [r["event"] for r in read_audit(node.config.audit_path)]
    assert events.count("received") == 3 and events.count("queued") == 2


def test_same_volume_twice_is_not_processed_twice(node):
    ds = make_instance()
    assert store(node.receiver.port, [ds]) == [0]
    time.sleep(node.config.quiet_period_s + 0.1)
    assert len(node.seal_complete()) == 1
    # Sent again after it was queued: acknowledged, not spooled, no second job.
    assert store(node.receiver.port, [ds]) == [0]
    time.sleep(node.config.quiet_period_s + 0.1)
    assert node.seal_complete() == []
    assert sum(node.queue.counts().values()) == 1
    assert any(r["event"] == "duplicate" for r in read_audit(node.config.audit_path))


def test_other_sop_classes_are_acknowledged_and_dropped(node):
    ds = make_instance(sop_class_uid=SC_SOP_CLASS_UID)
    assert store(node.receiver.port, [ds]) == [0]
    assert node.spool.incoming_series() == []
    assert read_audit(node.config.audit_path)[-1]["event"] == "ignored"


def test_write_error_answers_out_of_resources(node):
    ds = make_instance()
    # A file where the series folder should be: the write fails with a real OSError.
    (node.spool.incoming / str(ds.SeriesInstanceUID)).write_bytes(b"")
    assert store(node.receiver.port, [ds]) == [0xA700]
    assert not [r for r in read_audit(node.config.audit_path) if r["event"] == "received"]


def test_low_disk_refuses_associations(tmp_path):
    # More free space required than any disk has: refused, transient, before any data moves.
    config = node_config(tmp_path, port=0, min_free_mb=10**12)
    node = DicomNode(config, process=result_writer())
    node.receiver.start()
    try:
        assert store(node.receiver.port, [make_instance()]) is None
        record = read_audit(config.audit_path)[-1]
        assert record["event"] == "rejected" and "MB free" in record["reason"]
    finally:
        node.receiver.stop()
        node.queue.close()


def test_compressed_transfer_syntax_is_stored_as_received(node):
    pytest.importorskip("pylibjpeg")
    from pydicom.uid import RLELossless

    ds = make_instance()
    ds.compress(RLELossless, generate_instance_uid=False)
    from pynetdicom import AE

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(ds.SOPClassUID, RLELossless)
    assoc = ae.associate("127.0.0.1", node.receiver.port, ae_title="MONAI-OCT")
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    path = node.spool.incoming / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
    stored = dcmread(path)
    assert stored.file_meta.TransferSyntaxUID == RLELossless
    assert stored.pixel_array.shape == (4, 16, 12)


def test_audit_and_logs_carry_no_patient_identifiers(node, caplog):
    caplog.set_level("DEBUG")
    store(node.receiver.port, [make_instance()])
    store(node.receiver.port, [make_instance()], calling_ae="INTRUDER")
    text = node.config.audit_path.read_text() + caplog.text
    assert "received" in text
    assert PATIENT_NAME not in text and PATIENT_ID not in text
    assert "Secretname" not in text


def test_tracker_never_seals_a_series_being_written():
    now = [0.0]
    tracker = SeriesTracker(1.0, clock=lambda: now[0])
    sealed = []
    tracker.begin("s")
    now[0] = 5.0
    assert tracker.seal_due(lambda k, st: sealed.append(k)) == []
    tracker.end("s", stored=True)
    now[0] = 5.5
    assert tracker.seal_due(lambda k, st: sealed.append(k)) == []
    now[0] = 6.1
    assert tracker.seal_due(lambda k, st: sealed.append((k, st.stored))) == ["s"]
    assert sealed == [("s", 1)]


def test_dataset_roundtrip_helper_is_valid():
    # Guard for the helpers above: the test dataset encodes and decodes.
    ds = make_instance()
    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert dcmread(DicomBytesIO(buf.getvalue())).PatientID == PATIENT_ID
    assert free_port() > 0


def test_a_series_that_cannot_be_sealed_yet_is_kept_and_retried():
    now = [0.0]
    tracker = SeriesTracker(1.0, clock=lambda: now[0])
    tracker.begin("s")
    tracker.end("s", stored=True)
    now[0] = 2.0

    def disk_full(key, state):
        raise OSError(28, "No space left on device")

    assert tracker.seal_due(disk_full) == []
    assert tracker.pending() == 1  # not forgotten
    assert tracker.seal_due(lambda k, st: None) == ["s"]
    assert tracker.pending() == 0


def _no_delay(assoc) -> bool:
    raw = assoc.dul.socket.socket
    return raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_associations_switch_nagle_off_on_both_sides(node, tmp_path):
    """Without TCP_NODELAY each C-STORE waits ~40 ms for the peer's delayed ACK."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.receiver.port, ae_title="MONAI-OCT")
    try:
        assert assoc.is_established
        deadline = time.monotonic() + 5
        while not node.receiver._ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [_no_delay(a) for a in node.receiver._ae.active_associations] == [True]
        assert not _no_delay(assoc)  # the test's own client keeps pynetdicom's default
    finally:
        assoc.release()
    # The sender's association to the destination (here: the node itself).
    path = tmp_path / "result.dcm"
    make_instance().save_as(path, enforce_file_format=True)
    sender_config = dataclasses.replace(
        node.config,
        destination=dataclasses.replace(
            node.config.destination, host="127.0.0.1", port=node.receiver.port,
            ae_title="MONAI-OCT", calling_ae_title="TESTSCU",
        ),
    )
    sender = Sender(sender_config, node.queue, node.spool, node.audit)
    outgoing = sender._association([path])
    try:
        assert _no_delay(outgoing)
    finally:
        outgoing.release()
