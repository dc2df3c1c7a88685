"""Audit log: one JSON object per line, appended and flushed per event.

Events: ``received`` (one per stored instance), ``duplicate``, ``ignored``, ``rejected``
(association refused), ``queued`` (series complete), ``started``, ``finished``, ``failed``,
``retry``, ``interrupted`` (shutdown during a run; requeued), ``send_failed``,
``delivered``. Every record carries ``ts`` (UTC ISO 8601) and ``t``
(Unix seconds, for latency arithmetic). Records carry UIDs, AE titles, counts, durations and
model versions only: never patient names or IDs, which is why callers pass explicit fields rather
than datasets.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class AuditLog:
    """Thread-safe JSON-lines writer (file created 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one event; returns the record written."""
        now = time.time()
        record = {
            "ts": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
            "t": round(now, 6),
            "event": event,
            **fields,
        }
        line = json.dumps(record, default=str, separators=(",", ":"))
        with self._lock:
            if not self._file.closed:
                self._file.write(line + "\n")
                self._file.flush()
        return record

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()


def read_audit(path: Path) -> list[dict[str, Any]]:
    """All records of an audit log (for tests, benchmarks and reports)."""
    if not Path(path).exists():
        return []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]
