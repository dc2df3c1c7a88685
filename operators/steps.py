"""The pipeline steps as plain functions on a :class:`VolumeJob`, shared by the SDK operators and
by the graph-free runner (``monai_app.pipeline.process_folder_direct``), so both give the same
results and the steps can be tested without a holoscan graph.

One job is one OPT instance. Each step fills in part of the job and times itself; a step that
finds the volume cannot be assessed sets ``job.reason`` and the later steps write a "not
assessable" result for it instead of a probability.

Output layout, per volume: ``<output>/<source SOPInstanceUID>/{sr,seg,report}.dcm`` (``seg.dcm``
only for assessable volumes), plus ``<output>/results.json`` with one entry per volume.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from model.predictor import GLAUCOMA_LABEL, NORMAL_LABEL, Prediction, Predictor, load_predictor
from operators.dicom_input import OUT_OF_FOLDER, is_inside
from operators.equipment import OUTPUT_KINDS, AlgorithmInfo
from operators.oct_volume import (
    OCTVolume,
    OCTVolumeError,
    is_valid_uid,
    read_dicom_file,
    read_oct_volume,
    truncation_reason,
)
from operators.pdf_report import build_pdf_report
from operators.pdf_report import load_tables as load_report_tables
from operators.seg import build_seg
from operators.sr import build_sr

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"

MAIN_STEPS = ("load", "preprocess", "inference", "postprocess", "write")
"""The timed steps; ``write`` also has a per-output breakdown (``write_sr``, ``write_seg``,
``write_report``, ``write_files``)."""

_CHATTY_LOGGERS = ("highdicom", "fontTools", "matplotlib", "PIL")

IDENTIFYING_ATTRIBUTES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
"""A result is written only for a source that has these (valid UIDs): they place it in its
study and reference the volume it was computed from."""

# pydicom's validation messages quote the offending value ("Invalid value for VR PN: '...'.");
# the value of a patient's name or ID must not reach a log.
_QUOTED_VALUE = re.compile(r"(Invalid value for VR \w+): .*?\.(?= Please see|$)", re.DOTALL)
# Library warnings whose text carries patient data: highdicom quotes a one-component patient
# name; matplotlib names each character of the report that its font lacks (a CJK name).
_IDENTIFYING_WARNINGS = (
    r"The string .* is unlikely to represent the intended person name",
    r"Glyph \d+ .* missing from font",
    r"Invalid value for VR",  # also logged by pydicom, redacted by the filter below
)


def warm_up() -> None:
    """Pay one-time costs at start-up instead of in the first volume's times.

    highdicom reads the standard's IOD and module tables (JSON, about 0.35 s) on first use and
    caches them; the report loads its colour table and font metrics. Loading them here keeps
    per-volume timings honest. Harmless if highdicom's private helpers change: the first volume
    then pays instead.

    Last, the objects made so far (about half a million: torch, MONAI, holoscan, the model) are
    collected once and frozen out of the garbage collector (:func:`gc.freeze`): otherwise a full
    collection walks them all, about 0.17 s, inside whichever volume's step triggers it (measured
    on a 2-core EPYC; frozen, a full collection takes about 5 ms). Call it after the model is
    loaded.
    """
    try:
        from highdicom import _standard_utils as tables

        for name in ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map"):
            getattr(tables, name)()
    except Exception:  # an optimisation only
        logger.debug("highdicom warm-up skipped", exc_info=True)
    load_report_tables()
    gc.collect()
    gc.freeze()


class WithholdValues(logging.Filter):
    """Replace the value pydicom quotes in a validation message by "(value withheld)"."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _QUOTED_VALUE.sub(r"\1 (value withheld).", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def quiet_library_logs() -> None:
    """Keep library noise and patient data out of the logs.

    highdicom's per-module copy notes and fontTools' subsetting notes go below INFO; the library
    messages that would quote a patient's name or ID are withheld (:data:`_IDENTIFYING_WARNINGS`,
    :class:`WithholdValues` on pydicom's logger). Idempotent.
    """
    for name in _CHATTY_LOGGERS:
        library = logging.getLogger(name)
        library.setLevel(max(library.getEffectiveLevel(), logging.WARNING))
    pydicom_logger = logging.getLogger("pydicom")
    if not any(isinstance(f, WithholdValues) for f in pydicom_logger.filters):
        pydicom_logger.addFilter(WithholdValues())
    for pattern in _IDENTIFYING_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


@dataclass
class VolumeJob:
    """One OPT instance on its way through the pipeline.

    Attributes:
        path: the source file.
        index, total: position of the job in its run (1-based), for logs.
        input_root: the input folder, to name the file relative to it in results.
        dataset: the source Dataset (header only when the pixel data could not be read).
        volume: the OCT volume, once read.
        reason: why the volume is not assessable, or ``None``.
        tensor: the model input between preprocessing and inference.
        prediction: the model's result.
        outputs: output kind ("sr", "seg", "report") -> Dataset.
        files: output kind -> path relative to the output folder.
        errors: step or output kind -> error message, for outputs that failed.
        unwritten: output kinds built but not written (disk full, permissions): transient,
            unlike a build failure, so the DICOM node retries the job.
        timings: step -> seconds.
    """

    path: Path
    index: int = 1
    total: int = 1
    input_root: Path | None = None
    dataset: Dataset | None = None
    volume: OCTVolume | None = None
    reason: str | None = None
    tensor: Any = None
    prediction: Prediction | None = None
    outputs: dict[str, Dataset] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    unwritten: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The source file, relative to the input folder when possible."""
        if self.input_root is not None and self.input_root.is_dir():
            try:
                return self.path.relative_to(self.input_root).as_posix()
            except ValueError:
                pass
        return self.path.name

    @property
    def tag(self) -> str:
        """Log prefix: ``[index/total] name``."""
        return f"[{self.index}/{self.total}] {self.name}"

    @property
    def laterality(self) -> str | None:
        """ "R" or "L" from the volume, else from the header's ImageLaterality, else None."""
        if self.volume is not None:
            return self.volume.laterality
        value = str(self.dataset.get("ImageLaterality", "") if self.dataset else "").upper()
        return value if value in ("R", "L") else None

    def add_time(self, step: str, seconds: float) -> None:
        """Accumulate the time of one step."""
        self.timings[step] = self.timings.get(step, 0.0) + seconds


# --- steps -----------------------------------------------------------------------------------


def load_model(bundle_dir: str | Path, device: str | None = None) -> Predictor:
    """The bundle's :class:`model.predictor.Predictor`, loaded once per process (cached)."""
    start = time.perf_counter()
    predictor = load_predictor(bundle_dir, device)
    logger.info(
        "Model %s %s from %s on %s (%.2f s)",
        predictor.metadata.name,
        predictor.metadata.version,
        bundle_dir,
        predictor.device,
        time.perf_counter() - start,
    )
    return predictor


def read_instance(job: VolumeJob) -> VolumeJob:
    """Read the file (large values deferred); an incomplete file keeps its header, without the
    pixel data, for the result's references.

    The file is read only if, all links resolved, it still lies inside the input folder: the
    input may have changed since it was searched.
    """
    start = time.perf_counter()
    logger.info("%s: loading", job.tag)
    if job.input_root is not None and not is_inside(job.path, job.input_root):
        job.reason = OUT_OF_FOLDER
        job.dataset = None
    else:
        try:
            job.dataset = read_dicom_file(job.path)
            job.reason = truncation_reason(job.dataset, job.path)
        except (OCTVolumeError, OSError) as exc:
            job.reason = getattr(exc, "reason", None) or f"unreadable file ({exc.strerror})"
            job.dataset = None
        if job.reason is not None and job.dataset is not None and "PixelData" in job.dataset:
            del job.dataset.PixelData  # unread (deferred); it may declare gigabytes
    job.add_time("load", time.perf_counter() - start)
    return job


def build_volume(job: VolumeJob) -> VolumeJob:
    """Decode and order the frames (:func:`operators.oct_volume.read_oct_volume`)."""
    if job.reason is not None or job.dataset is None:
        if job.reason is not None:
            logger.warning("%s: not assessable: %s", job.tag, job.reason)
        return job
    start = time.perf_counter()
    try:
        job.volume = read_oct_volume(job.dataset)
    except OCTVolumeError as exc:
        job.reason = exc.reason
    except Exception as exc:  # read_oct_volume should raise nothing else: report it, go on
        _log_failure(job, "reading the volume", exc)
        job.reason = f"unexpected error reading the volume ({type(exc).__name__}: {exc})"
    if job.volume is None and "PixelData" in job.dataset:
        del job.dataset.PixelData  # the results need the header only; it may be large, or unread
    job.add_time("load", time.perf_counter() - start)
    if job.volume is not None:
        volume = job.volume
        logger.info(
            "%s: %s eye, %d B-scans x %d x %d, loaded in %.2f s",
            job.tag,
            {"R": "right", "L": "left"}[volume.laterality],
            *volume.shape,
            job.timings["load"],
        )
    else:
        logger.warning("%s: not assessable: %s", job.tag, job.reason)
    return job


def preprocess(job: VolumeJob, predictor: Predictor) -> VolumeJob:
    """Canonicalise, resample and normalise the volume for the model (``Predictor.prepare``)."""
    if job.volume is None:
        return job
    start = time.perf_counter()
    try:
        job.tensor = predictor.prepare(job.volume.voxels, job.volume.laterality)
    except Exception as exc:  # a volume the model cannot take must not stop the others
        _log_failure(job, "preprocessing", exc)
        job.reason = f"preprocessing failed ({exc})"
    job.add_time("preprocess", time.perf_counter() - start)
    return job


def infer(job: VolumeJob, predictor: Predictor) -> VolumeJob:
    """Run the model, then bring CARE and Grad-CAM back to the source grid and orientation."""
    if job.volume is None or job.tensor is None:
        return job
    volume = job.volume
    start = time.perf_counter()
    try:
        probability, care, gradcam = predictor.infer(job.tensor)
        inferred = time.perf_counter()
        care = predictor.restore(care, volume.shape, volume.laterality)
        gradcam = predictor.restore(gradcam, volume.shape, volume.laterality)
    except Exception as exc:  # e.g. out of memory on one volume: report it, go on
        _log_failure(job, "inference", exc)
        job.reason = f"inference failed ({exc})"
        job.add_time("inference", time.perf_counter() - start)
        return job
    finally:
        job.tensor = None
    job.add_time("inference", inferred - start)
    job.add_time("postprocess", time.perf_counter() - inferred)
    glaucoma = probability >= predictor.metadata.threshold
    job.prediction = Prediction(
        probability=probability,
        label=GLAUCOMA_LABEL if glaucoma else NORMAL_LABEL,
        glaucoma=bool(glaucoma),
        care=care,
        gradcam=gradcam,
        model_name=predictor.metadata.name,
        model_version=predictor.metadata.version,
        timings={k: job.timings[k] for k in ("preprocess", "inference", "postprocess")},
    )
    logger.info(
        "%s: P(glaucoma) = %.3f -> %s (preprocess %.2f s, inference %.2f s, maps %.2f s)",
        job.tag,
        probability,
        job.prediction.label,
        job.timings["preprocess"],
        job.timings["inference"],
        job.timings["postprocess"],
    )
    return job


def _log_failure(job: VolumeJob, step: str, exc: BaseException) -> None:
    """One log line for an unexpected failure; the traceback only at DEBUG level."""
    logger.error("%s: %s failed: %s: %s", job.tag, step, type(exc).__name__, exc)
    logger.debug("%s: %s failed", job.tag, step, exc_info=exc)


def missing_identity(dataset: Dataset) -> str | None:
    """The first of :data:`IDENTIFYING_ATTRIBUTES` (and SOPClassUID) that ``dataset`` lacks or
    holds as an invalid UID; ``None`` when all are there."""
    for keyword in ("SOPClassUID", *IDENTIFYING_ATTRIBUTES):
        try:
            value = str(dataset.get(keyword, "") or "").strip()
        except Exception:  # an unparseable value counts as missing
            value = ""
        if not is_valid_uid(value):
            return keyword
    return None


def _outcome(job: VolumeJob) -> Prediction | str:
    return job.prediction if job.prediction is not None else str(job.reason)


def _source(job: VolumeJob) -> OCTVolume | Dataset | None:
    return job.volume if job.volume is not None and job.prediction is not None else job.dataset


def build_output(job: VolumeJob, kind: str, info: AlgorithmInfo) -> Dataset | None:
    """Build one output Dataset ("sr", "seg" or "report"); ``None`` when it does not apply.

    A SEG exists only for an assessable volume; nothing exists without a readable header. A
    failing writer is logged and recorded in ``job.errors``; the other outputs go on.
    """
    source = _source(job)
    if source is None or (kind == "seg" and job.prediction is None):
        return None
    lacking = missing_identity(job.dataset)  # type: ignore[arg-type]
    if lacking is not None:  # it could not be filed with its volume: write nothing
        message = f"the source has no valid {lacking}; no result can reference it"
        logger.warning("%s: no %s: %s", job.tag, kind, message)
        job.errors[kind] = message
        return None
    start = time.perf_counter()
    try:
        if kind == "sr":
            dataset = build_sr(source, _outcome(job), info)
        elif kind == "seg":
            dataset = build_seg(job.volume, job.prediction, info)  # type: ignore[arg-type]
        elif kind == "report":
            dataset = build_pdf_report(source, _outcome(job), info)
        else:
            raise ValueError(f"unknown output kind {kind!r}")
    except ValueError as exc:  # the source does not allow this output (e.g. no geometry)
        logger.warning("%s: no %s: %s", job.tag, kind, exc)
        job.errors[kind] = f"{type(exc).__name__}: {exc}"
        dataset = None
    except Exception as exc:  # one failing writer must not lose the other results
        _log_failure(job, f"building the {kind}", exc)
        job.errors[kind] = f"{type(exc).__name__}: {exc}"
        dataset = None
    seconds = time.perf_counter() - start
    job.add_time("write", seconds)
    job.add_time(f"write_{kind}", seconds)
    if dataset is not None:
        job.outputs[kind] = dataset
    return dataset


def build_outputs(job: VolumeJob, info: AlgorithmInfo) -> VolumeJob:
    """Build every output that applies to the job."""
    for kind in OUTPUT_KINDS:
        build_output(job, kind, info)
    return job


def output_folder_name(job: VolumeJob) -> str:
    """The job's output sub-folder: the source SOPInstanceUID.

    Only a well-formed UID (digits and dots, no empty component) is used as a name: "." or ".."
    would put the files outside the output folder. Otherwise the file's name, made safe, plus a
    hash of its path, so that two such files never share a folder.
    """
    uid = ""
    if job.dataset is not None:
        try:
            uid = str(job.dataset.get("SOPInstanceUID", "") or "").strip()
        except Exception:  # an unparseable value: use the file name
            uid = ""
    if is_valid_uid(uid):
        return uid
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", job.path.stem).strip("_")[:40] or "volume"
    digest = hashlib.sha256(str(job.path).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"{stem}-{digest}"


def save_outputs(job: VolumeJob, output_dir: str | Path) -> VolumeJob:
    """Write the job's Datasets as ``<output>/<SOPInstanceUID>/<kind>.dcm`` (Explicit VR LE)."""
    start = time.perf_counter()
    folder = Path(output_dir) / output_folder_name(job)
    for kind, dataset in job.outputs.items():
        path = folder / f"{kind}.dcm"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, functools.partial(dataset.save_as, enforce_file_format=True))
        except Exception as exc:  # disk full, permissions: record and go on
            _log_failure(job, f"writing {path.name}", exc)
            job.errors[kind] = f"{type(exc).__name__}: {exc}"
            job.unwritten.append(kind)
            continue
        job.files[kind] = path.relative_to(output_dir).as_posix()
    seconds = time.perf_counter() - start
    job.add_time("write", seconds)
    job.add_time("write_files", seconds)
    logger.info(
        "%s: wrote %s in %.2f s",
        job.tag,
        ", ".join(job.files.values()) or "nothing",
        job.timings.get("write", 0.0),
    )
    return job


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def result_entry(job: VolumeJob, info: AlgorithmInfo) -> dict[str, Any]:
    """The job's ``results.json`` entry."""
    ds = job.dataset
    prediction = job.prediction
    volume = job.volume
    timings = {key: round(value, 4) for key, value in job.timings.items()}
    timings["total"] = round(sum(job.timings.get(step, 0.0) for step in MAIN_STEPS), 4)
    entry: dict[str, Any] = {
        "source_file": job.name,
        "patient_id": str(ds.get("PatientID", "")) if ds is not None else None,
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")) if ds is not None else None,
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")) if ds is not None else None,
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")) if ds is not None else None,
        "laterality": job.laterality,
        "assessable": prediction is not None,
        "reason": None if prediction is not None else job.reason,
        "probability": round(prediction.probability, 6) if prediction is not None else None,
        "label": prediction.label if prediction is not None else None,
        "threshold": info.threshold,
        "model_name": info.model_name,
        "model_version": info.model_version,
        "app_version": info.app_version,
        "shape": list(volume.shape) if volume is not None else None,
        "spacing_mm": (
            [None if math.isnan(s) else round(s, 6) for s in volume.spacing_mm]
            if volume is not None
            else None
        ),
        "outputs": dict(job.files),
        "output_series_instance_uids": {
            kind: str(dataset.SeriesInstanceUID) for kind, dataset in job.outputs.items()
        },
        "timings": timings,
    }
    if job.errors:
        entry["errors"] = dict(job.errors)
    if job.unwritten:
        entry["unwritten"] = list(job.unwritten)
    return entry


def write_results_json(
    entries: list[dict[str, Any]],
    output_dir: str | Path,
    info: AlgorithmInfo,
    skipped: list[dict[str, str]] | None = None,
) -> Path:
    """(Re)write ``<output>/results.json``: ``{"application", "model", "results": [entries],
    "skipped": [{"source_file", "reason"}]}`` (``skipped``: the input files not processed, see
    :meth:`operators.dicom_input.InputScan.skipped_entries`; the key only when given)."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESULTS_FILE
    document: dict[str, Any] = {
        "application": {"name": info.app_name, "version": info.app_version},
        "model": {"name": info.model_name, "version": info.model_version},
        "results": entries,
    }
    if skipped is not None:
        document["skipped"] = skipped
    return _write_json(path, document)


def add_skipped_to_results(output_dir: str | Path, skipped: list[dict[str, str]]) -> Path | None:
    """Add the ``skipped`` list to an existing results.json (after a graph run, whose results
    operator writes the entries only); ``None`` if there is no results.json."""
    path = Path(output_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    document = json.loads(path.read_text(encoding="utf-8"))
    document["skipped"] = skipped
    return _write_json(path, document)


def _write_json(path: Path, document: dict[str, Any]) -> Path:
    """Write ``document`` as indented JSON, atomically (see :func:`_atomic_write`)."""
    text = json.dumps(document, indent=2) + "\n"
    _atomic_write(path, lambda stream: stream.write(text.encode()))
    return path


def process_job(
    job: VolumeJob, predictor: Predictor, info: AlgorithmInfo, output_dir: str | Path
) -> dict[str, Any]:
    """Every step on one job, in order: the pipeline without a graph. Returns the entry."""
    read_instance(job)
    build_volume(job)
    preprocess(job, predictor)
    infer(job, predictor)
    build_outputs(job, info)
    save_outputs(job, output_dir)
    return result_entry(job, info)
