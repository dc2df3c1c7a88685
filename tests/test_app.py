"""Tests for monai_app.app and the command line (monai_app.__main__)."""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from monai_app.app import OCTGlaucomaApp
from monai_app.sample_study import write_sample_study
from tests.app_support import make_bundle

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    bundle = make_bundle(root / "bundle")
    write_sample_study(root / "in", shape=(16, 32, 24))
    return root, bundle


def _cli(*args: str, stack_kib: int | None = 8192) -> subprocess.CompletedProcess:
    """Run ``python -m monai_app`` with an 8 MiB soft stack limit (what holoscan warns about)."""

    def limit_stack() -> None:
        if stack_kib is not None:
            _, hard = resource.getrlimit(resource.RLIMIT_STACK)
            resource.setrlimit(resource.RLIMIT_STACK, (stack_kib * 1024, hard))

    env = {k: v for k, v in os.environ.items() if not k.startswith("HOLOSCAN_")}
    return subprocess.run(
        [sys.executable, "-m", "monai_app", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit_stack,
    )


def test_cli_processes_the_sample_study(setup):
    root, bundle = setup
    out = root / "cli_out"
    run = _cli("-i", str(root / "in"), "-o", str(out), "-m", str(bundle))
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert "stack size" not in run.stderr.lower()  # raised and re-executed
    assert "OD_glaucoma.dcm  R" in run.stdout and "OS_normal.dcm    L" in run.stdout
    assert "[1/2] OD_glaucoma.dcm" in run.stderr  # logs name the volume and the step times
    assert "inference" in run.stderr
    entries = json.loads((out / "results.json").read_text())["results"]
    assert [e["laterality"] for e in entries] == ["R", "L"]
    for entry in entries:
        assert all((out / rel).is_file() for rel in entry["outputs"].values())


def test_cli_without_oct_exits_nonzero_with_one_line_and_writes_nothing(setup, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "notes.txt").write_text("no DICOM here")
    out = tmp_path / "out"
    run = _cli("-i", str(folder), "-o", str(out), "-m", str(setup[1]))
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no OCT volume" in errors[0]
    assert "Traceback" not in run.stderr
    assert run.stdout == ""
    assert not out.exists()


def test_cli_with_a_missing_model_exits_nonzero(setup, tmp_path):
    run = _cli(
        "-i", str(setup[0] / "in"), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "no-model")
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith("error: no model bundle")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def restore_logging():
    """The SDK's argument parsing configures the root logger; give the other tests theirs back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_app_takes_the_sdk_flags(setup, tmp_path, restore_logging):
    root, bundle = setup
    out = tmp_path / "out"
    app = OCTGlaucomaApp(
        [sys.executable, "monai_app", "-i", str(root / "in"), "-o", str(out), "-m", str(bundle)]
    )
    app.run()
    assert [e["source_file"] for e in app.results] == ["OD_glaucoma.dcm", "OS_normal.dcm"]
    assert (out / "results.json").is_file()
