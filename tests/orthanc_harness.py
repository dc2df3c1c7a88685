"""Run a real Orthanc and the DICOM node as subprocesses on loopback, for the end-to-end test and
the node benchmark.

Orthanc's configuration is ``deploy/orthanc/orthanc.json`` (the shipped example, //-comments
stripped) with the ports, folders, credentials and modalities of the run overridden, and the
shipped ``deploy/orthanc/route-opt.lua`` as its only Lua script, so the test proves the files an
IT team adapts.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

REPO = Path(__file__).resolve().parents[1]
ORTHANC_DIR = REPO / "deploy" / "orthanc"
ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_commented_json(path: Path) -> dict[str, Any]:
    """Parse a JSON file with whole-line ``//`` comments (as Orthanc accepts)."""
    lines = [
        line for line in path.read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("//")
    ]
    return json.loads("\n".join(lines))


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def echo_ok(port: int, called_ae: str, calling_ae: str = "TESTSCU") -> bool:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0
    finally:
        assoc.release()


def store_files(port: int, paths: list[Path], called_ae: str, calling_ae: str = "TESTSCU"):
    """C-STORE files in their own transfer syntax; returns the statuses."""
    ae = AE(ae_title=calling_ae)
    datasets = [dcmread(p) for p in paths]
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        raise RuntimeError(f"{called_ae} on port {port} refused the association")
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM, wait for the PID to exit (SIGKILL after ``timeout``); return the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


class Orthanc:
    """One Orthanc process with a generated configuration in ``workdir``."""

    AET = "ORTHANC"
    NODE_MODALITY = "MONAI"  # the name route-opt.lua sends to

    def __init__(
        self,
        workdir: Path,
        node_aet: str,
        node_port: int,
        scu_aet: str = "TESTSCU",
        stable_age: int = 2,
    ) -> None:
        self.workdir = Path(workdir)
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.node_aet, self.node_port = node_aet, node_port
        self.scu_aet = scu_aet
        self.stable_age = stable_age
        self.user, self.password = "test", secrets.token_hex(8)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "orthanc.log"

    def config(self) -> dict[str, Any]:
        """The shipped example with this run's overrides."""
        config = load_commented_json(ORTHANC_DIR / "orthanc.json")
        modalities = config["DicomModalities"]
        node = dict(modalities[self.NODE_MODALITY])
        node.update({"AET": self.node_aet, "Host": "127.0.0.1", "Port": self.node_port})
        config.update({
            "Name": "OCT-PACS-test",
            "StorageDirectory": str(self.workdir / "db"),
            "IndexDirectory": str(self.workdir / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.AET,
            "RegisteredUsers": {self.user: self.password},
            "StableAge": self.stable_age,
            "LuaScripts": [str(ORTHANC_DIR / "route-opt.lua")],
            "DicomModalities": {
                self.NODE_MODALITY: node,
                self.scu_aet: {"AET": self.scu_aet, "Host": "127.0.0.1", "Port": free_port(),
                               "AllowEcho": True, "AllowStore": True},
            },
        })
        return config

    def start(self, timeout: float = 30.0) -> Orthanc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(self.config(), indent=2))
        log = open(self.log_path, "wb")  # noqa: SIM115  (owned by the process)
        self.proc = subprocess.Popen(
            [ORTHANC_BIN, str(path)], cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                return self.get("/system")
            except (OSError, urllib.error.URLError):
                return None

        wait_for(up, timeout, 0.1, "Orthanc's REST API")
        return self

    def log_tail(self, n: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data,
                                     method=method)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=10) as resp:
            payload = resp.read()
        ctype = resp.headers.get("Content-Type", "")
        return json.loads(payload) if "json" in ctype else payload

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self._request("POST", path, body)

    def find_series(self, study_uid: str, modality: str | None = None) -> list[dict[str, Any]]:
        """Series of a study (``/tools/find``, expanded), optionally of one modality."""
        query: dict[str, str] = {"StudyInstanceUID": study_uid}
        if modality:
            query["Modality"] = modality
        return self.post("/tools/find", {"Level": "Series", "Query": query, "Expand": True})

    def instance_file(self, instance_id: str) -> bytes:
        return self.get(f"/instances/{instance_id}/file")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait until the PID is gone (a restart before that corrupts the index)."""
        if self.proc is None:
            return None
        code = stop_process(self.proc, timeout)
        self.proc = None
        return code


class NodeProcess:
    """``python -m monai_app.node --config <workdir>/node.yaml`` as a subprocess."""

    AET = "MONAI-OCT"

    def __init__(self, workdir: Path, port: int | None = None, **settings: Any) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.settings = settings
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "node.log"
        self.config_path = self.workdir / "node.yaml"

    @property
    def spool(self) -> Path:
        return self.workdir / "spool"

    @property
    def audit_path(self) -> Path:
        return self.spool / "audit.jsonl"

    def write_config(self, dest_port: int) -> Path:
        config = {
            "ae_title": self.AET,
            "port": self.port,
            "allowed_callers": [{"ae_title": Orthanc.AET, "host": "127.0.0.1"}, "TESTSCU"],
            "spool_dir": "spool",
            "quiet_period_s": 1.0,
            "min_free_mb": 50,
            "destination": {"ae_title": Orthanc.AET, "host": "127.0.0.1", "port": dest_port,
                            "backoff_initial_s": 0.5, "backoff_max_s": 5.0},
        }
        for key, value in self.settings.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return self.config_path

    def start(self, dest_port: int) -> NodeProcess:
        self.write_config(dest_port)
        log = open(self.log_path, "wb")  # noqa: SIM115
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monai_app.node", "--config", str(self.config_path)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until the node answers C-ECHO (it listens only once the pipeline is imported)."""

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited ({self.proc.returncode}): {self.log_tail()}")
            return echo_ok(self.port, self.AET)

        wait_for(ready, timeout, 0.5, "the node to answer C-ECHO")

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        code = stop_process(self.proc, timeout)
        self.proc = None
        return code
