"""The sender: C-STORE SCU delivering each job's result files to the destination.

Every confirmed file is recorded in the queue before the next one is sent, so after a crash only
unconfirmed files are sent again. A file whose response was lost in a crash may reach the PACS
twice, but with the same SOP Instance UID, which a PACS stores once: delivery is effectively
exactly once. Failures (destination down, association rejected, a failure status) are retried
with exponential backoff; after ``destination.max_attempts`` the job is failed with its reason and
its files stay in the spool for an operator ``retry``.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from monai_app.node.audit import AuditLog
from monai_app.node.config import NodeConfig
from monai_app.node.jobqueue import FAILED, PROCESSED, Job, JobQueue
from monai_app.node.sockets import NO_DELAY_HANDLER
from monai_app.node.spool import Spool
from monai_app.node.tls import client_context

LOG = logging.getLogger("monai_app.node.sender")

#: C-STORE statuses meaning "stored" (PS3.4 B.2.3): success and the three warnings.
STORED_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}


class SendError(RuntimeError):
    """A delivery attempt failed; the message says why (no patient data)."""


def result_files(output_dir: Path) -> list[Path]:
    """DICOM result files of a job (``*.dcm`` anywhere under its output), in a stable order."""
    return sorted(p for p in output_dir.rglob("*.dcm") if p.is_file())


class Sender:
    """Delivers processed jobs, retrying with backoff."""

    def __init__(self, config: NodeConfig, queue: JobQueue, spool: Spool, audit: AuditLog):
        self.config = config
        self.queue = queue
        self.spool = spool
        self.audit = audit
        self.wake = threading.Event()

    def run(self, stop: threading.Event) -> None:
        """Deliver due jobs until ``stop`` is set."""
        while not stop.is_set():
            self.run_once(stop)
            self.wake.wait(self.queue.idle_wait(PROCESSED))
            self.wake.clear()

    def run_once(self, stop: threading.Event | None = None) -> int:
        """Try every due job once; returns how many were delivered."""
        delivered = 0
        for job in self.queue.due_for_delivery():
            if stop is not None and stop.is_set():
                break
            delivered += self.deliver(job)
        return delivered

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based): initial * 2^(attempt-1), capped."""
        dest = self.config.destination
        return min(dest.backoff_max_s, dest.backoff_initial_s * 2 ** (attempt - 1))

    def deliver(self, job: Job) -> bool:
        """Send the job's results that the destination has not confirmed yet."""
        output = self.spool.output_dir(job.id)
        if not output.is_dir():
            reason = "result folder missing from the spool"
            self.queue.fail(job.id, reason)
            self.audit.write("failed", job_id=job.id, stage="delivery", reason=reason)
            LOG.error("job %s: %s", job.id, reason)
            return False
        files = result_files(output)
        if not files:  # never report a series as answered when nothing was sent
            reason = "the pipeline wrote no result file"
            self.queue.fail(job.id, reason)
            self.audit.write("failed", job_id=job.id, stage="delivery", reason=reason)
            LOG.error("job %s: %s", job.id, reason)
            return False
        done = self.queue.delivered_files(job.id)
        todo = [f for f in files if f.relative_to(output).as_posix() not in done]
        start = time.perf_counter()
        try:
            if todo:
                self._send(job, output, todo)
        except SendError as exc:
            self._delivery_failed(job, str(exc))
            return False
        except Exception as exc:  # noqa: BLE001  (an unreadable result must not block the queue)
            self._delivery_failed(job, f"{type(exc).__name__}: {exc}")
            return False
        send_s = time.perf_counter() - start
        self.queue.mark_delivered(job.id)
        delivered = self.queue.get(job.id)
        self.spool.remove_job(job.id)
        latency = (
            None if job.received_last is None else delivered.delivered_at - job.received_last
        )
        self.audit.write(
            "delivered",
            job_id=job.id,
            series_instance_uid=job.series_uid,
            study_instance_uid=job.study_uid,
            destination=self.config.destination.ae_title,
            files=len(files),
            sent_now=len(todo),
            send_s=round(send_s, 6),
            processing_s=job.processing_s,
            model_version=job.model_version,
            latency_s=None if latency is None else round(latency, 6),
            send_attempts=job.send_attempts + 1,
        )
        LOG.info("job %s: %d result file(s) delivered to %s in %.2f s", job.id, len(files),
                 self.config.destination.ae_title, send_s)
        return True

    def _delivery_failed(self, job: Job, reason: str) -> None:
        attempt = job.send_attempts + 1
        delay = self.backoff(attempt)
        state = self.queue.delivery_failed(
            job.id, reason, delay, self.config.destination.max_attempts
        )
        if state == FAILED:
            LOG.error("job %s: delivery failed %d times, giving up: %s", job.id, attempt, reason)
            self.audit.write("failed", job_id=job.id, series_instance_uid=job.series_uid,
                             stage="delivery", attempts=attempt, reason=reason)
        else:
            LOG.warning("job %s: delivery attempt %d failed (%s); retry in %.1f s", job.id,
                        attempt, reason, delay)
            self.audit.write("send_failed", job_id=job.id, series_instance_uid=job.series_uid,
                             attempt=attempt, reason=reason, delay_s=delay)

    def _association(self, files: list[Path]):
        """Open an association proposing each file's SOP class in its own transfer syntax
        (results are written uncompressed, so the fallbacks never need transcoding)."""
        dest = self.config.destination
        ae = AE(ae_title=self.config.sending_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = dest.timeout_s
        ae.connection_timeout = min(dest.timeout_s, 30.0)
        syntaxes: dict[str, list[str]] = {}
        for path in files:
            meta = read_file_meta_info(path)
            wanted = syntaxes.setdefault(str(meta.MediaStorageSOPClassUID), [])
            for ts in (str(meta.TransferSyntaxUID), ExplicitVRLittleEndian,
                       ImplicitVRLittleEndian):
                if ts not in wanted:
                    wanted.append(ts)
        for sop_class, transfer_syntaxes in syntaxes.items():
            ae.add_requested_context(sop_class, transfer_syntaxes)
        ctx = client_context(dest.tls)
        tls_args = None if ctx is None else (ctx, dest.tls.server_hostname or dest.host)
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args,
                             evt_handlers=[NO_DELAY_HANDLER])
        if not assoc.is_established:
            what = "rejected" if assoc.is_rejected else "not established (no connection?)"
            raise SendError(
                f"association with {dest.ae_title} at {dest.host}:{dest.port} {what}"
            )
        return assoc

    def _send(self, job: Job, output: Path, files: list[Path]) -> None:
        try:
            assoc = self._association(files)
        except (OSError, ValueError) as exc:
            raise SendError(f"cannot prepare association: {type(exc).__name__}: {exc}") from exc
        try:
            for path in files:
                if not assoc.is_established:
                    raise SendError("association ended before all results were sent")
                meta = read_file_meta_info(path)
                try:
                    status = assoc.send_c_store(path)
                except (ValueError, RuntimeError, OSError) as exc:
                    # e.g. the destination accepted no presentation context for this SOP class
                    raise SendError(f"C-STORE of {path.name} not possible: {exc}") from exc
                code = getattr(status, "Status", None)
                if code not in STORED_STATUSES:
                    shown = "no response" if code is None else f"status 0x{code:04X}"
                    raise SendError(f"C-STORE of {path.name} to {self.config.destination.ae_title}"
                                    f" failed: {shown}")
                self.queue.record_delivery(
                    job.id, path.relative_to(output).as_posix(),
                    str(meta.MediaStorageSOPInstanceUID),
                )
        finally:
            if assoc.is_established:
                assoc.release()
