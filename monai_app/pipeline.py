"""Run the application in-process, repeatedly (the DICOM node), or its steps without a graph.

- :func:`process_folder` runs :class:`monai_app.app.OCTGlaucomaApp` (the holoscan graph) on one
  input folder and returns the results.json entries. Imports and the model load are paid once per
  process; later calls cost only the graph run.
- :func:`process_folder_direct` runs the same step functions (``operators.steps``) in a plain
  loop, without holoscan: same files, same entries. Tests and benchmarks use it.

Both raise :class:`operators.dicom_input.NoOCTInputError` when the input holds no OCT volume,
and then write nothing (the output folder is not even created). The input files that are not
processed (not DICOM, another SOP class, a duplicate, a link out of the folder) are listed with
their reasons under ``skipped`` in results.json.
"""

from __future__ import annotations

import logging
import os
import resource
import warnings
from pathlib import Path
from typing import Any

from operators.bundle_path import resolve_bundle
from operators.dicom_input import NoOCTInputError, require_oct_input

__all__ = [
    "IncompleteRunError",
    "NoOCTInputError",
    "process_folder",
    "process_folder_direct",
    "raise_stack_limit",
]

logger = logging.getLogger(__name__)


class IncompleteRunError(RuntimeError):
    """The graph stopped before every volume was processed (e.g. interrupted by a signal)."""

STACK_LIMIT_BYTES = 32 * 1024 * 1024
"""Holoscan warns below a 32 MiB stack (``ulimit -s 32768``)."""


def raise_stack_limit(minimum: int = STACK_LIMIT_BYTES) -> bool:
    """Raise the soft stack limit to ``minimum`` if the hard limit allows; True if it is met.

    The main thread's stack grows up to the soft limit, so raising it in-process is effective for
    the main thread and silences holoscan's warning; threads created earlier keep their size.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft == resource.RLIM_INFINITY or soft >= minimum:
        return True
    if hard != resource.RLIM_INFINITY and hard < minimum:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_STACK, (minimum, hard))
    except (ValueError, OSError):
        return False
    return True


def _quiet_holoscan() -> None:
    """Holoscan's C++ info/warning lines (e.g. 'CUDA driver ... insufficient' on CPU) are noise."""
    os.environ.setdefault("HOLOSCAN_LOG_LEVEL", "ERROR")
    raise_stack_limit()
    warnings.filterwarnings("ignore", message="Current stack size", category=RuntimeWarning)


def process_folder(
    input_dir: str | Path, output_dir: str | Path, model_path: str | Path | None = None
) -> list[dict[str, Any]]:
    """Run the application (holoscan graph) on ``input_dir``, writing into ``output_dir``.

    Args:
        input_dir: a folder (searched recursively) or one DICOM file.
        output_dir: created if needed; gets ``<SOPInstanceUID>/{sr,seg,report}.dcm`` per volume
            and ``results.json``.
        model_path: a bundle folder (or a folder holding one bundle); ``None`` = the demo model.

    Returns:
        The results.json entries, one per OCT volume.

    Raises:
        NoOCTInputError: no OCT volume in the input; nothing written.
        operators.bundle_path.BundleNotFoundError: no model bundle at ``model_path``.
    """
    scan = require_oct_input(input_dir)
    bundle = resolve_bundle(model_path)
    _quiet_holoscan()
    from monai_app.app import OCTGlaucomaApp  # holoscan, torch, MONAI: seconds, once
    from operators.steps import add_skipped_to_results

    app = OCTGlaucomaApp(
        ["python", "monai_app"],  # holoscan drops the interpreter; no SDK flags are parsed
        input_path=input_dir,
        output_path=output_dir,
        model_path=bundle,
        files=scan.files,
    )
    app.run()
    results = app.results
    if len(results) < len(scan.files):  # the graph was stopped early: never pass on a part
        raise IncompleteRunError(
            f"the run stopped after {len(results)} of {len(scan.files)} volumes"
        )
    add_skipped_to_results(output_dir, scan.skipped_entries())
    return results


def process_folder_direct(
    input_dir: str | Path, output_dir: str | Path, model_path: str | Path | None = None
) -> list[dict[str, Any]]:
    """The same steps and outputs as :func:`process_folder`, in a plain Python loop (no graph)."""
    scan = require_oct_input(input_dir)
    bundle = resolve_bundle(model_path)
    from operators.equipment import AlgorithmInfo
    from operators.steps import (
        VolumeJob,
        load_model,
        process_job,
        quiet_library_logs,
        warm_up,
        write_results_json,
    )

    quiet_library_logs()
    predictor = load_model(bundle)
    warm_up()
    info = AlgorithmInfo.from_metadata(predictor.metadata)
    skipped = scan.skipped_entries()
    entries = []
    for index, path in enumerate(scan.files, start=1):
        job = VolumeJob(path=path, index=index, total=len(scan.files), input_root=scan.root)
        entries.append(process_job(job, predictor, info, output_dir))
        write_results_json(entries, output_dir, info, skipped)
    return entries
