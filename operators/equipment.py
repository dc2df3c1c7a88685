"""Identity of the application and its model, as written into every output object.

The result objects carry the application's name and version and the model's name and version in
the General / Enhanced General Equipment attributes (PS3.3 C.7.5.1, C.7.5.2): Manufacturer,
ManufacturerModelName, SoftwareVersions, DeviceSerialNumber. Output UIDs are derived from the
source instance and this identity, so re-running the same application and model on the same
study gives the same UIDs, and a PACS replaces rather than duplicates the results.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

APP_NAME = "OCT Glaucoma AI"
"""ManufacturerModelName of every output object."""

APP_VERSION = "0.1.0"
"""Application version, first value of SoftwareVersions."""

MANUFACTURER = "OCT Glaucoma AI open-source project"
"""Manufacturer of every output object."""

OUTPUT_KINDS = ("sr", "seg", "report")
"""The DICOM outputs of one volume: TID 1500 SR, FRACTIONAL SEG, Encapsulated PDF report."""

_SERIES_NUMBER_OFFSET = {"sr": 1, "seg": 2, "report": 3}
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:oct-glaucoma-ai:outputs")


def _host_name() -> str:
    return (socket.gethostname() or "unknown")[:64]  # LO: 64 characters at most


@dataclass(frozen=True)
class AlgorithmInfo:
    """The algorithm (model) and application behind a result.

    Attributes:
        model_name: the model bundle's name.
        model_version: the model bundle's version.
        intended_use: the model card's intended-use line, printed on the report.
        threshold: decision threshold on P(glaucoma).
        app_name: ManufacturerModelName of the outputs.
        app_version: application version.
        manufacturer: Manufacturer of the outputs.
        device_serial_number: DeviceSerialNumber of the outputs (the host name by default).
    """

    model_name: str
    model_version: str
    intended_use: str = ""
    threshold: float = 0.5
    app_name: str = APP_NAME
    app_version: str = APP_VERSION
    manufacturer: str = MANUFACTURER
    device_serial_number: str = field(default_factory=_host_name)

    @classmethod
    def from_metadata(cls, metadata: Any, **overrides: Any) -> AlgorithmInfo:
        """Build from a model bundle's metadata (``model.bundle.BundleMetadata``)."""
        values = {
            "model_name": str(getattr(metadata, "name", "unknown model")),
            "model_version": str(getattr(metadata, "version", "unknown")),
            "intended_use": str(getattr(metadata, "intended_use", "") or ""),
            "threshold": float(getattr(metadata, "threshold", 0.5)),
        }
        values.update(overrides)
        return cls(**values)

    @property
    def software_versions(self) -> list[str]:
        """SoftwareVersions (0018,1020) values: the application's, then the model's."""
        return [
            f"{self.app_name} {self.app_version}"[:64],
            f"{self.model_name} {self.model_version}"[:64],
        ]

    def equipment(self) -> dict[str, Any]:
        """Equipment keyword arguments of highdicom's SOP classes."""
        return {
            "manufacturer": self.manufacturer,
            "manufacturer_model_name": self.app_name,
            "software_versions": self.software_versions,
            "device_serial_number": self.device_serial_number,
        }

    def output_uid(self, source_sop_instance_uid: str, kind: str, level: str) -> str:
        """A deterministic UID for one output of one source instance.

        Args:
            source_sop_instance_uid: SOPInstanceUID of the OPT volume.
            kind: one of :data:`OUTPUT_KINDS`.
            level: "series" or "instance".
        """
        parts = (
            source_sop_instance_uid,
            kind,
            level,
            self.app_name,
            self.app_version,
            self.model_name,
            self.model_version,
        )
        # A UUID-derived UID (PS3.5 B.2): 2.25 + the decimal of a name-based (SHA-1) UUID.
        return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '|'.join(parts)).int}"


def output_series_number(source_series_number: Any, kind: str) -> int:
    """SeriesNumber of an output: 100 x the source's plus 1 (SR), 2 (SEG) or 3 (report).

    Outputs of the OPT in series 4 are series 401-403, so they sort next to their source in a
    viewer; a source without SeriesNumber gives 9901-9903.
    """
    offset = _SERIES_NUMBER_OFFSET[kind]
    try:
        base = int(source_series_number)
    except (TypeError, ValueError):
        base = 99
    number = 100 * base + offset
    return number if 0 < number < 2**31 else 9900 + offset
