"""Persistent job queue in SQLite (one file in the spool directory).

A job is one complete series. States::

    pending ──claim──► processing ──ok──► processed ──all results sent──► delivered
       ▲                   │                   │
       └──retry (delay)────┤                   └──send failed: retry with backoff
                           └──attempts used up──► failed ◄── delivery attempts used up

Every state change is one transaction with ``synchronous=FULL``, so a crash (SIGKILL, power cut)
leaves each job in a state it can resume from: a job found in ``processing`` at start-up was
interrupted and runs again (the interruption counts as an attempt, so a volume that crashes the
process cannot loop forever). ``instances`` remembers every SOP Instance UID with its job, which
is how a volume received twice is recognised; ``deliveries`` records each result file confirmed
by the destination, so a restart while sending resends only the rest.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PENDING = "pending"
PROCESSING = "processing"
PROCESSED = "processed"
DELIVERED = "delivered"
FAILED = "failed"
STATES = (PENDING, PROCESSING, PROCESSED, DELIVERED, FAILED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    study_uid TEXT,
    state TEXT NOT NULL,
    n_instances INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    send_attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    reason TEXT,
    received_first REAL,
    received_last REAL,
    queued_at REAL NOT NULL,
    started_at REAL,
    processed_at REAL,
    delivered_at REAL,
    updated_at REAL NOT NULL,
    processing_s REAL,
    model_version TEXT,
    results TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, not_before);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    series_uid TEXT,
    sop_class_uid TEXT
);
CREATE INDEX IF NOT EXISTS instances_job ON instances (job_id);
CREATE TABLE IF NOT EXISTS deliveries (
    job_id TEXT NOT NULL,
    file TEXT NOT NULL,
    sop_uid TEXT,
    delivered_at REAL NOT NULL,
    PRIMARY KEY (job_id, file)
);
"""


@dataclass(frozen=True)
class Job:
    """One row of the ``jobs`` table."""

    id: str
    series_uid: str
    study_uid: str | None
    state: str
    n_instances: int
    attempts: int
    send_attempts: int
    not_before: float
    reason: str | None
    received_first: float | None
    received_last: float | None
    queued_at: float
    started_at: float | None
    processed_at: float | None
    delivered_at: float | None
    updated_at: float
    processing_s: float | None
    model_version: str | None
    results: str | None

    @property
    def result_entries(self) -> list[dict[str, Any]]:
        """The pipeline's result entries stored with the job (empty before processing)."""
        return json.loads(self.results) if self.results else []


@dataclass(frozen=True)
class InstanceRecord:
    """A received instance that belongs to a job."""

    sop_uid: str
    sop_class_uid: str | None = None


class JobQueue:
    """Thread-safe access to the queue database (one connection, serialised by a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        new = not self.path.exists()
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        if new:
            os.chmod(self.path, 0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE takes the write lock up front)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    # -- creating and reading jobs -------------------------------------------------------------

    def add_job(
        self,
        job_id: str,
        series_uid: str,
        study_uid: str | None,
        instances: list[InstanceRecord],
        received_first: float | None = None,
        received_last: float | None = None,
    ) -> Job:
        """Queue a complete series as a pending job and remember its instances."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, series_uid, study_uid, state, n_instances, received_first,"
                " received_last, queued_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (job_id, series_uid, study_uid, PENDING, len(instances), received_first,
                 received_last, now, now),
            )
            db.executemany(
                "INSERT OR REPLACE INTO instances (sop_uid, job_id, series_uid, sop_class_uid)"
                " VALUES (?,?,?,?)",
                [(i.sop_uid, job_id, series_uid, i.sop_class_uid) for i in instances],
            )
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise KeyError(job_id)
        return Job(**dict(rows[0]))

    def has_job(self, job_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM jobs WHERE id = ?", (job_id,)))

    def jobs(self, states: Iterable[str] | None = None) -> list[Job]:
        """All jobs (optionally only those in ``states``), oldest first."""
        if states is None:
            rows = self._query("SELECT * FROM jobs ORDER BY queued_at")
        else:
            states = list(states)
            marks = ",".join("?" * len(states))
            rows = self._query(
                f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY queued_at", states
            )
        return [Job(**dict(r)) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs per state (every state present, zero if none)."""
        counts = dict.fromkeys(STATES, 0)
        for row in self._query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
            counts[row["state"]] = row["n"]
        return counts

    def duplicate_of(self, sop_uid: str) -> str | None:
        """Job that already holds this SOP instance (failed jobs excepted), or None."""
        rows = self._query(
            "SELECT i.job_id FROM instances i JOIN jobs j ON j.id = i.job_id"
            " WHERE i.sop_uid = ? AND j.state != ?",
            (sop_uid, FAILED),
        )
        return rows[0]["job_id"] if rows else None

    def next_due(self, state: str) -> float | None:
        """Earliest ``not_before`` of the jobs in ``state`` (None if there are none)."""
        rows = self._query("SELECT MIN(not_before) AS t FROM jobs WHERE state = ?", (state,))
        return rows[0]["t"]

    def idle_wait(self, state: str, longest: float = 1.0) -> float:
        """Seconds an idle loop may sleep before a job in ``state`` falls due (at most
        ``longest``, at least 10 ms); new work wakes the loops earlier through their events."""
        due = self.next_due(state)
        if due is None:
            return longest
        return min(longest, max(0.01, due - time.time()))

    # -- processing ----------------------------------------------------------------------------

    def claim_for_processing(self, now: float | None = None) -> Job | None:
        """Move the oldest due pending job to ``processing`` (counting an attempt) and return it."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = ? AND not_before <= ?"
                " ORDER BY queued_at LIMIT 1",
                (PENDING, now),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, started_at = ?,"
                " updated_at = ? WHERE id = ?",
                (PROCESSING, now, now, row["id"]),
            )
        return self.get(row["id"])

    def mark_processed(
        self,
        job_id: str,
        results: list[dict[str, Any]],
        processing_s: float,
        model_version: str | None,
    ) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = ?, processed_at = ?, processing_s = ?, model_version = ?,"
                " results = ?, reason = NULL, not_before = 0, updated_at = ? WHERE id = ?",
                (PROCESSED, now, processing_s, model_version, json.dumps(results, default=str),
                 now, job_id),
            )

    def retry_processing(self, job_id: str, reason: str, delay_s: float) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = ?, reason = ?, not_before = ?, updated_at = ?"
                " WHERE id = ?",
                (PENDING, reason, now + delay_s, now, job_id),
            )

    def release(self, job_id: str, reason: str) -> None:
        """Return a claimed job to ``pending`` without counting the attempt (clean shutdown)."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = ?, attempts = MAX(attempts - 1, 0), reason = ?,"
                " not_before = 0, updated_at = ? WHERE id = ? AND state = ?",
                (PENDING, reason, now, job_id, PROCESSING),
            )

    def fail(self, job_id: str, reason: str) -> None:
        """Give up on a job; it stays in the table (and its files in the spool) with the reason."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = ?, reason = ?, updated_at = ? WHERE id = ?",
                (FAILED, reason, now, job_id),
            )

    # -- delivery ------------------------------------------------------------------------------

    def due_for_delivery(self, now: float | None = None) -> list[Job]:
        now = time.time() if now is None else now
        rows = self._query(
            "SELECT * FROM jobs WHERE state = ? AND not_before <= ? ORDER BY processed_at",
            (PROCESSED, now),
        )
        return [Job(**dict(r)) for r in rows]

    def record_delivery(self, job_id: str, file: str, sop_uid: str | None) -> None:
        """Remember that the destination confirmed one result file."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO deliveries (job_id, file, sop_uid, delivered_at)"
                " VALUES (?,?,?,?)",
                (job_id, file, sop_uid, time.time()),
            )

    def delivered_files(self, job_id: str) -> set[str]:
        rows = self._query("SELECT file FROM deliveries WHERE job_id = ?", (job_id,))
        return {r["file"] for r in rows}

    def delivery_failed(self, job_id: str, reason: str, delay_s: float, max_attempts: int) -> str:
        """Count a failed delivery; schedule a retry or fail the job. Returns the new state."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT send_attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            attempts = row["send_attempts"] + 1
            state = FAILED if attempts >= max_attempts else PROCESSED
            db.execute(
                "UPDATE jobs SET state = ?, send_attempts = ?, reason = ?, not_before = ?,"
                " updated_at = ? WHERE id = ?",
                (state, attempts, reason, now + delay_s, now, job_id),
            )
        return state

    def mark_delivered(self, job_id: str) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = ?, delivered_at = ?, reason = NULL, updated_at = ?"
                " WHERE id = ?",
                (DELIVERED, now, now, job_id),
            )

    # -- recovery and operator actions ---------------------------------------------------------

    def recover(self, max_attempts: int) -> tuple[list[str], list[str]]:
        """After a restart: return interrupted ``processing`` jobs to ``pending`` (or fail them
        when their attempts are used up). Returns (requeued ids, failed ids)."""
        requeued, failed = [], []
        now = time.time()
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, attempts FROM jobs WHERE state = ?", (PROCESSING,)
            ).fetchall()
            for row in rows:
                if row["attempts"] >= max_attempts:
                    db.execute(
                        "UPDATE jobs SET state = ?, reason = ?, updated_at = ? WHERE id = ?",
                        (FAILED, f"interrupted during processing {row['attempts']} times",
                         now, row["id"]),
                    )
                    failed.append(row["id"])
                else:
                    db.execute(
                        "UPDATE jobs SET state = ?, reason = ?, not_before = 0, updated_at = ?"
                        " WHERE id = ?",
                        (PENDING, "interrupted during processing (node restart)", now,
                         row["id"]),
                    )
                    requeued.append(row["id"])
        return requeued, failed

    def requeue(self, job_id: str, state: str) -> None:
        """Operator retry of a failed job: reset its counters and put it in ``state``
        (``pending`` to process again, ``processed`` to resend existing results)."""
        if state not in (PENDING, PROCESSED):
            raise ValueError(f"cannot requeue into {state!r}")
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = ?, attempts = 0, send_attempts = 0, not_before = 0,"
                " reason = NULL, updated_at = ? WHERE id = ? AND state = ?",
                (state, now, job_id, FAILED),
            )
            if state == PENDING:  # new results will replace the old: forget what was sent
                db.execute("DELETE FROM deliveries WHERE job_id = ?", (job_id,))
