"""The worker: runs the pipeline in-process on each queued series, one job at a time.

The pipeline function is called as ``process(input_dir, output_dir) -> list[dict]`` (the
signature of ``monai_app.pipeline.process_folder`` with the model path bound); the model is loaded
once per process by the pipeline's cached predictor, so only the first job pays for it. Output
goes to ``output.partial`` and is renamed to ``output`` only when the pipeline returns, so the
sender never sees half a result set.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monai_app.node.audit import AuditLog
from monai_app.node.config import NodeConfig
from monai_app.node.jobqueue import PENDING, PROCESSING, Job, JobQueue
from monai_app.node.spool import Spool

LOG = logging.getLogger("monai_app.node.worker")

ProcessFn = Callable[[Path, Path], "list[dict[str, Any]] | None"]


class OutputNotWrittenError(RuntimeError):
    """The pipeline ran but could not write some results (e.g. disk full)."""

#: Result-entry keys copied into the audit log and ``status`` output (no patient identifiers).
SAFE_ENTRY_KEYS = (
    "series_instance_uid",
    "sop_instance_uid",
    "probability",
    "label",
    "laterality",
    "assessable",
    "reason",
    "unwritten",
    "model_name",
    "model_version",
)


def pipeline_process_fn(model_path: Path | None = None) -> ProcessFn:
    """The real processing function: ``monai_app.pipeline.process_folder`` with the model bound.

    Importing the pipeline pulls in torch, MONAI and the App SDK (seconds), so it happens here,
    once, when the node starts.
    """
    from monai_app.pipeline import NoOCTInputError, process_folder

    process = functools.partial(process_folder, model_path=model_path)
    # A series without any OCT volume will never succeed: fail it at once, no retries.
    process.permanent_errors = (NoOCTInputError,)  # type: ignore[attr-defined]
    return process


def import_process_fn(spec: str) -> ProcessFn:
    """The processing function named by ``worker.process_function`` (``package.module:name``).

    Raises:
        ImportError, AttributeError: the module or the function does not exist.
        TypeError: the named object is not callable.
    """
    module_name, _, attribute = spec.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"worker.process_function {spec!r} is not callable")
    return obj


def warm_up(process: ProcessFn, workdir: Path) -> float:
    """Run ``process`` once on a small synthetic OPT volume (no patient data); returns seconds.

    The first run of the pipeline loads the model and builds the graph; doing it before the node
    listens keeps that cost out of the first real series' latency.
    """
    from model.phantoms import make_phantom
    from monai_app.sample_study import phantom_to_opt_dataset

    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "input").mkdir(parents=True)
    ds = phantom_to_opt_dataset(
        make_phantom(0, glaucoma=False, shape=(32, 64, 48)),
        patient_id="WARMUP", patient_name="Warm^Up", patient_birth_date="19000101",
        patient_sex="O", study_instance_uid="2.25.1", study_id="0", accession_number="",
        series_number=1,
    )
    ds.save_as(workdir / "input" / "warmup.dcm", enforce_file_format=True)
    start = time.perf_counter()
    try:
        process(workdir / "input", workdir / "output")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return time.perf_counter() - start


def _lookup(entry: dict[str, Any], key: str) -> Any:
    """Find ``key`` in an entry, also as CamelCase DICOM keyword or inside ``model``."""
    if key in entry:
        return entry[key]
    camel = "".join(part.capitalize() for part in key.split("_")).replace("Uid", "UID")
    if camel in entry:
        return entry[camel]
    model = entry.get("model")
    if isinstance(model, dict) and key.startswith("model_"):
        return model.get(key.removeprefix("model_"))
    return None


def safe_summary(entry: dict[str, Any]) -> dict[str, Any]:
    """The non-identifying part of a pipeline result entry (for audit and logs)."""
    summary = {k: v for k in SAFE_ENTRY_KEYS if (v := _lookup(entry, k)) is not None}
    timings = entry.get("timings")
    if isinstance(timings, dict):
        summary["timings"] = {
            k: round(float(v), 6) for k, v in timings.items() if isinstance(v, int | float)
        }
    return summary


def inference_seconds(entries: list[dict[str, Any]]) -> float | None:
    """Sum of the model inference times reported by the pipeline (None if not reported)."""
    total, found = 0.0, False
    for entry in entries:
        timings = entry.get("timings")
        if isinstance(timings, dict) and isinstance(timings.get("inference"), int | float):
            total += float(timings["inference"])
            found = True
    return total if found else None


def model_version(entries: list[dict[str, Any]]) -> str | None:
    """Model name/version string of the first entry that reports one."""
    for entry in entries:
        name, version = _lookup(entry, "model_name"), _lookup(entry, "model_version")
        if version is not None:
            return f"{name} {version}" if name else str(version)
    return None


def _read_results(output_dir: Path) -> list[dict[str, Any]]:
    path = output_dir / "results.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        data = data.get("results", data.get("entries", []))
    return list(data) if isinstance(data, list) else []


def _short_reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text[:500]


class Worker:
    """Claims pending jobs and runs the pipeline on them."""

    def __init__(
        self,
        config: NodeConfig,
        queue: JobQueue,
        spool: Spool,
        audit: AuditLog,
        process: ProcessFn,
        on_processed: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.queue = queue
        self.spool = spool
        self.audit = audit
        self.process = process
        self.on_processed = on_processed
        self.wake = threading.Event()
        self._stop: threading.Event | None = None

    def run(self, stop: threading.Event) -> None:
        """Process jobs until ``stop`` is set (the current job always finishes)."""
        self._stop = stop
        while not stop.is_set():
            if self.run_once():
                continue
            self.wake.wait(self.queue.idle_wait(PENDING))
            self.wake.clear()

    def run_once(self) -> bool:
        """Process the next due job, if any. Returns whether a job was processed."""
        job = self.queue.claim_for_processing()
        if job is None:
            return False
        try:
            self._process(job)
        except Exception as exc:  # noqa: BLE001  (spool, queue or audit I/O outside the pipeline)
            current = self.queue.get(job.id)
            if current.state == PROCESSING:  # a job is never left "processing"
                self._failed(job, exc, 0.0)
            else:
                LOG.error("job %s: after processing: %s", job.id, _short_reason(exc))
        return True

    def _process(self, job: Job) -> None:
        LOG.info("job %s: processing series %s (attempt %d)", job.id, job.series_uid,
                 job.attempts)
        self.audit.write("started", job_id=job.id, series_instance_uid=job.series_uid,
                         study_instance_uid=job.study_uid, attempt=job.attempts,
                         queue_wait_s=round(time.time() - job.queued_at, 6))
        output = self.spool.new_output_dir(job.id)
        start = time.perf_counter()
        try:
            entries = self.process(self.spool.input_dir(job.id), output)
            if entries is None:
                entries = _read_results(output)
            entries = [dict(e) for e in entries]
            unwritten = sorted({kind for e in entries for kind in e.get("unwritten", ())})
            if unwritten:  # disk full, permissions: transient, so retry rather than send less
                raise OutputNotWrittenError(f"results not written: {', '.join(unwritten)}")
        except Exception as exc:  # noqa: BLE001  (any pipeline failure is recorded on the job)
            if not self._interrupted(job):
                self._failed(job, exc, time.perf_counter() - start)
            return
        # A run that returned is complete (an interrupted graph raises IncompleteRunError), so
        # it is kept even when a stop was requested meanwhile.
        processing_s = time.perf_counter() - start
        self.spool.commit_output(job.id)
        version = model_version(entries)
        # Only the non-identifying summary is kept: the queue outlives the spooled files.
        summaries = [safe_summary(e) for e in entries]
        self.queue.mark_processed(job.id, summaries, processing_s, version)
        inference_s = inference_seconds(entries)
        self.audit.write(
            "finished",
            job_id=job.id,
            series_instance_uid=job.series_uid,
            processing_s=round(processing_s, 6),
            inference_s=None if inference_s is None else round(inference_s, 6),
            model_version=version,
            results=summaries,
        )
        LOG.info("job %s: processed in %.2f s (inference %s s), %d result entr%s", job.id,
                 processing_s, "n/a" if inference_s is None else f"{inference_s:.2f}",
                 len(entries), "y" if len(entries) == 1 else "ies")
        self.on_processed()

    def _interrupted(self, job: Job) -> bool:
        """Whether a failed run failed because a stop was requested meanwhile (a graph stopped
        early raises :class:`monai_app.pipeline.IncompleteRunError`): then the output is
        discarded and the job goes back to the queue, the attempt not counted."""
        if self._stop is None or not self._stop.is_set():
            return False
        self.spool.new_output_dir(job.id)
        self.queue.release(job.id, "interrupted by shutdown")
        LOG.info("job %s: interrupted by shutdown, requeued", job.id)
        self.audit.write("interrupted", job_id=job.id, series_instance_uid=job.series_uid)
        return True

    def _failed(self, job: Job, exc: Exception, elapsed: float) -> None:
        reason = _short_reason(exc)
        LOG.debug("job %s: pipeline traceback", job.id, exc_info=True)
        permanent = isinstance(exc, getattr(self.process, "permanent_errors", ()))
        if permanent or job.attempts >= self.config.worker.max_attempts:
            self.queue.fail(job.id, reason)
            LOG.error("job %s: failed after %d attempts: %s", job.id, job.attempts, reason)
            self.audit.write("failed", job_id=job.id, series_instance_uid=job.series_uid,
                             stage="processing", attempts=job.attempts, reason=reason,
                             processing_s=round(elapsed, 6))
            return
        delay = self.config.worker.retry_delay_s * 2 ** (job.attempts - 1)
        self.queue.retry_processing(job.id, reason, delay)
        LOG.warning("job %s: attempt %d failed (%s); retry in %.1f s", job.id, job.attempts,
                    reason, delay)
        self.audit.write("retry", job_id=job.id, series_instance_uid=job.series_uid,
                         stage="processing", attempt=job.attempts, reason=reason,
                         delay_s=delay)
