"""Configuration of the DICOM node: one YAML file, every key optional.

Every setting has a default that works on a single machine (Orthanc on the same host, AE title
``ORTHANC``, DICOM port 4242). Unknown keys are errors, so a typo never silently falls back to a
default. Relative paths are resolved against the directory of the configuration file.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: ``worker.process_function``: ``package.module:function`` (attribute paths allowed).
_FUNCTION_SPEC_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")

#: Ophthalmic Tomography Image Storage (PS3.4 B.5): the only SOP class the pipeline reads.
OPT_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.77.1.5.4"


class ConfigError(ValueError):
    """Invalid node configuration; the message names the offending key."""


def _check_ae_title(value: str, key: str) -> str:
    """Validate an AE title (PS3.5 6.2: AE VR, at most 16 characters, no backslash)."""
    if not isinstance(value, str) or not value.strip() or len(value) > 16 or "\\" in value:
        raise ConfigError(f"{key}: {value!r} is not a valid AE title (1-16 characters, no '\\')")
    return value.strip()


@dataclass(frozen=True)
class AllowedCaller:
    """One entry of the association allow-list: a calling AE title, optionally tied to a host."""

    ae_title: str
    #: Peer IP address the association must come from; None accepts any address.
    host: str | None = None


@dataclass(frozen=True)
class TLSConfig:
    """TLS for one side of the node (PS3.15 B.1 "Basic TLS Secure Transport Connection Profile").

    Receive side: ``cert_file``/``key_file`` are the node's certificate; with ``verify_peer`` the
    caller must present a certificate signed by ``ca_file`` (mutual TLS).
    Send side: ``ca_file`` verifies the destination's certificate (``verify_peer``); ``cert_file``/
    ``key_file`` are an optional client certificate.
    """

    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    verify_peer: bool = True
    #: Send side only: name checked against the destination certificate (default: its host).
    server_hostname: str | None = None


@dataclass(frozen=True)
class DestinationConfig:
    """Where results are stored by C-STORE (normally the PACS the volume came from)."""

    ae_title: str = "ORTHANC"
    host: str = "127.0.0.1"
    port: int = 4242
    #: Calling AE title used when sending; None uses the node's own ``ae_title``.
    calling_ae_title: str | None = None
    #: Delivery attempts before a job is marked failed (50 with the backoff below is ~4 h).
    max_attempts: int = 50
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 300.0
    #: Network, ACSE and DIMSE timeout of one association.
    timeout_s: float = 60.0
    tls: TLSConfig = field(default_factory=TLSConfig)


@dataclass(frozen=True)
class WorkerConfig:
    """The in-process pipeline run on each complete series."""

    #: Model bundle directory; None uses the application's default bundle.
    model_path: Path | None = None
    #: Processing attempts (including ones interrupted by a crash) before a job is failed.
    max_attempts: int = 3
    retry_delay_s: float = 10.0
    #: Run the pipeline once on a synthetic volume at start-up (before listening), so the first
    #: real series does not pay for the model load and the first graph run.
    warmup: bool = True
    #: Processing function as ``package.module:function``, called like the pipeline as
    #: ``process(input_dir, output_dir)``; None runs the glaucoma pipeline. Lets a real node
    #: process run without the model (the crash tests run a stub) or run another pipeline.
    process_function: str | None = None


@dataclass(frozen=True)
class NodeConfig:
    """The whole node configuration (see ``deploy/node.example.yaml`` for the documented file)."""

    ae_title: str = "MONAI-OCT"
    #: Listen address; 127.0.0.1 keeps the node private to this machine.
    bind_address: str = "127.0.0.1"
    port: int = 11112
    #: Calling AE titles (optionally with host) allowed to associate; all others are rejected.
    allowed_callers: tuple[AllowedCaller, ...] = (AllowedCaller("ORTHANC"),)
    #: SOP classes that are spooled and processed; others are acknowledged and dropped (as the
    #: MONAI Informatics Gateway's ``allowedSopClasses``). Empty: keep everything.
    accept_sop_classes: tuple[str, ...] = (OPT_SOP_CLASS_UID,)
    max_associations: int = 10
    #: Seconds without a new instance after which a series counts as complete.
    quiet_period_s: float = 3.0
    #: Spool directory (created 0700): received files, job folders, the SQLite queue.
    spool_dir: Path = Path("node-spool")
    #: Below this much free space in the spool, associations and C-STOREs are refused.
    min_free_mb: int = 200
    #: JSON-lines audit log; None puts it at ``<spool_dir>/audit.jsonl``.
    audit_log: Path | None = None
    log_level: str = "INFO"
    #: Optional log file (in addition to stderr).
    log_file: Path | None = None
    tls: TLSConfig = field(default_factory=TLSConfig)
    destination: DestinationConfig = field(default_factory=DestinationConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)

    @property
    def audit_path(self) -> Path:
        """Path of the audit log."""
        return self.audit_log if self.audit_log is not None else self.spool_dir / "audit.jsonl"

    @property
    def sending_ae_title(self) -> str:
        """Calling AE title used for C-STORE to the destination."""
        return self.destination.calling_ae_title or self.ae_title


def _convert(value: Any, hint: Any, key: str, base: Path) -> Any:
    """Convert one YAML value to the field type ``hint``, resolving paths against ``base``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], key, base)
    if dataclasses.is_dataclass(hint):
        if hint is AllowedCaller and isinstance(value, str):
            value = {"ae_title": value}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(hint, value, key, base)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        item_hint = typing.get_args(hint)[0]
        return tuple(_convert(v, item_hint, f"{key}[{i}]", base) for i, v in enumerate(value))
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a path string, got {value!r}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base / path)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if hint is int and value != int(value):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return hint(value)
    if hint is str:
        if not isinstance(value, str | int):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {hint!r}")  # pragma: no cover


def _build(cls: type, data: dict[str, Any], where: str, base: Path) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _convert(value, hints[name], key, base)
    return cls(**kwargs)


def _with_ae_titles_checked(config: NodeConfig) -> NodeConfig:
    """The config with every AE title validated and stripped of padding spaces.

    Peers' AE titles arrive stripped, so a padded title in the file would never match them.
    """
    destination = config.destination
    calling = destination.calling_ae_title
    return dataclasses.replace(
        config,
        ae_title=_check_ae_title(config.ae_title, "ae_title"),
        destination=dataclasses.replace(
            destination,
            ae_title=_check_ae_title(destination.ae_title, "destination.ae_title"),
            calling_ae_title=None if calling is None
            else _check_ae_title(calling, "destination.calling_ae_title"),
        ),
        allowed_callers=tuple(
            dataclasses.replace(
                caller, ae_title=_check_ae_title(caller.ae_title, f"allowed_callers[{i}].ae_title")
            )
            for i, caller in enumerate(config.allowed_callers)
        ),
    )


def _validate(config: NodeConfig) -> NodeConfig:
    """Check value ranges and cross-field constraints; returns the normalised config."""
    config = _with_ae_titles_checked(config)
    if not config.allowed_callers:
        raise ConfigError("allowed_callers: the allow-list is empty, so no PACS could connect")
    for key, port in (("port", config.port), ("destination.port", config.destination.port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{key}: {port} is not a TCP port")
    positive = {
        "quiet_period_s": config.quiet_period_s,
        "max_associations": config.max_associations,
        "destination.max_attempts": config.destination.max_attempts,
        "destination.backoff_initial_s": config.destination.backoff_initial_s,
        "destination.backoff_max_s": config.destination.backoff_max_s,
        "destination.timeout_s": config.destination.timeout_s,
        "worker.max_attempts": config.worker.max_attempts,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")
    spec = config.worker.process_function
    if spec is not None and not _FUNCTION_SPEC_RE.fullmatch(spec):
        raise ConfigError(f"worker.process_function: {spec!r} is not 'package.module:function'")
    if config.min_free_mb < 0 or config.worker.retry_delay_s < 0:
        raise ConfigError("min_free_mb and worker.retry_delay_s must be >= 0")
    if config.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"log_level: unknown level {config.log_level!r}")
    if config.tls.enabled:
        if config.tls.cert_file is None or config.tls.key_file is None:
            raise ConfigError("tls: cert_file and key_file are required when enabled")
        if config.tls.verify_peer and config.tls.ca_file is None:
            raise ConfigError("tls: verify_peer needs ca_file (the CA that signs callers)")
    dest_tls = config.destination.tls
    if dest_tls.enabled and (dest_tls.cert_file is None) != (dest_tls.key_file is None):
        raise ConfigError("destination.tls: give both cert_file and key_file, or neither")
    return config


def parse_config(data: dict[str, Any] | None, base_dir: Path | None = None) -> NodeConfig:
    """Build a validated :class:`NodeConfig` from a mapping (as loaded from YAML).

    Args:
        data: the mapping; None or empty gives the defaults.
        base_dir: directory that relative paths are resolved against (default: the CWD).
    """
    base = (base_dir or Path.cwd()).resolve()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the configuration file must hold a YAML mapping")
    config = _build(NodeConfig, data, "", base)
    if "spool_dir" not in data:
        config = dataclasses.replace(config, spool_dir=base / config.spool_dir)
    return _validate(config)


def load_config(path: str | Path | None = None) -> NodeConfig:
    """Load the node configuration from a YAML file (None: all defaults, paths from the CWD)."""
    if path is None:
        return parse_config({})
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return parse_config(data, path.parent)
