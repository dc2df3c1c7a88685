"""Storage SCP (PS3.4 Annex B) and Verification SCP (Annex A) of the node, with pynetdicom.

Each received instance is written to the spool atomically *before* the C-STORE response, so
success (0x0000) means "on disk": a crash after the response loses nothing. Instances are stored
exactly as received (no decode/re-encode, any transfer syntax). There is no DICOM "series
complete" signal, so a series counts as complete after ``quiet_period_s`` without a new instance
(as Orthanc's StableAge and the MONAI Informatics Gateway's ``timeout``).

Association policy (checked when the A-ASSOCIATE-RQ arrives, PS3.8 7.1.1.9):

- a calling AE title (and host, if configured) not on the allow-list is rejected, permanent,
  "calling AE title not recognized";
- with less than ``min_free_mb`` free in the spool it is rejected, transient, "local limit
  exceeded", so a sender retries later instead of losing data.

C-STORE statuses (PS3.4 B.2.3): 0x0000 stored (or already processed: a duplicate SOP instance
is acknowledged and dropped); 0xA700 out of resources (disk full, any write error); 0xA900
dataset without a Series Instance UID; 0xC000 dataset that cannot be parsed.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from monai_app.node.audit import AuditLog
from monai_app.node.config import NodeConfig
from monai_app.node.jobqueue import JobQueue
from monai_app.node.sockets import NO_DELAY_HANDLER
from monai_app.node.spool import Spool, safe_name
from monai_app.node.tls import server_context

LOG = logging.getLogger("monai_app.node.receiver")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000


@dataclass
class SeriesState:
    """Arrival bookkeeping of one series still receiving."""

    inflight: int = 0
    stored: int = 0
    last_arrival: float = 0.0  # monotonic clock
    first_wall: float | None = None
    last_wall: float | None = None


class SeriesTracker:
    """Quiet-period completeness detection, one timer per Series Instance UID.

    A series with a write in progress is never due, so sealing (moving its folder into a job)
    can never race a writer.
    """

    def __init__(self, quiet_period_s: float, clock: Callable[[], float] = time.monotonic):
        self.quiet_period_s = quiet_period_s
        self._clock = clock
        self._lock = threading.Lock()
        self._series: dict[str, SeriesState] = {}

    def begin(self, key: str) -> None:
        """Announce a write into series ``key`` (it cannot be sealed until :meth:`end`)."""
        with self._lock:
            state = self._series.setdefault(key, SeriesState(last_arrival=self._clock()))
            state.inflight += 1

    def end(self, key: str, stored: bool) -> None:
        """Finish a write announced by :meth:`begin`."""
        with self._lock:
            state = self._series[key]
            state.inflight -= 1
            if stored:
                now_wall = time.time()
                state.stored += 1
                state.last_arrival = self._clock()
                state.first_wall = state.first_wall or now_wall
                state.last_wall = now_wall

    def touch(self, key: str) -> None:
        """Register a series found on disk at start-up; its quiet period starts now."""
        with self._lock:
            state = self._series.setdefault(key, SeriesState())
            state.stored = max(state.stored, 1)
            state.last_arrival = self._clock()

    def pending(self) -> int:
        with self._lock:
            return len(self._series)

    def seal_due(self, seal: Callable[[str, SeriesState], None]) -> list[str]:
        """Call ``seal(key, state)`` under the lock for every complete series and forget the
        ones sealed; a series whose ``seal`` raised stays tracked and is tried again next time."""
        sealed = []
        with self._lock:
            now = self._clock()
            for key, state in list(self._series.items()):
                quiet = now - state.last_arrival >= self.quiet_period_s
                if state.inflight == 0 and quiet:
                    try:
                        seal(key, state)
                    except OSError as exc:  # disk full, I/O error: keep it, try again later
                        LOG.error("series %s: could not be queued yet: %s", key, exc)
                        continue
                    del self._series[key]
                    sealed.append(key)
        return sealed


class Receiver:
    """The node's listening AE: C-ECHO and C-STORE for every storage SOP class."""

    def __init__(
        self,
        config: NodeConfig,
        spool: Spool,
        tracker: SeriesTracker,
        queue: JobQueue,
        audit: AuditLog,
    ) -> None:
        self.config = config
        self.spool = spool
        self.tracker = tracker
        self.queue = queue
        self.audit = audit
        self._server = None
        self._ae: AE | None = None
        # stop_listening (signal thread) and stop (main thread) may race.
        self._life_lock = threading.Lock()

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start listening (in background threads)."""
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        # Accept every storage SOP class in every transfer syntax pynetdicom knows (compressed
        # ones included): the instance is stored as received and decoded later by the pipeline.
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            NO_DELAY_HANDLER,
        ]
        self._server = ae.start_server(
            (self.config.bind_address, self.config.port),
            block=False,
            ssl_context=server_context(self.config.tls),
            evt_handlers=handlers,
        )
        self._ae = ae
        LOG.info(
            "listening as %s on %s:%d%s",
            self.config.ae_title,
            self.config.bind_address,
            self.port,
            " (TLS)" if self.config.tls.enabled else "",
        )

    @property
    def port(self) -> int:
        """The bound TCP port (useful when the configured port is 0)."""
        if self._server is None:
            return self.config.port
        return self._server.server_address[1]

    def stop_listening(self) -> None:
        """Close the listening socket: no new association; those in progress go on."""
        with self._life_lock:  # held through shutdown: stop() must not shut the server twice
            server, self._server = self._server, None
            if server is not None:
                server.shutdown()

    def stop(self) -> None:
        """Close the listening socket and abort any association still open."""
        self.stop_listening()
        with self._life_lock:
            ae, self._ae = self._ae, None
        if ae is not None:
            ae.shutdown()

    # -- handlers ------------------------------------------------------------------------------

    def _caller_allowed(self, ae_title: str, host: str) -> bool:
        return any(
            c.ae_title == ae_title and (c.host is None or c.host == host)
            for c in self.config.allowed_callers
        )

    def _low_disk(self) -> bool:
        return self.spool.free_bytes() < self.config.min_free_mb * 1024 * 1024

    def _on_requested(self, event: evt.Event) -> None:
        """Allow-list and free-space checks on the A-ASSOCIATE-RQ, before negotiation."""
        requestor = event.assoc.requestor
        # requestor.ae_title is only filled in during negotiation: read the A-ASSOCIATE-RQ.
        ae_title = str(requestor.primitive.calling_ae_title or "").strip()
        host = requestor.address
        if not self._caller_allowed(ae_title, host):
            reason = "calling AE title not on the allow-list"
            # Rejected-permanent, service-user, calling-AE-title-not-recognized (PS3.8 9.3.4).
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)
        elif self._low_disk():
            reason = f"spool has less than {self.config.min_free_mb} MB free"
            # Rejected-transient, service-provider (presentation), local-limit-exceeded.
            event.assoc.acse.send_reject(0x02, 0x03, 0x02)
        else:
            return
        LOG.warning("rejected association from %r at %s: %s", ae_title, host, reason)
        self.audit.write("rejected", calling_ae=ae_title, peer=host, reason=reason)
        event.assoc.kill()

    def _on_echo(self, event: evt.Event) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event: evt.Event) -> int | tuple[int, Dataset]:
        """Spool one instance; the response is sent only after the file is durable."""
        request = event.request
        sop_uid = str(request.AffectedSOPInstanceUID)
        sop_class = str(request.AffectedSOPClassUID)
        calling_ae = (event.assoc.requestor.ae_title or "").strip()
        accept = self.config.accept_sop_classes
        if accept and sop_class not in accept:
            self.audit.write(
                "ignored", sop_instance_uid=sop_uid, sop_class_uid=sop_class,
                calling_ae=calling_ae, reason="SOP class not processed by this node",
            )
            return STATUS_SUCCESS
        duplicate = self.queue.duplicate_of(sop_uid)
        if duplicate is not None:
            LOG.info("instance %s already in job %s: acknowledged, not processed again",
                     sop_uid, duplicate)
            self.audit.write("duplicate", sop_instance_uid=sop_uid, job_id=duplicate,
                             calling_ae=calling_ae)
            return STATUS_SUCCESS
        if self._low_disk():
            LOG.warning("refusing instance %s: spool below %d MB free",
                        sop_uid, self.config.min_free_mb)
            return STATUS_OUT_OF_RESOURCES
        try:
            dataset = event.dataset
            series_uid = str(dataset.get("SeriesInstanceUID", "") or "")
            study_uid = str(dataset.get("StudyInstanceUID", "") or "")
        except Exception as exc:  # noqa: BLE001  (any parse error is the peer's malformed data)
            LOG.warning("instance %s cannot be parsed: %s", sop_uid, type(exc).__name__)
            return STATUS_CANNOT_UNDERSTAND
        if not series_uid:
            LOG.warning("instance %s has no Series Instance UID", sop_uid)
            return STATUS_DATASET_MISMATCH
        return self._write(event, sop_uid, sop_class, series_uid, study_uid, calling_ae)

    def _write(
        self,
        event: evt.Event,
        sop_uid: str,
        sop_class: str,
        series_uid: str,
        study_uid: str,
        calling_ae: str,
    ) -> int:
        key = safe_name(series_uid)
        start = time.perf_counter()
        self.tracker.begin(key)
        stored = False
        try:
            data = event.encoded_dataset(include_meta=True)
            self.spool.write_instance(key, sop_uid, data)
            stored = True
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            LOG.error("could not spool instance %s (%s): returning out-of-resources",
                      sop_uid, "disk full" if full else exc.strerror)
            return STATUS_OUT_OF_RESOURCES
        finally:
            self.tracker.end(key, stored)
        write_s = time.perf_counter() - start
        self.audit.write(
            "received",
            sop_instance_uid=sop_uid,
            series_instance_uid=series_uid,
            study_instance_uid=study_uid,
            sop_class_uid=sop_class,
            transfer_syntax=str(event.context.transfer_syntax),
            calling_ae=calling_ae,
            bytes=len(data),
            write_s=round(write_s, 6),
        )
        LOG.debug("stored instance %s of series %s in %.1f ms", sop_uid, series_uid,
                  write_s * 1000)
        return STATUS_SUCCESS
