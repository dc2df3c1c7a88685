"""Command line: ``python -m monai_app -i IN -o OUT [-m MODEL] [-l LEVEL]``.

The flags are the MONAI Deploy App SDK's (``-i/--input``, ``-o/--output``, ``-m/--model``,
``-w/--workdir``, ``-t/--triton-server-netloc``, ``-l/--log-level``), with the same environment
fall-backs (``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH``, ``HOLOSCAN_MODEL_PATH``); the model
defaults to the bundled demo model ``model/bundles/aicnet3d_demo``.

Before importing the SDK and torch (seconds), the input is searched for OCT volumes and the model
bundle is located: if either is missing, the program prints one line on stderr and exits with
status 2, having written nothing. Otherwise the app runs and a summary table is printed (with
the files skipped and why, also listed under ``skipped`` in results.json); the exit status is 0
when at least one volume was processed.

Run-time chores handled here: holoscan wants a 32 MiB stack (it warns otherwise), so a lower soft
limit is raised and the interpreter re-executed once; holoscan's C++ log defaults to errors only
(``HOLOSCAN_LOG_LEVEL``; its CPU-only "CUDA driver" warnings are noise).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_REEXEC_ENV = "OCT_GLAUCOMA_APP_STACK_RAISED"


def ensure_stack_limit() -> None:
    """Raise a soft stack limit below 32 MiB (if the hard limit allows) and re-exec once.

    Threads take their default stack size from the limit at process start, hence the re-exec.
    """
    from monai_app.pipeline import STACK_LIMIT_BYTES, raise_stack_limit

    if os.environ.get(_REEXEC_ENV):
        return
    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    if soft == resource.RLIM_INFINITY or soft >= STACK_LIMIT_BYTES:
        return
    if not raise_stack_limit():
        return  # the hard limit is lower: holoscan's warning is silenced instead
    os.environ[_REEXEC_ENV] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m monai_app",
        description="Glaucoma detection on OCT volumes (DICOM OPT): writes a TID 1500 SR, a "
        "FRACTIONAL SEG of the CARE and Grad-CAM heat-maps and a PDF report per volume, plus "
        "results.json.",
    )
    env = os.environ.get
    parser.add_argument(
        "-i",
        "--input",
        default=env("HOLOSCAN_INPUT_PATH") or "input",
        help="DICOM folder (searched recursively) or file (default: input)",
    )
    parser.add_argument(
        "-o",
        "--output",
        default=env("HOLOSCAN_OUTPUT_PATH") or "output",
        help="output folder (default: output)",
    )
    parser.add_argument(
        "-m",
        "--model",
        default=env("HOLOSCAN_MODEL_PATH") or None,
        help="model bundle folder (default: the demo model)",
    )
    parser.add_argument("-w", "--workdir", help="SDK work folder (unused)")
    parser.add_argument("-t", "--triton-server-netloc", help="SDK option (unused)")
    parser.add_argument(
        "-l",
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"],
        help="log level (default: INFO)",
    )
    return parser


def _summary(
    results: list[dict[str, Any]], output: Path, skipped: Sequence[dict[str, str]] = ()
) -> str:
    """A short table of the results, one line per volume, then the files skipped."""
    width = max([len(str(r.get("source_file"))) for r in results] + [4])
    lines = [f"{'file':<{width}}  eye  {'result':<15}  P(glaucoma)"]
    for entry in results:
        eye = entry.get("laterality") or "-"
        if entry.get("assessable"):
            result = f"{entry['label']:<15}  {entry['probability']:.3f}"
        else:
            result = f"not assessable: {entry.get('reason')}"
        lines.append(f"{entry.get('source_file'):<{width}}  {eye:<3}  {result}")
    if skipped:
        lines.append(f"Skipped {len(skipped)} file(s):")
        lines += [f"  {item['source_file']}: {item['reason']}" for item in skipped]
    lines.append(
        f"Outputs in {output}: results.json and one folder per volume (SOPInstanceUID) "
        "with sr.dcm, seg.dcm, report.dcm"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the app; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    os.environ.setdefault("HOLOSCAN_LOG_LEVEL", "ERROR")
    # The SDK configures logging when the app starts; until then, the same format.
    logging.basicConfig(
        level=args.log_level.replace("WARN", "WARNING") if args.log_level else "INFO",
        format="[%(asctime)s] [%(levelname)s] (%(name)s) - %(message)s",
    )

    from operators.bundle_path import resolve_bundle
    from operators.dicom_input import NoOCTInputError, require_oct_input

    try:
        scan = require_oct_input(args.input)
        bundle = resolve_bundle(args.model)
    except (NoOCTInputError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import warnings

    warnings.filterwarnings("ignore", message="Current stack size", category=RuntimeWarning)
    from monai_app.app import OCTGlaucomaApp
    from operators.steps import add_skipped_to_results

    app = OCTGlaucomaApp([sys.executable, "monai_app", *argv], model_path=bundle, files=scan.files)
    try:
        app.run()
    except Exception as exc:  # holoscan re-raises operator errors after logging them
        print(f"error: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    if not app.results:
        print("error: no volume was processed", file=sys.stderr)
        return 1
    skipped = scan.skipped_entries()
    add_skipped_to_results(args.output, skipped)
    print(_summary(app.results, Path(args.output), skipped))
    return 0


if __name__ == "__main__":
    ensure_stack_limit()
    sys.exit(main())
