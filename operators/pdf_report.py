"""One-page A4 PDF report of one OCT volume, and its Encapsulated PDF DICOM instance.

The page shows patient and study identification, the eye, P(glaucoma) with the label on a 0-1
scale with the decision threshold, the model card's intended-use line, an en-face projection
(mean over depth, an (S, W) image) with the CARE and Grad-CAM overlays, and one key B-scan from
each hemiretina (the most salient of the superior half ``S[:S/2]`` and of the inferior half
``S[S/2:]``) with both overlays. A volume that could not be assessed gets a page stating the
reason instead.

The page is written directly as PDF 1.4 (ISO 32000-1 keeps its syntax), which costs about 16
ms (2-core EPYC) where a plotting library's PDF backend cost about 230 ms per volume:

- text in the standard Type 1 fonts Helvetica and Helvetica-Bold (WinAnsiEncoding; not embedded,
  every viewer has them) and Symbol for the arrows; text the encoding lacks (e.g. a CJK patient
  name) is transliterated or shown as "?" on the page only: the DICOM attributes keep it intact;
- the images resampled in numpy to :data:`IMAGE_DPI` on paper: each greyscale OCT image
  (DeviceGray) stored once and drawn in each of its panels, the heat-maps on top as Indexed
  images on the colour map's table with a soft mask of alpha ``0.55 * value`` (PDF 1.4
  transparency: the viewer blends, as it did with the plotting library's RGBA images); the pixel
  rows are PNG-"Sub" filtered, then deflated (FlateDecode).

The Encapsulated PDF instance (PS3.3 A.45.1; SOP Class 1.2.840.10008.5.1.4.1.1.104.1) carries
the source's patient and study, its own series (Modality DOC), the equipment attributes and a
Source Instance reference to the OPT.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import math
import unicodedata
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from operators.equipment import AlgorithmInfo, output_series_number
from operators.oct_volume import OCTVolume

ENCAPSULATED_PDF_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.104.1"
DOCUMENT_TITLE = "Glaucoma AI report (OCT)"
SERIES_DESCRIPTION = "Glaucoma AI report (PDF)"

A4_POINTS = (595.276, 841.890)
"""Page size, width x height in PDF points (1/72 inch): ISO A4, 210 x 297 mm."""

IMAGE_DPI = 150
"""Resolution of the page's images: they are resampled (bilinear) to their size on paper."""

_MAX_SOURCE_PIXELS = 400  # larger source images are block-averaged first (anti-aliasing)
_OVERLAY_ALPHA = 0.55
_MAP_CMAP = "inferno"
_ZLIB_LEVEL = 1  # measured: level 2 saves 6 % of the bytes for 6 % more time, 3-6 ~2-5x
_GLAUCOMA_COLOUR = "#b2182b"
_NORMAL_COLOUR = "#2166ac"
_MUTED = "#555555"
_BLACK = "#000000"

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


def render_report_pdf(source: OCTVolume | Dataset, outcome: object, info: AlgorithmInfo) -> bytes:
    """Render the one-page A4 report as PDF bytes.

    Args:
        source: the OCT volume, or the OPT Dataset alone when the volume could not be read.
        outcome: a ``model.predictor.Prediction``, or the "not assessable" reason as a string.
        info: algorithm and application identity.
    """
    dataset = source.dataset if isinstance(source, OCTVolume) else source
    laterality = source.laterality if isinstance(source, OCTVolume) else _laterality(dataset)
    page = _Page()
    _header(page, dataset, laterality)
    if isinstance(outcome, str) or not isinstance(source, OCTVolume):
        _not_assessable(page, str(outcome), info)
    else:
        _result(page, outcome, info)
        _images(page, source, outcome)
    _footer(page, dataset, info)
    return page.pdf(
        {
            "Title": DOCUMENT_TITLE,
            "Author": f"{info.app_name} {info.app_version}",
            "Subject": f"Glaucoma AI result, {info.model_name} {info.model_version}",
            "Creator": f"{info.app_name} {info.app_version}",
            "Producer": f"{info.app_name} {info.app_version}",
        }
    )


def load_tables() -> None:
    """Load the colour table and the font metrics now (they are cached): a process pays this
    once, about 10 ms, at start-up rather than in its first report."""
    _colour_table()
    for font in _FONTS:
        _widths(font)


def _x(fraction: float) -> float:
    """A horizontal page position, from a fraction of the page width."""
    return fraction * A4_POINTS[0]


def _y(fraction: float) -> float:
    """A vertical page position (from the bottom), from a fraction of the page height."""
    return fraction * A4_POINTS[1]


_LEFT, _RIGHT = _x(0.06), _x(0.94)  # text margins


def _laterality(dataset: Dataset) -> str | None:
    value = str(dataset.get("ImageLaterality", "") or "").upper()
    return value if value in ("R", "L") else None


def _eye(laterality: str | None) -> str:
    return {"R": "Right eye (OD)", "L": "Left eye (OS)"}.get(laterality or "", "Unknown eye")


def _person_name(value: Any) -> str:
    """The name as "Family, Given Middle", from the alphabetic group of a PN value (PS3.5
    6.2.1.1); the ideographic or phonetic group only when there is no alphabetic one."""
    groups = [g for g in str(value or "").split("=") if g.strip("^ ")]
    parts = [p for p in (groups[0] if groups else "").split("^") if p]
    if not parts:
        return "(no name)"
    return parts[0] + (", " + " ".join(parts[1:]) if len(parts) > 1 else "")


def _date(value: Any) -> str:
    text = str(value or "")
    if len(text) >= 8 and text[:8].isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:8]}"
    return text or "-"


def _header(page: _Page, ds: Dataset, laterality: str | None) -> None:
    page.text(_LEFT, _y(0.955), DOCUMENT_TITLE, 17, bold=True)
    page.text(_RIGHT, _y(0.958), _eye(laterality), 13, bold=True, align="right")
    page.rect(_LEFT, _y(0.947), _RIGHT - _LEFT, 1.3, fill=_BLACK)
    sex = str(ds.get("PatientSex") or "-")
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
    for column, stop, rows in ((0.06, 0.50, left), (0.52, 0.94, right)):
        for row, (key, value) in enumerate(rows):
            y = _y(0.925 - row * 0.018)
            page.text(_x(column), y, key, 9, colour=_MUTED)
            value_x = _x(column + 0.14)
            page.text(value_x, y, page.fit(value, 9, _x(stop) - value_x), 9)


def _result(page: _Page, prediction: Any, info: AlgorithmInfo) -> None:
    probability = float(prediction.probability)
    colour = _GLAUCOMA_COLOUR if prediction.glaucoma else _NORMAL_COLOUR
    page.text(_LEFT, _y(0.853), "Result", 11, bold=True)
    page.text(_LEFT, _y(0.823), prediction.label.capitalize(), 20, bold=True, colour=colour)
    page.text(_LEFT, _y(0.803), f"P(glaucoma) = {probability:.2f}", 12)
    _probability_scale(page, probability, colour, info.threshold)
    _intended_use(page, info, _y(0.765))


def _probability_scale(page: _Page, probability: float, colour: str, threshold: float) -> None:
    """A 0-1 bar filled up to the probability, ticks every 0.25, the threshold dashed."""
    x, y, width, height = _x(0.45), _y(0.808), _x(0.49), _y(0.03)
    page.rect(x, y, width, height, fill="#eeeeee")
    page.rect(x, y, width * min(max(probability, 0.0), 1.0), height, fill=colour)
    if 0.0 <= threshold <= 1.0:
        tx = x + width * threshold
        page.line(tx, y, tx, y + height, _BLACK, 1.2, dash=(4.4, 1.9))
    page.rect(x, y, width, height, stroke=_BLACK)
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        tx = x + width * tick
        page.line(tx, y, tx, y - 3.5, _BLACK, 0.8)
        page.text(tx, y - 3.5 - 3.5 - 5.1, f"{tick:.2f}", 7, align="center")
    page.text(
        x + width / 2,
        y + height + 6,
        f"P(glaucoma) on a 0-1 scale; dashed line: decision threshold {threshold:g}",
        7,
        colour=_MUTED,
        align="center",
    )


def _intended_use(page: _Page, info: AlgorithmInfo, top: float) -> float:
    """The intended-use line in a framed box whose top is at ``top``; returns the box bottom."""
    text = info.intended_use or "Intended use not declared by the model bundle."
    size, pad = 8.5, 4.25
    lines = page.wrap(f"Intended use: {text}", size, _RIGHT - _LEFT, max_lines=4)
    leading = 1.2 * size
    bottom = top - 0.718 * size - (len(lines) - 1) * leading - 0.207 * size - pad
    page.rounded_rect(
        _LEFT - pad, bottom, _RIGHT - _LEFT + 2 * pad, top + pad - bottom, pad, "#fff4e0", "#e08214"
    )
    for row, line in enumerate(lines):
        page.text(_LEFT, top - 0.718 * size - row * leading, line, size, colour="#7f3b08")
    return bottom


def _paragraph(page: _Page, x: float, top: float, text: str, size: float, **style: Any) -> float:
    """Text wrapped between ``x`` and the right margin, first line's top at ``top``; returns the
    position under the last line."""
    leading = 1.2 * size
    lines = page.wrap(text, size, _RIGHT - x, max_lines=6)
    for row, line in enumerate(lines):
        page.text(x, top - 0.718 * size - row * leading, line, size, **style)
    return top - len(lines) * leading


def _not_assessable(page: _Page, reason: str, info: AlgorithmInfo) -> None:
    page.text(_LEFT, _y(0.853), "Result", 11, bold=True)
    page.text(_LEFT, _y(0.815), "Not assessable", 20, bold=True, colour="#444444")
    page.text(_LEFT, _y(0.775), "The volume could not be assessed by the model:", 10)
    below = _paragraph(page, _x(0.08), _y(0.765), reason[:300], 10)
    below = _paragraph(
        page,
        _LEFT,
        min(below, _y(0.70)) - 6,
        "No probability was computed. Check the scan and its export; repeat the acquisition "
        "if needed.",
        9,
        colour=_MUTED,
    )
    _intended_use(page, info, below - 18)


def _images(page: _Page, volume: OCTVolume, prediction: Any) -> None:
    """The en-face row (OCT, + CARE, + Grad-CAM) and the four key B-scan panels."""
    voxels = volume.voxels
    care = np.asarray(prediction.care, dtype=np.float32)
    gradcam = np.asarray(prediction.gradcam, dtype=np.float32)
    s_spacing, d_spacing, w_spacing = volume.spacing_mm
    left, right = ("Temporal", "Nasal") if volume.laterality == "R" else ("Nasal", "Temporal")
    key_scans = key_bscans(care, gradcam)

    # En-face: the mean intensity over depth D; maps: their maximum over depth, so that a
    # thin hot layer stays visible.
    page.text(_LEFT, _y(0.705), "En-face projection", 11, bold=True)
    subtitle = "OCT: mean over depth; heat-maps: maximum over depth"
    page.text(_x(0.305), _y(0.705), subtitle, 8, colour=_MUTED)
    en_face = voxels.mean(axis=1, dtype=np.float32)
    rows, columns = en_face.shape
    axes = (_x(0.06), _y(0.515), _x(0.27), _y(0.17))
    box = _fit(axes, en_face.shape, _aspect(s_spacing, w_spacing))
    grey = page.grey_image(en_face, box)
    panels = (("OCT", None), ("OCT + CARE", care.max(axis=1)), ("OCT + Grad-CAM", gradcam.max(1)))
    for column, (title, heat) in enumerate(panels):
        x, y, width, height = box = (_x(0.06 + column * 0.305), *box[1:])
        page.draw_image(grey, box)
        if heat is not None:
            page.draw_image(page.heat_image(heat, box), box)
        for index in key_scans.values():
            line_y = y + height * (1 - (index + 0.5) / rows)
            page.line(x, line_y, x + width, line_y, "#00d0ff", 0.8, dash=(0.8, 1.3))
        page.rect(x, y, width, height, stroke=_BLACK)
        page.text(x + width / 2, y + height + 6, title, 9, align="center")
        page.text(
            x + width / 2, y - 9, f"{left}  \u2190  A-scans  \u2192  {right}", 7, align="center"
        )
        if column == 0:
            label = "Inferior  \u2190  B-scans  \u2192  Superior"
            page.text(x - 5, y + height / 2, label, 7, align="center", rotate=True)

    page.text(_LEFT, _y(0.465), "Key B-scans", 11, bold=True)
    page.text(
        _x(0.205),
        _y(0.465),
        "the most salient B-scan of each hemiretina (dotted lines on the en-face images)",
        8,
        colour=_MUTED,
    )
    b_aspect = _aspect(d_spacing, w_spacing, stretch=3.0)  # depth 3x: the layers stay visible
    for row, (hemiretina, index) in enumerate(key_scans.items()):
        axes = (_x(0.06), _y(0.275 - row * 0.195), _x(0.39), _y(0.16))
        box = _fit(axes, voxels.shape[1:], b_aspect)
        grey = page.grey_image(voxels[index], box)
        for column, (title, volume_map) in enumerate((("CARE", care), ("Grad-CAM", gradcam))):
            x, y, width, height = box = (_x(0.06 + column * 0.42), *box[1:])
            page.draw_image(grey, box)
            page.draw_image(page.heat_image(volume_map[index], box), box)
            page.rect(x, y, width, height, stroke=_BLACK)
            page.text(
                x + width / 2,
                y + height + 6,
                f"{hemiretina.capitalize()} hemiretina, B-scan {index + 1}/{voxels.shape[0]}"
                f" + {title}",
                8.5,
                align="center",
            )
            page.text(x + width / 2, y - 9, f"{left}  \u2190  \u2192  {right}", 7, align="center")
    _colour_bar(page, (_x(0.905), _y(0.09), _x(0.012), _y(0.34)))


def _colour_bar(page: _Page, box: tuple[float, float, float, float]) -> None:
    """The heat-map colour scale, 0 at the bottom, ticks every 0.2, label on its left."""
    x, y, width, height = box
    page.draw_image(page.colour_scale(), box)
    page.rect(x, y, width, height, stroke=_BLACK)
    for step in range(6):
        ty = y + height * step / 5
        page.line(x + width, ty, x + width + 3, ty, _BLACK, 0.8)
        page.text(x + width + 4.5, ty - 2.1, f"{step / 5:.1f}", 6)
    page.text(x - 4, y + height / 2, "Heat-map value (0-1)", 7, align="center", rotate=True)


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


def _aspect(row_mm: float, column_mm: float, stretch: float = 1.0) -> float:
    """Display aspect (pixel height / width) from the spacings; NaN if unknown."""
    if not (math.isfinite(row_mm) and math.isfinite(column_mm)) or min(row_mm, column_mm) <= 0:
        return math.nan
    return stretch * row_mm / column_mm


def _fit(
    axes: tuple[float, float, float, float], shape: tuple[int, ...], aspect: float
) -> tuple[float, float, float, float]:
    """The largest box of the image's display shape centred in ``axes`` (x, y, width, height).

    ``aspect`` is the height of one pixel over its width on the page (row over column spacing);
    an unknown aspect (not finite or not positive) fills the axes.
    """
    x, y, width, height = axes
    if not (math.isfinite(aspect) and aspect > 0):
        return axes
    ratio = shape[0] * aspect / shape[1]  # displayed height / width
    if ratio * width <= height:
        return x, y + (height - ratio * width) / 2, width, ratio * width
    return x + (width - height / ratio) / 2, y, height / ratio, height


def _footer(page: _Page, ds: Dataset, info: AlgorithmInfo) -> None:
    page.rect(_LEFT, _y(0.052), _RIGHT - _LEFT, 0.8, fill="#999999")
    text = (
        f"Model {info.model_name} {info.model_version}; {info.app_name} {info.app_version}. "
        "Heat-maps show where the model looked (CARE: attention features; Grad-CAM: class "
        "evidence), not lesions.\n"
        f"Source OPT instance {ds.get('SOPInstanceUID', '')}; generated "
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}. AI output, to be reviewed by a clinician."
    )
    lines = [line for part in text.split("\n") for line in page.wrap(part, 6.5, _RIGHT - _LEFT)]
    for row, line in enumerate(lines[:4]):
        page.text(_LEFT, _y(0.038) - row * 7.8, line, 6.5, colour=_MUTED)


# --- images ----------------------------------------------------------------------------------


def _block_average(image: np.ndarray) -> np.ndarray:
    """Block-average a 2-D image so that neither side exceeds :data:`_MAX_SOURCE_PIXELS`."""
    factors = [max(1, math.ceil(n / _MAX_SOURCE_PIXELS)) for n in image.shape]
    if factors == [1, 1]:
        return image
    rows, columns = (n // f * f for n, f in zip(image.shape, factors, strict=True))
    trimmed = image[:rows, :columns].astype(np.float32)
    return trimmed.reshape(rows // factors[0], factors[0], columns // factors[1], factors[1]).mean(
        axis=(1, 3)
    )


def _resample(image: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Bilinear resampling of a 2-D image to ``rows`` x ``columns`` (pixel centres aligned)."""
    image = _block_average(image).astype(np.float32, copy=False)
    height, width = image.shape
    y = np.clip((np.arange(rows, dtype=np.float32) + 0.5) * (height / rows) - 0.5, 0, height - 1)
    x = np.arange(columns, dtype=np.float32)
    x = np.clip((x + 0.5) * (width / columns) - 0.5, 0, width - 1)
    y0, x0 = y.astype(np.intp), x.astype(np.intp)
    y1, x1 = np.minimum(y0 + 1, height - 1), np.minimum(x0 + 1, width - 1)
    fy, fx = (y - y0)[:, None], x - x0
    along_rows = image[y0] * (1 - fy) + image[y1] * fy
    return along_rows[:, x0] * (1 - fx) + along_rows[:, x1] * fx


def _to_bytes(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats to 0-255 bytes."""
    return (np.clip(values, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _windowed(image: np.ndarray) -> np.ndarray:
    """Grey image windowed at its 1st-99.5th percentiles, in [0, 1]."""
    low, high = np.percentile(image, [1.0, 99.5])
    return (image - np.float32(low)) / np.float32(max(high - low, 1e-6))


@functools.cache
def _colour_table() -> bytes:
    """The heat-map colour map as 256 RGB triplets (the Indexed colour space's lookup table)."""
    from matplotlib import colormaps  # only its colour table: paid once per process

    rgb = colormaps[_MAP_CMAP](np.linspace(0.0, 1.0, 256))[:, :3]
    return (rgb * 255 + 0.5).astype(np.uint8).tobytes()


@functools.cache
def _alpha_table() -> np.ndarray:
    """Heat-map byte -> soft-mask byte: alpha = 0.55 x value."""
    return (np.arange(256) * _OVERLAY_ALPHA + 0.5).astype(np.uint8)


@dataclass(eq=False)
class _Image:
    """An image XObject: 8-bit samples, one component (grey or colour-table index)."""

    pixels: np.ndarray  # (rows, columns) uint8
    indexed: bool = False  # True: index into the colour table, else DeviceGray
    soft_mask: _Image | None = None
    is_mask: bool = False  # a soft mask: referenced by its image, not drawn
    name: str = ""

    def stream(self) -> tuple[str, bytes]:
        """The image dictionary entries (without /Length) and the deflated samples."""
        rows, columns = self.pixels.shape
        # PNG "Sub" predictor on every row: the horizontal differences deflate better and faster.
        filtered = np.empty((rows, columns + 1), np.uint8)
        filtered[:, 0] = 1
        filtered[:, 1] = self.pixels[:, 0]
        np.subtract(self.pixels[:, 1:], self.pixels[:, :-1], out=filtered[:, 2:])
        data = zlib.compress(filtered.tobytes(), _ZLIB_LEVEL)
        entries = (
            f"/Type /XObject /Subtype /Image /Width {columns} /Height {rows} "
            "/BitsPerComponent 8 /Filter /FlateDecode "
            f"/DecodeParms << /Predictor 15 /Colors 1 /BitsPerComponent 8 /Columns {columns} >>"
        )
        return entries, data


# --- text ------------------------------------------------------------------------------------


_FONTS = {"regular": "Helvetica", "bold": "Helvetica-Bold", "symbol": "Symbol"}
_FONT_KEYS = {"regular": "F1", "bold": "F2", "symbol": "F3"}
# Characters set in Symbol (built-in encoding): Helvetica has no arrows.
_SYMBOL_CODES = {"\u2190": 0xAC, "\u2191": 0xAD, "\u2192": 0xAE, "\u2193": 0xAF}
# Letters that Unicode does not decompose to an accented Latin-1 letter.
_TRANSLITERATION = {"Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "Ħ": "H", "ħ": "h", "ı": "i"}
# WinAnsi characters that fontTools' glyph list names differently from the Adobe fonts.
_GLYPH_NAMES = {
    0xA0: "space",
    0xAD: "hyphen",
    0xB2: "twosuperior",
    0xB3: "threesuperior",
    0xB9: "onesuperior",
}


@functools.cache
def _widths(font: str) -> tuple[int, ...]:
    """Advance widths (1/1000 em) of the 256 codes of a standard font, from matplotlib's copy of
    Adobe's font metrics (AFM): WinAnsiEncoding for Helvetica, built-in encoding for Symbol."""
    import matplotlib

    path = Path(matplotlib.get_data_path(), "fonts", "pdfcorefonts", f"{_FONTS[font]}.afm")
    by_code, by_name = {}, {}
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith("C "):
            fields = dict(item.strip().split(" ", 1) for item in line.split(";") if item.strip())
            by_code[int(fields["C"])] = by_name[fields["N"]] = int(fields["WX"])
    if font == "symbol":
        return tuple(by_code.get(code, 0) for code in range(256))
    from fontTools.agl import UV2AGL  # a matplotlib dependency

    widths = [0] * 256
    for code in range(32, 256):
        try:
            character = bytes([code]).decode("cp1252")
        except UnicodeDecodeError:
            continue
        name = _GLYPH_NAMES.get(code) or UV2AGL.get(ord(character), "")
        widths[code] = by_name.get(name, by_name["space"])
    return tuple(widths)


@functools.lru_cache(maxsize=1024)
def _encode_character(character: str) -> bytes:
    """One character as WinAnsi bytes: itself, a transliteration, or "?"."""
    if character < " " or character == "\x7f":
        return b" "
    try:
        return character.encode("cp1252")
    except UnicodeEncodeError:
        pass
    text = _TRANSLITERATION.get(character) or unicodedata.normalize("NFKD", character)
    base = "".join(c for c in text if not unicodedata.combining(c))
    try:
        return base.encode("cp1252") if base else b"?"
    except UnicodeEncodeError:
        return b"?"


_CONTROLS_TO_SPACE = bytes(32 if code < 32 or code == 127 else code for code in range(256))


def _runs(text: str, bold: bool) -> list[tuple[str, bytes]]:
    """Text as (font, encoded bytes) runs: Helvetica(-Bold) in WinAnsi, Symbol for arrows."""
    main = "bold" if bold else "regular"
    try:  # the common case: all of it in WinAnsi
        return [(main, text.encode("cp1252").translate(_CONTROLS_TO_SPACE))]
    except UnicodeEncodeError:
        pass
    runs: list[tuple[str, bytearray]] = []
    for character in text:
        code = _SYMBOL_CODES.get(character)
        font, data = ("symbol", bytes([code])) if code else (main, _encode_character(character))
        if runs and runs[-1][0] == font:
            runs[-1][1].extend(data)
        else:
            runs.append((font, bytearray(data)))
    return [(font, bytes(data)) for font, data in runs]


def _string(data: bytes) -> str:
    """A PDF literal string (ASCII only: bytes above 126 as octal escapes)."""
    out = []
    for byte in data:
        if byte in b"()\\":
            out.append("\\" + chr(byte))
        elif 32 <= byte < 127:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    return "(" + "".join(out) + ")"


def _info_string(text: str) -> str:
    """A PDF text string for the document information: ASCII as is, else UTF-16BE with BOM."""
    if text.isascii():
        return _string(text.encode("ascii"))
    return "<FEFF" + text.encode("utf-16-be").hex().upper() + ">"


def _colour(hex_colour: str) -> tuple[float, float, float]:
    value = int(hex_colour.lstrip("#"), 16)
    return ((value >> 16) / 255, ((value >> 8) & 255) / 255, (value & 255) / 255)


def _n(value: float) -> str:
    """A number for the content stream."""
    return f"{value:.3f}".rstrip("0").rstrip(".") or "0"


# --- the page and its PDF file -----------------------------------------------------------------


@dataclass
class _Page:
    """A page under construction: content-stream operators and the images they draw."""

    ops: list[str] = field(default_factory=list)
    images: list[_Image] = field(default_factory=list)

    # text

    def width(self, text: str, size: float, bold: bool = False) -> float:
        """The advance width of ``text`` in points."""
        units = sum(sum(map(_widths(font).__getitem__, data)) for font, data in _runs(text, bold))
        return size * units / 1000

    def fit(self, text: str, size: float, width: float, bold: bool = False) -> str:
        """``text``, shortened with an ellipsis to fit ``width``."""
        if self.width(text, size, bold) <= width:
            return text
        while text and self.width(text + "\u2026", size, bold) > width:
            text = text[:-1]
        return text.rstrip() + "\u2026"

    def wrap(
        self, text: str, size: float, width: float, bold: bool = False, max_lines: int = 8
    ) -> list[str]:
        """``text`` broken into lines at spaces (inside over-long words if need be)."""
        lines: list[str] = []
        for word in text.split():
            candidate = f"{lines[-1]} {word}" if lines else word
            if lines and self.width(candidate, size, bold) <= width:
                lines[-1] = candidate
                continue
            while self.width(word, size, bold) > width:  # a word longer than the line
                cut = len(word) - 1
                while cut > 1 and self.width(word[:cut], size, bold) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            lines.append(word)
        if len(lines) > max_lines:
            lines = lines[:max_lines]
            lines[-1] = self.fit(lines[-1] + " \u2026", size, width, bold)
        return lines

    def text(
        self,
        x: float,
        y: float,
        text: str,
        size: float,
        *,
        bold: bool = False,
        colour: str = _BLACK,
        align: str = "left",
        rotate: bool = False,
    ) -> None:
        """Text with its baseline at ``y``; ``align`` left/center/right about ``x``; ``rotate``:
        90 degrees anticlockwise (reads bottom to top; ``align`` then applies along y)."""
        shift = {"left": 0.0, "center": 0.5, "right": 1.0}[align] * self.width(text, size, bold)
        if rotate:
            matrix = f"0 1 -1 0 {_n(x)} {_n(y - shift)}"
        else:
            matrix = f"1 0 0 1 {_n(x - shift)} {_n(y)}"
        parts = ["BT", "{} {} {} rg".format(*map(_n, _colour(colour))), f"{matrix} Tm"]
        for font, data in _runs(text, bold):
            parts.append(f"/{_FONT_KEYS[font]} {_n(size)} Tf {_string(data)} Tj")
        parts.append("ET")
        self.ops.append(" ".join(parts))

    # vector graphics

    def rect(
        self,
        x: float,
        y: float,
        width: float,
        height: float,
        *,
        fill: str | None = None,
        stroke: str | None = None,
        line_width: float = 0.8,
    ) -> None:
        """A filled and/or stroked rectangle."""
        box = f"{_n(x)} {_n(y)} {_n(width)} {_n(height)} re"
        if fill:
            self.ops.append("{} {} {} rg ".format(*map(_n, _colour(fill))) + box + " f")
        if stroke:
            colour = "{} {} {} RG".format(*map(_n, _colour(stroke)))
            self.ops.append(f"{colour} {_n(line_width)} w [] 0 d {box} S")

    def rounded_rect(
        self, x: float, y: float, width: float, height: float, radius: float, fill: str, stroke: str
    ) -> None:
        """A filled and stroked rectangle with quarter-circle corners (Bezier approximation)."""
        k = radius * (1 - 0.5523)  # control point inset of a quarter circle
        right, top = x + width, y + height
        path = [
            f"{_n(x + radius)} {_n(y)} m",
            f"{_n(right - radius)} {_n(y)} l",
            f"{_n(right - k)} {_n(y)} {_n(right)} {_n(y + k)} {_n(right)} {_n(y + radius)} c",
            f"{_n(right)} {_n(top - radius)} l",
            f"{_n(right)} {_n(top - k)} {_n(right - k)} {_n(top)} {_n(right - radius)} {_n(top)} c",
            f"{_n(x + radius)} {_n(top)} l",
            f"{_n(x + k)} {_n(top)} {_n(x)} {_n(top - k)} {_n(x)} {_n(top - radius)} c",
            f"{_n(x)} {_n(y + radius)} l",
            f"{_n(x)} {_n(y + k)} {_n(x + k)} {_n(y)} {_n(x + radius)} {_n(y)} c",
        ]
        self.ops.append(
            "{} {} {} rg ".format(*map(_n, _colour(fill)))
            + "{} {} {} RG 0.8 w [] 0 d ".format(*map(_n, _colour(stroke)))
            + " ".join(path)
            + " b"
        )

    def line(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        colour: str,
        line_width: float,
        dash: tuple[float, float] | None = None,
    ) -> None:
        """A straight line, solid or dashed (dash, gap)."""
        pattern = f"[{_n(dash[0])} {_n(dash[1])}] 0 d" if dash else "[] 0 d"
        self.ops.append(
            "{} {} {} RG ".format(*map(_n, _colour(colour)))
            + f"{_n(line_width)} w {pattern} {_n(x0)} {_n(y0)} m {_n(x1)} {_n(y1)} l S"
        )

    # images

    def _add(self, image: _Image) -> _Image:
        image.name = f"Im{len(self.images) + 1}"
        self.images.append(image)
        return image

    @staticmethod
    def _pixels(box: tuple[float, float, float, float]) -> tuple[int, int]:
        """Rows and columns of an image drawn in ``box`` at :data:`IMAGE_DPI`."""
        scale = IMAGE_DPI / 72
        return max(1, round(box[3] * scale)), max(1, round(box[2] * scale))

    def grey_image(self, image: np.ndarray, box: tuple[float, float, float, float]) -> _Image:
        """A greyscale image (windowed at the 1st-99.5th percentiles) for ``box``'s size."""
        image = _block_average(np.asarray(image))
        return self._add(_Image(_to_bytes(_resample(_windowed(image), *self._pixels(box)))))

    def heat_image(self, heat: np.ndarray, box: tuple[float, float, float, float]) -> _Image:
        """A heat-map overlay for ``box``: colour-table indices, soft mask 0.55 x value."""
        index = _to_bytes(_resample(np.asarray(heat, dtype=np.float32), *self._pixels(box)))
        mask = self._add(_Image(_alpha_table()[index], is_mask=True))
        return self._add(_Image(index, indexed=True, soft_mask=mask))

    def colour_scale(self) -> _Image:
        """The colour table as a one-pixel-wide column, 1 at the top."""
        return self._add(_Image(np.arange(255, -1, -1, dtype=np.uint8)[:, None], indexed=True))

    def draw_image(self, image: _Image, box: tuple[float, float, float, float]) -> None:
        """Paint an image into ``box`` (x, y, width, height); its first row at the top."""
        x, y, width, height = box
        self.ops.append(f"q {_n(width)} 0 0 {_n(height)} {_n(x)} {_n(y)} cm /{image.name} Do Q")

    # the file

    def pdf(self, metadata: dict[str, str]) -> bytes:
        """The one-page PDF 1.4 file: catalog, page tree, page, contents, fonts, images, info."""
        objects: list[bytes] = []  # object n is objects[n - 1]

        def add(body: bytes | str) -> int:
            objects.append(body.encode("latin-1") if isinstance(body, str) else body)
            return len(objects)

        def stream(entries: str, data: bytes) -> bytes:
            head = f"<< {entries} /Length {len(data)} >>\nstream\n".encode()
            return head + data + b"\nendstream"

        catalog = add("<< /Type /Catalog /Pages 2 0 R >>")
        add("<< /Type /Pages /Kids [3 0 R] /Count 1 >>")
        page = add("")  # filled in below, once the resources have numbers
        contents = add(
            stream("/Filter /FlateDecode", zlib.compress("\n".join(self.ops).encode(), 6))
        )
        fonts = " ".join(
            f"/{_FONT_KEYS[key]} "
            + str(
                add(
                    f"<< /Type /Font /Subtype /Type1 /BaseFont /{name}"
                    + ("" if key == "symbol" else " /Encoding /WinAnsiEncoding")
                    + " >>"
                )
            )
            + " 0 R"
            for key, name in _FONTS.items()
        )
        table = add(stream("", _colour_table()))
        numbers: dict[int, int] = {}
        for image in sorted(self.images, key=lambda i: i.soft_mask is not None):
            entries, data = image.stream()
            space = f"[/Indexed /DeviceRGB 255 {table} 0 R]" if image.indexed else "/DeviceGray"
            entries += f" /ColorSpace {space}"
            if image.soft_mask is not None:
                entries += f" /SMask {numbers[id(image.soft_mask)]} 0 R"
            numbers[id(image)] = add(stream(entries, data))
        xobjects = " ".join(
            f"/{image.name} {numbers[id(image)]} 0 R" for image in self.images if not image.is_mask
        )
        objects[page - 1] = (
            "<< /Type /Page /Parent 2 0 R "
            f"/MediaBox [0 0 {_n(A4_POINTS[0])} {_n(A4_POINTS[1])}] "
            f"/Resources << /Font << {fonts} >> /XObject << {xobjects} >> "
            "/ProcSet [/PDF /Text /ImageB /ImageI] >> "
            f"/Contents {contents} 0 R >>"
        ).encode()
        now = datetime.datetime.now().astimezone()
        offset = now.strftime("%z") or "+0000"
        created = now.strftime("D:%Y%m%d%H%M%S") + f"{offset[0]}{offset[1:3]}'{offset[3:5]}'"
        info = add(
            "<< "
            + " ".join(f"/{key} {_info_string(value)}" for key, value in metadata.items())
            + f" /CreationDate {_string(created.encode())} >>"
        )

        out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
        offsets = []
        for number, body in enumerate(objects, start=1):
            offsets.append(len(out))
            out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
        xref = len(out)
        out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
        out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
        # File identifier (14.4): a hash of the page's text and drawing, and of the time.
        identifier = hashlib.md5(objects[contents - 1] + objects[info - 1], usedforsecurity=False)
        identifier = identifier.hexdigest().upper()
        out += (
            f"trailer\n<< /Size {len(objects) + 1} /Root {catalog} 0 R /Info {info} 0 R "
            f"/ID [<{identifier}> <{identifier}>] >>\nstartxref\n{xref}\n%%EOF\n"
        ).encode()
        return bytes(out)
