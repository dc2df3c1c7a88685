"""Spool directory: atomic writes, permissions, safe names, sealing and crash clean-up."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from monai_app.node.spool import PARTIAL_SUFFIX, Spool, atomic_write, safe_name

REPO = Path(__file__).resolve().parents[1]


def test_spool_is_private(tmp_path):
    old = os.umask(0o022)
    try:
        spool = Spool(tmp_path / "spool")
    finally:
        os.umask(old)
    for path in (spool.root, spool.incoming, spool.jobs):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    written = spool.write_instance("1.2.3", "1.2.3.4", b"DICM")
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    # An existing, too-open spool directory is tightened.
    os.chmod(spool.root, 0o755)
    Spool(spool.root)
    assert stat.S_IMODE(spool.root.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("uid", "kept"),
    [("1.2.840.10008.5.1.4.1.1.77.1.5.4", True), ("1.2.3\x00", True), ("../../etc/passwd", False),
     ("1.2/3", False), ("", False), ("9" * 65, False)],
)
def test_safe_name_never_escapes_the_spool(uid, kept):
    name = safe_name(uid)
    assert "/" not in name and ".." not in name and name
    assert (name == uid.rstrip("\x00")) is kept


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a.dcm"
    atomic_write(target, b"old")
    atomic_write(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert [p.name for p in tmp_path.iterdir()] == ["a.dcm"]


def test_atomic_write_failure_leaves_no_partial_file(tmp_path):
    # A real EFBIG from the kernel: file size limit below the data size (in a child process, so
    # the limit does not touch the test runner).
    script = textwrap.dedent(f"""
        import errno, resource, signal, sys
        from pathlib import Path
        from monai_app.node.spool import atomic_write
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
        try:
            atomic_write(Path({str(tmp_path)!r}) / "big.dcm", b"x" * 100000)
        except OSError as exc:
            sys.exit(0 if exc.errno == errno.EFBIG else 3)
        sys.exit(4)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    assert list(tmp_path.iterdir()) == []


def test_seal_moves_series_into_job_and_output_commit(tmp_path):
    spool = Spool(tmp_path)
    spool.write_instance("1.2.3", "1.2.3.1", b"a")
    spool.write_instance("1.2.3", "1.2.3.2", b"b")
    assert spool.incoming_series() == ["1.2.3"]
    spool.seal("1.2.3", "job1")
    assert spool.incoming_series() == []
    assert sorted(p.name for p in spool.input_dir("job1").iterdir()) == ["1.2.3.1.dcm",
                                                                       "1.2.3.2.dcm"]
    out = spool.new_output_dir("job1")
    (out / "r.dcm").write_bytes(b"r")
    assert not spool.output_dir("job1").exists()
    spool.commit_output("job1")
    assert (spool.output_dir("job1") / "r.dcm").read_bytes() == b"r"
    # A rerun starts from an empty partial folder and drops the old output.
    spool.new_output_dir("job1")
    assert not spool.output_dir("job1").exists()
    spool.remove_job("job1")
    assert spool.job_ids_on_disk() == []


def test_output_files_are_flushed_before_they_are_published(tmp_path, monkeypatch):
    # A power cut after the rename must not leave truncated results for the sender.
    spool = Spool(tmp_path)
    out = spool.new_output_dir("job1")
    (out / "sub").mkdir()
    (out / "a.dcm").write_bytes(b"a")
    (out / "sub" / "b.pdf").write_bytes(b"b")
    calls = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst):
        calls.append(("rename", str(src)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    spool.commit_output("job1")
    rename_at = calls.index(("rename", str(out)))
    flushed = {path for op, path in calls[:rename_at] if op == "fsync"}
    assert {str(out / "a.dcm"), str(out / "sub" / "b.pdf"), str(out / "sub")} <= flushed


def test_clean_partials_removes_crash_leftovers(tmp_path):
    spool = Spool(tmp_path)
    spool.write_instance("1.2", "1.2.1", b"complete")
    leftover = spool.incoming / "1.2" / f".1.2.2.dcm.abc{PARTIAL_SUFFIX}"
    leftover.write_bytes(b"half")
    (spool.jobs / "j").mkdir()
    spool.new_output_dir("j")
    assert spool.clean_partials() == 2
    assert not leftover.exists() and not spool.partial_output_dir("j").exists()
    assert (spool.incoming / "1.2" / "1.2.1.dcm").read_bytes() == b"complete"
