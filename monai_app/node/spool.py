"""The spool directory: received instances and job folders, written so a crash never leaves a
partial file where a complete one is expected.

Layout (all private to the node's user, directories 0700, files 0600)::

    <spool>/queue.sqlite3                     the job queue (see ``queue.py``)
    <spool>/incoming/<series>/<sop>.dcm       instances of series still receiving
    <spool>/jobs/<job>/input/<sop>.dcm        a complete series, sealed into a job
    <spool>/jobs/<job>/output.partial/        pipeline output while it runs
    <spool>/jobs/<job>/output/                pipeline output once complete (what is sent)

Every file is written under a temporary name in its final directory, fsync'ed, then renamed
(POSIX ``rename`` is atomic within one file system), and the directory is fsync'ed so the rename
itself survives a power cut.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path

#: Suffix of temporary files; anything with it is garbage after a crash.
PARTIAL_SUFFIX = ".partial"
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")


def safe_name(uid: str) -> str:
    """A file-system-safe name for a DICOM UID.

    A conformant UID (PS3.5 9.1: digits and dots, at most 64 characters) is used as it is; anything
    else (a sender could put ``../`` in a UID) is replaced by a hash, so a peer can never choose a
    path outside the spool.
    """
    uid = uid.strip().rstrip("\x00")
    if 0 < len(uid) <= 64 and _UID_RE.fullmatch(uid):
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "replace")).hexdigest()[:40]


def _fsync(path: Path | str, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory entry change (create, rename, unlink) to disk."""
    _fsync(path, os.O_RDONLY | os.O_DIRECTORY)


def atomic_write(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` atomically: temp name in the same directory, fsync, rename.

    Raises:
        OSError: the write failed (e.g. ``ENOSPC``); the temporary file is removed and ``path`` is
            untouched.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _mkdir_private(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


class Spool:
    """File operations on the spool directory (see the module docstring for the layout)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        _mkdir_private(self.root)
        # mkdir's mode is filtered by the umask and ignored for an existing directory: set it.
        os.chmod(self.root, 0o700)
        self.incoming = _mkdir_private(self.root / "incoming")
        self.jobs = _mkdir_private(self.root / "jobs")

    @property
    def database(self) -> Path:
        """Path of the SQLite job queue."""
        return self.root / "queue.sqlite3"

    def series_dir(self, series_key: str) -> Path:
        """Incoming folder of one series (created on demand)."""
        return _mkdir_private(self.incoming / series_key)

    def write_instance(self, series_key: str, sop_instance_uid: str, data: bytes) -> Path:
        """Store one received instance (DICOM file format bytes) atomically; return its path."""
        path = self.series_dir(series_key) / f"{safe_name(sop_instance_uid)}.dcm"
        atomic_write(path, data)
        return path

    def incoming_series(self) -> list[str]:
        """Keys of the series with instances waiting in ``incoming/``."""
        return sorted(p.name for p in self.incoming.iterdir() if p.is_dir())

    def job_dir(self, job_id: str) -> Path:
        return self.jobs / job_id

    def input_dir(self, job_id: str) -> Path:
        return self.jobs / job_id / "input"

    def output_dir(self, job_id: str) -> Path:
        return self.jobs / job_id / "output"

    def partial_output_dir(self, job_id: str) -> Path:
        return self.jobs / job_id / f"output{PARTIAL_SUFFIX}"

    def seal(self, series_key: str, job_id: str) -> Path:
        """Move a complete series from ``incoming/`` into a new job folder (one atomic rename)."""
        job = _mkdir_private(self.job_dir(job_id))
        target = job / "input"
        os.rename(self.incoming / series_key, target)
        fsync_dir(self.incoming)
        fsync_dir(job)
        return target

    def new_output_dir(self, job_id: str) -> Path:
        """An empty ``output.partial`` folder for a (re)run of the pipeline."""
        partial = self.partial_output_dir(job_id)
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(self.output_dir(job_id), ignore_errors=True)
        return _mkdir_private(partial)

    def commit_output(self, job_id: str) -> Path:
        """Publish a finished pipeline output: rename ``output.partial`` to ``output``.

        The pipeline writes its files without fsync, so they are flushed first: otherwise a
        power cut could persist the rename but not the data, leaving truncated results in
        ``output`` that the sender would deliver.
        """
        partial = self.partial_output_dir(job_id)
        for folder, _, names in os.walk(partial):
            for name in names:
                _fsync(os.path.join(folder, name))
            fsync_dir(Path(folder))
        final = self.output_dir(job_id)
        os.rename(partial, final)
        fsync_dir(self.job_dir(job_id))
        return final

    def job_ids_on_disk(self) -> list[str]:
        return sorted(p.name for p in self.jobs.iterdir() if p.is_dir())

    def remove_job(self, job_id: str) -> None:
        """Delete a job folder (received instances and results)."""
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def remove_incoming(self, series_key: str) -> None:
        shutil.rmtree(self.incoming / series_key, ignore_errors=True)

    def clean_partials(self) -> int:
        """Delete temporary files and partial outputs left by a crash; return how many."""
        count = 0
        for path in list(self.incoming.rglob(f"*{PARTIAL_SUFFIX}")):
            path.unlink(missing_ok=True)
            count += 1
        for job in self.job_ids_on_disk():
            partial = self.partial_output_dir(job)
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
                count += 1
        return count

    def free_bytes(self) -> int:
        """Free space available to this user in the spool's file system."""
        return shutil.disk_usage(self.root).free
