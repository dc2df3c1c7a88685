"""``python -m monai_app.node``: configuration errors, ``status`` and ``retry``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from monai_app.node.jobqueue import FAILED, PENDING, InstanceRecord, JobQueue
from monai_app.node.spool import Spool

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monai_app.node", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_configuration_error_is_one_line_and_exit_2(tmp_path):
    config = tmp_path / "node.yaml"
    config.write_text("prot: 104\n")
    run = _cli("--config", str(config))
    assert run.returncode == 2
    assert run.stderr.strip().startswith("configuration error: unknown key(s) prot")
    assert "Traceback" not in run.stderr


def test_status_and_retry(tmp_path):
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"spool_dir": "spool"}))
    spool = Spool(tmp_path / "spool")
    queue = JobQueue(spool.database)
    queue.add_job("j1", "1.2.3", "1.2", [InstanceRecord("1.2.3.4")])
    queue.claim_for_processing()
    queue.fail("j1", "RuntimeError: boom")
    queue.close()
    spool.input_dir("j1").mkdir(parents=True)  # the input is still in the spool

    status = json.loads(_cli("--config", str(config), "status").stdout)
    assert status["counts"][FAILED] == 1
    (job,) = status["jobs"]
    assert job["id"] == "j1" and job["reason"] == "RuntimeError: boom"

    retried = json.loads(_cli("--config", str(config), "retry").stdout)
    assert retried == {"requeued": ["j1"]}
    status = json.loads(_cli("--config", str(config), "status").stdout)
    assert status["jobs"][0]["state"] == PENDING and status["jobs"][0]["attempts"] == 0


def test_unknown_processing_function_fails_start_in_one_line(tmp_path):
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({
        "spool_dir": "spool", "port": 0,
        "worker": {"process_function": "no_such_module:process", "warmup": False},
    }))
    run = _cli("--config", str(config))
    assert run.returncode == 1
    assert "node failed to start: ModuleNotFoundError" in run.stderr
    assert "Traceback" not in run.stderr
