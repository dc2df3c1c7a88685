"""Command line: ``python -m monai_app.node --config node.yaml [run|status|retry [JOB...]]``.

``run`` (default) starts the node and blocks until SIGTERM or SIGINT, then stops cleanly: no new
associations, the job being processed finishes, pending jobs stay queued for the next start.
``status`` prints the queue as JSON; ``retry`` puts failed jobs back in the queue.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from monai_app.node.config import ConfigError, NodeConfig, load_config

LOG = logging.getLogger("monai_app.node")


def setup_logging(config: NodeConfig) -> None:
    """Log to stderr (and ``log_file``). pynetdicom stays at WARNING: its debug output can
    include dataset summaries, and node logs must never carry patient data."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if config.log_file is not None:
        config.log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(config.log_file, encoding="utf-8"))
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(config.log_level.upper())
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m monai_app.node",
        description="DICOM node for the OCT glaucoma application (C-STORE SCP -> pipeline -> "
        "C-STORE SCU).",
    )
    parser.add_argument("--config", "-c", type=Path, default=None,
                        help="YAML configuration (default: built-in defaults)")
    parser.add_argument("command", nargs="?", default="run", choices=["run", "status", "retry"])
    parser.add_argument("jobs", nargs="*", help="job ids for 'retry' (default: all failed)")
    return parser


def run(config: NodeConfig) -> int:
    """Run the node in the foreground until SIGTERM/SIGINT."""
    from monai_app.node.memory import limit_malloc_arenas
    from monai_app.node.service import DicomNode

    limit_malloc_arenas()  # before the receiver's threads exist
    try:
        node = DicomNode(config)  # opens the spool and its queue
    except Exception as exc:  # noqa: BLE001  (unwritable spool, corrupt queue: one clear line)
        LOG.error("node failed to start: %s: %s", type(exc).__name__, exc)
        LOG.debug("start-up traceback", exc_info=True)
        return 1

    def on_signal(signum: int, _frame: object) -> None:
        LOG.info("received %s: refusing new associations, finishing the current job, then "
                 "stopping",
                 signal.Signals(signum).name)
        # Not inline: the main thread may hold the lock of an Event that request_stop sets.
        threading.Thread(target=node.begin_stop, name="stop-request", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        node.start()
    except Exception as exc:  # noqa: BLE001  (port in use, no model bundle, ...: one clear line)
        LOG.error("node failed to start: %s: %s", type(exc).__name__, exc)
        LOG.debug("start-up traceback", exc_info=True)
        node.stop()
        return 1
    try:
        node.run_worker()
    finally:
        node.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "status":
        from monai_app.node.service import job_table

        print(json.dumps(job_table(config), indent=2))
        return 0
    if args.command == "retry":
        from monai_app.node.service import requeue_failed

        retried = requeue_failed(config, args.jobs or None)
        print(json.dumps({"requeued": retried}))
        return 0
    setup_logging(config)
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
