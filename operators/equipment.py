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


def output_character_set(source: Any) -> str | list[str] | None:
    """SpecificCharacterSet (0008,0005) for an output of ``source``, in a form highdicom takes.

    The source's own value, except that an empty first value of a code-extension list (the
    default repertoire, as in the usual Japanese ``\\ISO 2022 IR 87``) is spelled out as
    ``ISO 2022 IR 6`` (PS3.3 C.12.1.1.2), and a value highdicom does not know becomes
    ``ISO_IR 192`` (UTF-8): pydicom has decoded the source's text, and UTF-8 encodes all of it,
    so the patient's name is carried over unchanged either way. A source without the attribute
    gets ``None`` (the default repertoire), unless a patient or study value is not ASCII (a
    non-conformant source; pydicom decoded it as Latin-1): then ``ISO_IR 192`` too.
    """
    from highdicom.enum import SpecificCharacterSetValues  # not needed by the callers' callers

    value = source.get("SpecificCharacterSet")
    if not value:
        texts = (str(source.get(keyword, "") or "") for keyword in PATIENT_STUDY_KEYWORDS)
        return None if all(text.isascii() for text in texts) else "ISO_IR 192"
    values = [str(v).strip() for v in ([value] if isinstance(value, str) else value)]
    if len(values) > 1 and not values[0]:
        values[0] = "ISO 2022 IR 6"
    try:
        for item in values:
            SpecificCharacterSetValues(item)
    except ValueError:
        return "ISO_IR 192"
    return values[0] if len(values) == 1 else values


# --- the source's patient and study, for highdicom --------------------------------------------

PATIENT_STUDY_KEYWORDS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
"""Patient and General Study attributes (PS3.3 C.7.1.1, C.7.2.1) every output copies; Type 2 in
the source, so present in the output even when empty."""


def tolerant_source(source: Any) -> Any:
    """A view of ``source`` that highdicom accepts whatever the source's patient and study values.

    highdicom reads these attributes from its source image and converts them, so a missing Type 2
    attribute, a date written ``1960-01-01`` or a sex written ``female`` (all seen in vendor
    exports) would cost the volume its SR and SEG. In the view, which shares every other element
    with the source, such values are empty; :func:`restore_patient_study` then puts the source's
    values, exactly as they are, on the output, so that it carries the identity of its volume.
    """
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset
    from pydicom.valuerep import DA, TM

    view = Dataset({tag: source.get_item(tag, keep_deferred=True) for tag in source.keys()})
    meta = getattr(source, "file_meta", None)
    if meta is not None:
        view.file_meta = meta
    for keyword in PATIENT_STUDY_KEYWORDS:
        try:
            value = source.get(keyword)
            if keyword in ("PatientBirthDate", "StudyDate"):
                value = DA(value) if value else None
            elif keyword == "StudyTime":
                value = TM(value) if value else None
            elif keyword == "PatientSex" and value not in ("M", "F", "O"):
                value = None
        except Exception:  # malformed: the view has it empty, the output gets it back as is
            value = None
        # A new element, not ``setattr``: that would change the element the source shares.
        tag = tag_for_keyword(keyword)
        view[tag] = DataElement(tag, dictionary_VR(tag), value if value is not None else "")
    return view


def restore_patient_study(output: Any, source: Any) -> None:
    """Copy the source's patient and study values onto ``output`` unchanged (see
    :func:`tolerant_source`); attributes the source lacks stay as highdicom wrote them."""
    from pydicom.dataelem import DataElement

    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            element = source[keyword]
            output[element.tag] = DataElement(element.tag, element.VR, element.value)
