"""Helpers for the DICOM node tests: small real datasets, a C-STORE SCU, a destination SCP, and a
tiny processing function that writes a real DICOM result (the real pipeline is used end to end
in ``test_orthanc_e2e.py``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from monai_app.node.config import OPT_SOP_CLASS_UID, parse_config

SC_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
PATIENT_NAME = "Secretname^Patientia"
PATIENT_ID = "PID-7355608"


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_instance(
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    sop_class_uid: str = OPT_SOP_CLASS_UID,
    frames: int = 4,
) -> Dataset:
    """A small multi-frame instance with patient identifiers (to check they never leak)."""
    ds = Dataset()
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.Modality = "OPT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 16, 12, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    rng = np.random.default_rng(abs(hash(str(ds.SOPInstanceUID))) % 2**32)
    ds.PixelData = rng.integers(0, 255, (frames, 16, 12), dtype=np.uint8).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return ds


def store(
    port: int,
    datasets: list[Dataset],
    calling_ae: str = "TESTSCU",
    called_ae: str = "MONAI-OCT",
    tls_args=None,
) -> list[int] | None:
    """C-STORE ``datasets`` to 127.0.0.1:``port``; statuses, or None if not associated."""
    ae = AE(ae_title=calling_ae)
    for sop_class in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae, tls_args=tls_args)
    if not assoc.is_established:
        return None
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def echo(port: int, calling_ae: str = "TESTSCU", called_ae: str = "MONAI-OCT") -> int | None:
    """C-ECHO status, or None when the association is refused."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


class Destination:
    """A real storage SCP standing in for the PACS in the fast tests; records what it stores."""

    def __init__(self, ae_title: str = "PACS", port: int | None = None, status: int = 0x0000):
        self.ae_title = ae_title
        self.port = port or free_port()
        self.status = status
        self.received: list[Dataset] = []
        self.calling: list[str] = []
        self._lock = threading.Lock()
        self._server = None

    def _on_store(self, event: evt.Event) -> int:
        if self.status == 0x0000:
            ds = event.dataset
            ds.file_meta = event.file_meta
            with self._lock:
                self.received.append(ds)
                self.calling.append(event.assoc.requestor.ae_title.strip())
        return self.status

    def start(self, ssl_context=None) -> Destination:
        ae = AE(ae_title=self.ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, ssl_context=ssl_context,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def sop_uids(self) -> list[str]:
        with self._lock:
            return [str(ds.SOPInstanceUID) for ds in self.received]


def result_writer(calls: list[Path] | None = None):
    """A processing function with the pipeline's contract: for each input instance, write one
    Secondary Capture result into the source study and a results.json, return the entries."""

    def process(input_dir: Path, output_dir: Path) -> list[dict]:
        if calls is not None:
            calls.append(input_dir)
        entries = []
        for path in sorted(input_dir.glob("*.dcm")):
            src = dcmread(path)
            ds = make_instance(
                study_uid=src.StudyInstanceUID, sop_class_uid=SC_SOP_CLASS_UID, frames=1
            )
            ds.Modality = "OT"
            ds.PatientName, ds.PatientID = src.PatientName, src.PatientID
            name = f"result_{ds.SOPInstanceUID}.dcm"
            ds.save_as(output_dir / name, enforce_file_format=True)
            entries.append({
                "series_instance_uid": str(src.SeriesInstanceUID),
                "sop_instance_uid": str(src.SOPInstanceUID),
                "probability": 0.25, "label": "no glaucoma", "assessable": True,
                "model_name": "stub", "model_version": "0.0",
                "outputs": [name], "timings": {"inference": 0.01},
            })
        (output_dir / "results.json").write_text(json.dumps(entries))
        return entries

    return process


#: Seconds :func:`stub_pipeline` holds a run after writing part of its output (unset: none).
HOLD_ENV = "NODE_TEST_HOLD_S"


def stub_pipeline(input_dir: Path, output_dir: Path) -> list[dict]:
    """:func:`result_writer` as ``worker.process_function`` of a node run as a subprocess
    (``node_support:stub_pipeline``, with ``tests/`` on ``PYTHONPATH``).

    With ``NODE_TEST_HOLD_S`` set it first leaves a complete result and a truncated one in its
    (still partial) output folder, then sleeps that long, so a test can kill the node mid-run
    and check that neither file is ever sent.
    """
    hold = float(os.environ.get(HOLD_ENV) or 0)
    if hold > 0:
        ds = make_instance(sop_class_uid=SC_SOP_CLASS_UID, frames=1)
        ds.save_as(output_dir / "early_result.dcm", enforce_file_format=True)
        data = (output_dir / "early_result.dcm").read_bytes()
        (output_dir / "truncated_result.dcm").write_bytes(data[: len(data) // 2])
        time.sleep(hold)
    return result_writer()(input_dir, output_dir)


def node_config(tmp_path: Path, port: int, dest: Destination | None = None, **overrides):
    """A node configuration for tests: loopback, free port, short quiet period and backoff."""
    data = {
        "ae_title": "MONAI-OCT",
        "port": port,
        "allowed_callers": ["TESTSCU", {"ae_title": "HOSTBOUND", "host": "10.9.8.7"}],
        "spool_dir": str(tmp_path / "spool"),
        "quiet_period_s": 0.3,
        "min_free_mb": 0,
        "destination": {
            "ae_title": dest.ae_title if dest else "PACS",
            "port": dest.port if dest else free_port(),
            "backoff_initial_s": 0.05,
            "backoff_max_s": 0.2,
            "max_attempts": 3,
            "timeout_s": 5,
        },
        "worker": {"max_attempts": 2, "retry_delay_s": 0.05},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_config(data, tmp_path)


def make_tls_files(directory: Path) -> dict[str, Path]:
    """A self-signed CA and a server/client certificate for 127.0.0.1 (openssl CLI)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    ext = d / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem")
    return {k: d / v for k, v in {
        "ca": "ca.pem", "server_cert": "server.pem", "server_key": "server.key",
        "client_cert": "client.pem", "client_key": "client.key"}.items()}
