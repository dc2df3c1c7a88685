"""The DICOM node: receiver, series sealer, worker and sender around one spool and one queue.

Threads: pynetdicom's server threads (one per association) write instances into the spool; the
sealer turns quiet series into queued jobs; the worker (the main thread under
``python -m monai_app.node``) runs the pipeline; the sender delivers results. They share only the
spool and the SQLite queue, so any of them can be interrupted and the state on disk is enough to
carry on (see :meth:`DicomNode.recover`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

from pydicom import dcmread

from monai_app.node.audit import AuditLog
from monai_app.node.config import NodeConfig
from monai_app.node.jobqueue import DELIVERED, FAILED, PENDING, PROCESSED, InstanceRecord, JobQueue
from monai_app.node.receiver import Receiver, SeriesState, SeriesTracker
from monai_app.node.sender import Sender
from monai_app.node.spool import Spool
from monai_app.node.worker import (
    ProcessFn,
    Worker,
    import_process_fn,
    pipeline_process_fn,
    warm_up,
)

LOG = logging.getLogger("monai_app.node")

_HEADER_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]


def new_job_id() -> str:
    """Sortable, unique job id: UTC time plus random suffix."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:12]


class DicomNode:
    """One node instance. ``start()`` then ``run_worker()`` (or ``start(worker_thread=True)``)."""

    def __init__(self, config: NodeConfig, process: ProcessFn | None = None) -> None:
        self.config = config
        self.spool = Spool(config.spool_dir)
        self.queue = JobQueue(self.spool.database)
        self.audit = AuditLog(config.audit_path)
        self.tracker = SeriesTracker(config.quiet_period_s)
        self.receiver = Receiver(config, self.spool, self.tracker, self.queue, self.audit)
        self.sender = Sender(config, self.queue, self.spool, self.audit)
        self._process = process
        self.worker: Worker | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # Sealed job folders not queued yet (the queue failed, e.g. locked): retried every tick.
        self._unqueued: dict[str, tuple[float | None, float | None]] = {}

    # -- recovery and sealing ------------------------------------------------------------------

    def recover(self) -> None:
        """Bring the spool and queue to a consistent state after a (possibly unclean) stop."""
        removed = self.spool.clean_partials()
        requeued, failed = self.queue.recover(self.config.worker.max_attempts)
        adopted = 0
        for job_id in self.spool.job_ids_on_disk():
            if not self.queue.has_job(job_id):
                # Crash between sealing a series and queueing it: queue it now.
                adopted += self._register(job_id, None, None) is not None
                continue
            job = self.queue.get(job_id)
            if job.state == DELIVERED:
                self.spool.remove_job(job_id)  # crash between delivery and clean-up
            elif job.state == PROCESSED and not self.spool.output_dir(job_id).is_dir():
                self.queue.fail(job_id, "results missing from the spool after restart")
        for key in self.spool.incoming_series():
            self.tracker.touch(key)
        if removed or requeued or failed or adopted:
            LOG.info(
                "recovered: %d partial file(s) removed, %d interrupted job(s) requeued, %d failed,"
                " %d orphan job(s) queued", removed, len(requeued), len(failed), adopted,
            )
        for job_id in failed:
            self.audit.write("failed", job_id=job_id, stage="processing",
                             reason="interrupted too many times")

    def seal_complete(self) -> list[str]:
        """Queue every series whose quiet period has passed; returns the new job ids."""
        sealed: list[tuple[str, SeriesState]] = []

        def seal(key: str, state: SeriesState) -> None:
            job_id = new_job_id()
            if not state.stored:
                self.spool.remove_incoming(key)  # every write failed: nothing to process
                return
            try:
                self.spool.seal(key, job_id)
            except FileNotFoundError:
                return
            sealed.append((job_id, state))

        self.tracker.seal_due(seal)
        for job_id, state in sealed:
            self._unqueued[job_id] = (state.first_wall, state.last_wall)
        jobs = []
        for job_id, (first, last) in list(self._unqueued.items()):
            try:
                queued = self._register(job_id, first, last)
            except Exception:  # noqa: BLE001  (kept in _unqueued: the next tick tries again)
                LOG.exception("job %s: sealed but not queued yet; retrying", job_id)
                continue
            del self._unqueued[job_id]
            if queued is not None:
                jobs.append(job_id)
        if jobs and self.worker is not None:
            self.worker.wake.set()
        return jobs

    def _register(self, job_id: str, first: float | None, last: float | None) -> str | None:
        """Queue a sealed job folder: read the headers, drop duplicates, insert the job."""
        records: list[InstanceRecord] = []
        series_uid = study_uid = None
        for path in sorted(self.spool.input_dir(job_id).glob("*.dcm")):
            try:
                ds = dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
                sop_uid = str(ds.SOPInstanceUID)
            except Exception as exc:  # noqa: BLE001  (unreadable file: the pipeline reports it)
                LOG.warning("job %s: header of %s unreadable (%s)", job_id, path.name,
                            type(exc).__name__)
                records.append(InstanceRecord(path.stem))
                continue
            duplicate = self.queue.duplicate_of(sop_uid)
            if duplicate is not None:
                path.unlink()
                self.audit.write("duplicate", sop_instance_uid=sop_uid, job_id=duplicate)
                continue
            records.append(InstanceRecord(sop_uid, str(ds.get("SOPClassUID", "")) or None))
            series_uid = series_uid or str(ds.get("SeriesInstanceUID", "")) or None
            study_uid = study_uid or str(ds.get("StudyInstanceUID", "")) or None
        if not records:
            self.spool.remove_job(job_id)
            return None
        job = self.queue.add_job(job_id, series_uid or "", study_uid, records, first, last)
        self.audit.write("queued", job_id=job_id, series_instance_uid=job.series_uid,
                         study_instance_uid=study_uid, instances=len(records),
                         first_received=first, last_received=last)
        LOG.info("job %s: series %s complete (%d instance(s)), queued", job_id, job.series_uid,
                 len(records))
        return job_id

    # -- life cycle ----------------------------------------------------------------------------

    def _loop(self, name: str, step, interval: float) -> threading.Thread:
        def run() -> None:
            while not self._stop.is_set():
                try:
                    step()
                except Exception:  # noqa: BLE001  (keep the node alive; the next tick retries)
                    LOG.exception("%s: unexpected error", name)
                self._stop.wait(interval)

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread

    def start(self, worker_thread: bool = False) -> None:
        """Recover, load the pipeline, then start receiving, sealing and sending.

        With ``worker_thread`` the worker runs in a background thread too (tests); otherwise call
        :meth:`run_worker` from the main thread.
        """
        process = self._process
        if process is None:
            spec = self.config.worker.process_function
            if spec is not None:
                process = import_process_fn(spec)
            else:
                process = pipeline_process_fn(self.config.worker.model_path)
            if self.config.worker.warmup:
                seconds = warm_up(process, self.spool.root / "warmup")
                LOG.info("pipeline warmed up in %.1f s", seconds)
        self.worker = Worker(self.config, self.queue, self.spool, self.audit, process,
                             on_processed=self.sender.wake.set)
        self.recover()
        self.receiver.start()
        tick = min(0.25, self.config.quiet_period_s / 4)
        self._threads.append(self._loop("sealer", self.seal_complete, tick))
        sender = threading.Thread(target=self._run_sender, name="sender", daemon=True)
        sender.start()
        self._threads.append(sender)
        if worker_thread:
            thread = threading.Thread(target=self.run_worker, name="worker", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run_sender(self) -> None:
        while not self._stop.is_set():
            try:
                self.sender.run(self._stop)
            except Exception:  # noqa: BLE001
                LOG.exception("sender: unexpected error")
                self._stop.wait(1.0)

    def run_worker(self) -> None:
        """Run the worker loop until :meth:`request_stop` (blocking)."""
        assert self.worker is not None, "start() first"
        while not self._stop.is_set():
            try:
                self.worker.run(self._stop)
            except Exception:  # noqa: BLE001  (e.g. the database briefly locked)
                LOG.exception("worker: unexpected error")
                self._stop.wait(1.0)

    def request_stop(self) -> None:
        """Ask every loop to finish (safe from a signal handler)."""
        self._stop.set()
        if self.worker is not None:
            self.worker.wake.set()
        self.sender.wake.set()

    def begin_stop(self) -> None:
        """On SIGTERM: ask every loop to finish and refuse new associations at once.

        Associations already open go on until :meth:`stop`; the current job finishes.
        """
        self.request_stop()
        self.receiver.stop_listening()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop receiving, let the current job and delivery finish, close the queue."""
        self.receiver.stop()
        self.request_stop()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        self.queue.close()
        self.audit.close()
        LOG.info("stopped")

    # -- operator helpers ----------------------------------------------------------------------

    def is_idle(self) -> bool:
        """No series receiving and no job waiting to be processed or delivered."""
        counts = self.queue.counts()
        busy = counts[PENDING] + counts["processing"] + counts[PROCESSED]
        return self.tracker.pending() == 0 and busy == 0

    def wait_idle(self, timeout: float) -> bool:
        """Block until :meth:`is_idle` (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_idle():
                return True
            time.sleep(0.05)
        return self.is_idle()


def requeue_failed(config: NodeConfig, job_ids: list[str] | None = None) -> list[str]:
    """Operator retry: put failed jobs back (resend if results exist, else reprocess)."""
    spool = Spool(config.spool_dir)
    queue = JobQueue(spool.database)
    try:
        retried = []
        for job in queue.jobs([FAILED]):
            if job_ids and job.id not in job_ids:
                continue
            if not spool.input_dir(job.id).is_dir() and not spool.output_dir(job.id).is_dir():
                continue
            state = PROCESSED if spool.output_dir(job.id).is_dir() else PENDING
            queue.requeue(job.id, state)
            retried.append(job.id)
        return retried
    finally:
        queue.close()


def job_table(config: NodeConfig) -> dict:
    """Queue summary for ``status``: counts per state and every job without patient data."""
    spool_db = Path(config.spool_dir) / "queue.sqlite3"
    if not spool_db.exists():
        return {"counts": {}, "jobs": []}
    queue = JobQueue(spool_db)
    try:
        jobs = [
            {
                "id": j.id, "state": j.state, "series_instance_uid": j.series_uid,
                "study_instance_uid": j.study_uid, "instances": j.n_instances,
                "attempts": j.attempts, "send_attempts": j.send_attempts, "reason": j.reason,
                "processing_s": j.processing_s, "model_version": j.model_version,
            }
            for j in queue.jobs()
        ]
        return {"counts": queue.counts(), "jobs": jobs}
    finally:
        queue.close()
