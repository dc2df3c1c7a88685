"""One-page A4 PDF report of one OCT volume, and its Encapsulated PDF DICOM instance.

The page (matplotlib's PDF backend, no pyplot state) shows patient and study identification, the
eye, P(glaucoma) with the label on a 0-1 scale with the decision threshold, the model card's
intended-use line, an en-face projection (mean over depth, an (S, W) image) with the CARE and
Grad-CAM overlays, and one key B-scan from each hemiretina (the most salient of the superior half
``S[:S/2]`` and of the inferior half ``S[S/2:]``) with both overlays. A volume that could not be
assessed gets a page stating the reason instead.

The Encapsulated PDF instance (PS3.3 A.45.1; SOP Class 1.2.840.10008.5.1.4.1.1.104.1) carries
the source's patient and study, its own series (Modality DOC), the equipment attributes and a
Source Instance reference to the OPT.
"""

from __future__ import annotations

import datetime
import io
import math
from typing import Any

import numpy as np
from matplotlib import colormaps, rc_context
from matplotlib.backends.backend_pdf import FigureCanvasPdf
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from operators.equipment import AlgorithmInfo, output_series_number
from operators.oct_volume import OCTVolume

ENCAPSULATED_PDF_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.104.1"
DOCUMENT_TITLE = "Glaucoma AI report (OCT)"
SERIES_DESCRIPTION = "Glaucoma AI report (PDF)"

A4_INCHES = (8.27, 11.69)
_MAX_DISPLAY_PIXELS = 400  # images are block-averaged to this size: a small, sharp-enough PDF
_OVERLAY_ALPHA = 0.55
_MAP_CMAP = "inferno"
_GLAUCOMA_COLOUR = "#b2182b"
_NORMAL_COLOUR = "#2166ac"
_MUTED = "#555555"

# Patient and General Study attributes copied from the source (PS3.3 C.7.1.1, C.7.2.1).
_PATIENT_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_PATIENT_STUDY_OPTIONAL = (
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "OtherPatientIDsSequence",
    "PatientAge",
    "StudyDescription",
    "IssuerOfAccessionNumberSequence",
)


# --- DICOM instance --------------------------------------------------------------------------


def build_pdf_report(
    source: OCTVolume | Dataset,
    outcome: object,
    info: AlgorithmInfo,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """Render the report and wrap it as an Encapsulated PDF instance (Explicit VR Little Endian).

    Args:
        source: the OCT volume, or the OPT Dataset alone when the volume could not be read.
        outcome: a ``model.predictor.Prediction``, or the "not assessable" reason as a string.
        info: algorithm and application identity.
        series_instance_uid: defaults to a UID derived from the source and ``info``.
        sop_instance_uid: likewise.
    """
    return encapsulate_pdf(
        render_report_pdf(source, outcome, info),
        source.dataset if isinstance(source, OCTVolume) else source,
        info,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
    )


def encapsulate_pdf(
    pdf: bytes,
    source: Dataset,
    info: AlgorithmInfo,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """Wrap PDF bytes as an Encapsulated PDF instance in the source's patient and study."""
    if not pdf.startswith(b"%PDF-"):
        raise ValueError("not a PDF document")
    source_uid = str(source.SOPInstanceUID)
    sop_uid = sop_instance_uid or info.output_uid(source_uid, "report", "instance")
    now = datetime.datetime.now()

    ds = Dataset()
    ds.SpecificCharacterSet = source.get("SpecificCharacterSet", "ISO_IR 192")
    ds.SOPClassUID = ENCAPSULATED_PDF_SOP_CLASS_UID
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    for keyword in _PATIENT_STUDY_TYPE2:
        setattr(ds, keyword, source.get(keyword, ""))
    for keyword in _PATIENT_STUDY_OPTIONAL:
        if keyword in source:
            ds[keyword] = source[keyword]
    ds.StudyInstanceUID = source.StudyInstanceUID
    # Encapsulated Document Series (C.24.1)
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_instance_uid or info.output_uid(source_uid, "report", "series")
    ds.SeriesNumber = output_series_number(source.get("SeriesNumber"), "report")
    ds.SeriesDescription = SERIES_DESCRIPTION
    # General Equipment (C.7.5.1) and SC Equipment (C.8.6.1)
    ds.Manufacturer = info.manufacturer
    ds.ManufacturerModelName = info.app_name
    ds.SoftwareVersions = info.software_versions
    ds.DeviceSerialNumber = info.device_serial_number
    ds.ConversionType = "WSD"  # workstation
    # Encapsulated Document (C.24.2)
    ds.InstanceNumber = 1
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"  # the page names the patient
    ds.DocumentTitle = DOCUMENT_TITLE
    ds.ConceptNameCodeSequence = Sequence()
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source_uid
    ds.SourceInstanceSequence = Sequence([reference])
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")  # OB values have even length

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF_SOP_CLASS_UID
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return ds


# --- the page --------------------------------------------------------------------------------


# Type 3 fonts: text stays searchable, and rendering skips the TrueType subsetting that costs
# about 0.1-0.2 s per page with Type 42.
_STYLE = {"pdf.fonttype": 3, "font.size": 9, "font.family": "DejaVu Sans"}


def report_figure(source: OCTVolume | Dataset, outcome: object, info: AlgorithmInfo) -> Figure:
    """The report page as a matplotlib Figure (A4 portrait), not tied to pyplot.

    Args:
        source: the OCT volume, or the OPT Dataset alone when the volume could not be read.
        outcome: a ``model.predictor.Prediction``, or the "not assessable" reason as a string.
        info: algorithm and application identity.
    """
    dataset = source.dataset if isinstance(source, OCTVolume) else source
    laterality = source.laterality if isinstance(source, OCTVolume) else _laterality(dataset)
    with rc_context(_STYLE):
        fig = Figure(figsize=A4_INCHES)
        FigureCanvasPdf(fig)
        _header(fig, dataset, laterality)
        if isinstance(outcome, str) or not isinstance(source, OCTVolume):
            _not_assessable(fig, str(outcome), info)
        else:
            _result(fig, outcome, info)
            _images(fig, source, outcome)
        _footer(fig, dataset, info)
    return fig


def render_report_pdf(source: OCTVolume | Dataset, outcome: object, info: AlgorithmInfo) -> bytes:
    """Render the one-page A4 report (:func:`report_figure`) as PDF bytes."""
    fig = report_figure(source, outcome, info)
    with rc_context(_STYLE):
        buffer = io.BytesIO()
        fig.savefig(
            buffer,
            format="pdf",
            metadata={
                "Title": DOCUMENT_TITLE,
                "Author": f"{info.app_name} {info.app_version}",
                "Subject": f"Glaucoma AI result, {info.model_name} {info.model_version}",
                "Creator": f"{info.app_name} {info.app_version}",
            },
        )
    return buffer.getvalue()


def _laterality(dataset: Dataset) -> str | None:
    value = str(dataset.get("ImageLaterality", "") or "").upper()
    return value if value in ("R", "L") else None


def _eye(laterality: str | None) -> str:
    return {"R": "Right eye (OD)", "L": "Left eye (OS)"}.get(laterality or "", "Unknown eye")


def _person_name(value: Any) -> str:
    parts = [p for p in str(value or "").split("^") if p]
    if not parts:
        return "(no name)"
    return parts[0] + (", " + " ".join(parts[1:]) if len(parts) > 1 else "")


def _date(value: Any) -> str:
    text = str(value or "")
    if len(text) >= 8 and text[:8].isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:8]}"
    return text or "-"


def _header(fig: Figure, ds: Dataset, laterality: str | None) -> None:
    fig.text(0.06, 0.955, DOCUMENT_TITLE, fontsize=17, weight="bold")
    fig.text(0.94, 0.958, _eye(laterality), fontsize=13, weight="bold", ha="right")
    fig.add_artist(
        Rectangle((0.06, 0.947), 0.88, 0.0015, transform=fig.transFigure, color="black", lw=0)
    )
    sex = ds.get("PatientSex") or "-"
    left = [
        ("Patient", _person_name(ds.get("PatientName"))),
        ("Patient ID", str(ds.get("PatientID", "") or "-")),
        ("Birth date / sex", f"{_date(ds.get('PatientBirthDate'))} / {sex}"),
    ]
    right = [
        ("Study date", _date(ds.get("StudyDate"))),
        ("Accession", str(ds.get("AccessionNumber", "") or "-")),
        ("Series", str(ds.get("SeriesDescription", "") or ds.get("SeriesNumber", "-"))),
    ]
    for column, rows in ((0.06, left), (0.52, right)):
        for row, (key, value) in enumerate(rows):
            y = 0.925 - row * 0.018
            fig.text(column, y, key, color=_MUTED)
            fig.text(column + 0.14, y, value[:48])


def _result(fig: Figure, prediction: Any, info: AlgorithmInfo) -> None:
    probability = float(prediction.probability)
    colour = _GLAUCOMA_COLOUR if prediction.glaucoma else _NORMAL_COLOUR
    fig.text(0.06, 0.853, "Result", fontsize=11, weight="bold")
    fig.text(
        0.06,
        0.823,
        f"{prediction.label.capitalize()}",
        fontsize=20,
        weight="bold",
        color=colour,
    )
    fig.text(0.06, 0.803, f"P(glaucoma) = {probability:.2f}", fontsize=12)
    # Probability scale with the decision threshold.
    ax = fig.add_axes((0.45, 0.808, 0.49, 0.03))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.barh(0.5, 1, height=1, color="#eeeeee")
    ax.barh(0.5, probability, height=1, color=colour)
    ax.axvline(info.threshold, color="black", lw=1.2, ls="--")
    ax.set_yticks([])
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1])
    ax.tick_params(labelsize=7)
    ax.set_title(
        f"P(glaucoma) on a 0-1 scale; dashed line: decision threshold {info.threshold:g}",
        fontsize=7,
        color=_MUTED,
    )
    _intended_use(fig, info, 0.765)


def _intended_use(fig: Figure, info: AlgorithmInfo, y: float) -> None:
    text = info.intended_use or "Intended use not declared by the model bundle."
    fig.text(
        0.06,
        y,
        f"Intended use: {text}",
        fontsize=8.5,
        color="#7f3b08",
        wrap=True,
        va="top",
        bbox={"boxstyle": "round,pad=0.5", "fc": "#fff4e0", "ec": "#e08214", "lw": 0.8},
    )


def _not_assessable(fig: Figure, reason: str, info: AlgorithmInfo) -> None:
    fig.text(0.06, 0.853, "Result", fontsize=11, weight="bold")
    fig.text(0.06, 0.815, "Not assessable", fontsize=20, weight="bold", color="#444444")
    fig.text(0.06, 0.775, "The volume could not be assessed by the model:", fontsize=10)
    fig.text(0.08, 0.750, reason[:300], fontsize=10, wrap=True, va="top")
    fig.text(
        0.06,
        0.69,
        "No probability was computed. Check the scan and its export; repeat the acquisition "
        "if needed.",
        fontsize=9,
        color=_MUTED,
        wrap=True,
    )
    _intended_use(fig, info, 0.66)


def _images(fig: Figure, volume: OCTVolume, prediction: Any) -> None:
    voxels = volume.voxels.astype(np.float32)
    care = np.asarray(prediction.care, dtype=np.float32)
    gradcam = np.asarray(prediction.gradcam, dtype=np.float32)
    s_spacing, d_spacing, w_spacing = volume.spacing_mm
    left, right = ("Temporal", "Nasal") if volume.laterality == "R" else ("Nasal", "Temporal")

    # En-face: the mean intensity over depth D; maps: their maximum over depth, so that a
    # thin hot layer stays visible.
    en_face = voxels.mean(axis=1)
    maps = {"CARE": care.max(axis=1), "Grad-CAM": gradcam.max(axis=1)}
    key_scans = key_bscans(care, gradcam)
    fig.text(0.06, 0.705, "En-face projection", fontsize=11, weight="bold")
    fig.text(
        0.305,
        0.705,
        "OCT: mean over depth; heat-maps: maximum over depth",
        fontsize=8,
        color=_MUTED,
    )
    aspect = _aspect(s_spacing, w_spacing)
    panels = [("OCT", None)] + list(maps.items())
    for column, (title, overlay) in enumerate(panels):
        ax = fig.add_axes((0.06 + column * 0.305, 0.515, 0.27, 0.17))
        _show(ax, en_face, overlay, aspect)
        ax.set_title(title if overlay is None else f"OCT + {title}", fontsize=9)
        for index in key_scans.values():
            ax.axhline(index, color="#00d0ff", lw=0.8, ls=":")
        ax.set_xlabel(f"{left}  \u2190  A-scans  \u2192  {right}", fontsize=7)
        if column == 0:
            ax.set_ylabel("Inferior  \u2190  B-scans  \u2192  Superior", fontsize=7)

    fig.text(0.06, 0.465, "Key B-scans", fontsize=11, weight="bold")
    fig.text(
        0.205,
        0.465,
        "the most salient B-scan of each hemiretina (dotted lines on the en-face images)",
        fontsize=8,
        color=_MUTED,
    )
    b_aspect = _aspect(d_spacing, w_spacing, stretch=3.0)
    for row, (hemiretina, index) in enumerate(key_scans.items()):
        for column, (title, volume_map) in enumerate((("CARE", care), ("Grad-CAM", gradcam))):
            ax = fig.add_axes((0.06 + column * 0.46, 0.275 - row * 0.195, 0.42, 0.16))
            _show(ax, voxels[index], volume_map[index], b_aspect)
            ax.set_title(
                f"{hemiretina.capitalize()} hemiretina, B-scan {index + 1}/{voxels.shape[0]}"
                f" + {title}",
                fontsize=8.5,
            )
            ax.set_xlabel(f"{left}  \u2190  \u2192  {right}", fontsize=7)
    colour_bar = fig.add_axes((0.955, 0.09, 0.012, 0.34))
    fig.colorbar(_scalar_mappable(), cax=colour_bar).set_label("Heat-map value (0-1)", fontsize=7)
    colour_bar.tick_params(labelsize=6)


def _scalar_mappable() -> Any:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    return ScalarMappable(norm=Normalize(0, 1), cmap=_MAP_CMAP)


def key_bscans(care: np.ndarray, gradcam: np.ndarray) -> dict[str, int]:
    """Index of the most salient B-scan (mean of both maps) in each hemiretina.

    Superior is ``S[:S/2]``, inferior ``S[S/2:]``; ties (e.g. all-zero maps) take the middle of
    the half.
    """
    n = care.shape[0]
    half = n // 2
    score = care.mean(axis=(1, 2)) + gradcam.mean(axis=(1, 2))
    result = {}
    for name, start, stop in (("superior", 0, half), ("inferior", half, n)):
        part = score[start:stop]
        if part.size == 0 or np.allclose(part, part[0]):
            result[name] = (start + stop) // 2
        else:
            result[name] = start + int(np.argmax(part))
    return result


def _aspect(row_mm: float, column_mm: float, stretch: float = 1.0) -> float | str:
    """Display aspect (pixel height / width) from the spacings, or 'auto' if unknown."""
    if not (math.isfinite(row_mm) and math.isfinite(column_mm)) or column_mm <= 0:
        return "auto"
    return stretch * row_mm / column_mm


def _downsample(image: np.ndarray) -> np.ndarray:
    """Block-average a 2-D image so that neither side exceeds the display size."""
    factors = [max(1, math.ceil(n / _MAX_DISPLAY_PIXELS)) for n in image.shape]
    if factors == [1, 1]:
        return image
    rows, columns = (n // f * f for n, f in zip(image.shape, factors, strict=True))
    trimmed = image[:rows, :columns]
    return trimmed.reshape(rows // factors[0], factors[0], columns // factors[1], factors[1]).mean(
        axis=(1, 3)
    )


def _show(ax: Any, image: np.ndarray, overlay: np.ndarray | None, aspect: float | str) -> None:
    """Grey image windowed at the 1st-99.5th percentiles, optional heat-map with value-alpha."""
    image = np.asarray(image, dtype=np.float32)
    height, width = image.shape
    image = _downsample(image)
    low, high = np.percentile(image, [1.0, 99.5])
    grey = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    # Extent in source pixels, so that annotations use source indices whatever the downsampling.
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    ax.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="bilinear", extent=extent)
    if overlay is not None:
        heat = np.clip(_downsample(np.asarray(overlay, dtype=np.float32)), 0, 1)
        rgba = colormaps[_MAP_CMAP](heat)
        rgba[..., 3] = _OVERLAY_ALPHA * heat
        ax.imshow(rgba, interpolation="bilinear", extent=extent)
    ax.set_aspect(aspect, adjustable="box")
    ax.set_xticks([])
    ax.set_yticks([])


def _footer(fig: Figure, ds: Dataset, info: AlgorithmInfo) -> None:
    fig.add_artist(
        Rectangle((0.06, 0.052), 0.88, 0.001, transform=fig.transFigure, color="#999999", lw=0)
    )
    lines = [
        f"Model {info.model_name} {info.model_version}; {info.app_name} {info.app_version}. "
        "Heat-maps show where the model looked (CARE: attention features; Grad-CAM: class "
        "evidence), not lesions.",
        f"Source OPT instance {ds.get('SOPInstanceUID', '')}; generated "
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}. AI output, to be reviewed by a clinician.",
    ]
    for row, line in enumerate(lines):
        fig.text(0.06, 0.038 - row * 0.014, line, fontsize=6.5, color=_MUTED)
