"""Read an Ophthalmic Tomography Image (OPT) instance into an OCT volume.

Pure pydicom: no MONAI Deploy SDK import, so the training CLI can use it too.

One OPT instance holds the whole cube, one frame per B-scan (PS3.3 A.52). The frames are put in
their true spatial order, not the storage order, using the Multi-frame Functional Groups
(PS3.3 C.7.6.16): Plane Position (Patient) projected on the stack normal given by Plane
Orientation (Patient), else Frame Content > InStackPositionNumber. The result follows the
project's axis convention: ``voxels`` is shaped (S, D, W) = (B-scans, axial depth, A-scans) and
S index 0 is the most superior B-scan.

Input checks raise :class:`OCTVolumeError` with a reason a person can act on; the application
turns it into a "not assessable" result for that volume and goes on with the others.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.datadict
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.pixels import pixel_array as decode_pixel_array

OPT_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
"""Ophthalmic Tomography Image Storage (PS3.4 B.5)."""

MIN_FRAMES = 8
"""Fewer B-scans than this is a line or few-line raster scan, not a cube the model can assess."""

MIN_ROWS_COLUMNS = 8
"""Smaller B-scans than this (rows or columns) carry no usable retinal structure."""

MAX_DECODED_BYTES = 2 * 1024**3
"""Refuse volumes whose declared decoded size exceeds this (2 GiB), before allocating anything."""

DEFER_BYTES = 1024**2
"""Element values longer than this are read only when used (pydicom ``defer_size``), so that a
declared length is checked against the file size before anything that large is allocated."""

BITS_ALLOCATED = (8, 16)
"""OPT pixel data is 8 or 16 bits, unsigned MONOCHROME2 (PS3.3 C.8.17.3, Ophthalmic Tomography
Image Module)."""

_UNDEFINED_LENGTH = 0xFFFFFFFF
_SEQUENCE_DELIMITER = {
    True: b"\xfe\xff\xdd\xe0\x00\x00\x00\x00",  # (FFFE,E0DD), length 0, little endian
    False: b"\xff\xfe\xe0\xdd\x00\x00\x00\x00",
}

# Relative tolerances of the geometry checks.
_DUPLICATE_POSITION_MM = 1e-4
_SPACING_TOLERANCE = 0.2
_ORIENTATION_TOLERANCE = 1e-3
_UNIT_TOLERANCE = 1e-2  # direction cosines are often written with few digits

_UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")  # digits and dots, no empty component

_LATERALITY_ALIASES = {"R": "R", "L": "L", "OD": "R", "OS": "L"}


class OCTVolumeError(ValueError):
    """An OPT instance that cannot be assessed; the message names the file and the reason.

    Attributes:
        reason: the reason alone (no file name), suitable for a report.
        source: the file path or SOP Instance UID of the instance, or ``None``.
    """

    def __init__(self, reason: str, source: str | Path | None = None) -> None:
        # One printable line: it goes into logs, results.json and the SR's text (UT) item.
        reason = " ".join(reason.split())
        self.reason = "".join(c if c.isprintable() else "?" for c in reason)
        self.source = None if source is None else str(source)
        super().__init__(f"{self.source}: {self.reason}" if self.source else self.reason)


@dataclass(frozen=True)
class OCTVolume:
    """An OCT cube in true spatial order, with what the result writers need from the source.

    Attributes:
        voxels: (S, D, W) array as decoded (uint8 or uint16), frames sorted superior to inferior.
        spacing_mm: (between B-scans, axial, lateral) in mm; ``nan`` where the file declares
            none (the B-scan spacing of a file with neither positions nor slice spacing).
        laterality: "R" or "L".
        dataset: the source pydicom Dataset (header and pixel data), for references.
        frame_order: storage index (0-based) of each sorted frame: ``voxels[i]`` is stored frame
            ``frame_order[i]``.
        source_path: the file the volume was read from, if any.
        positions_mm: (S, 3) ImagePositionPatient of the sorted frames, or ``None`` without
            per-frame positions.
    """

    voxels: np.ndarray
    spacing_mm: tuple[float, float, float]
    laterality: str
    dataset: Dataset = field(repr=False)
    frame_order: np.ndarray
    source_path: Path | None = None
    positions_mm: np.ndarray | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(S, D, W)."""
        return tuple(int(n) for n in self.voxels.shape)  # type: ignore[return-value]

    @property
    def patient_id(self) -> str:
        """PatientID (0010,0020), "" if absent."""
        return str(self.dataset.get("PatientID", ""))

    @property
    def study_instance_uid(self) -> str:
        """StudyInstanceUID (0020,000D)."""
        return str(self.dataset.StudyInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        """SeriesInstanceUID (0020,000E)."""
        return str(self.dataset.SeriesInstanceUID)

    @property
    def sop_instance_uid(self) -> str:
        """SOPInstanceUID (0008,0018)."""
        return str(self.dataset.SOPInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str | None:
        """FrameOfReferenceUID (0020,0052), or ``None`` if absent."""
        uid = self.dataset.get("FrameOfReferenceUID")
        return str(uid) if uid else None


def read_oct_volume(path_or_dataset: str | Path | Dataset) -> OCTVolume:
    """Read one OPT instance (a file path or a Dataset) into an :class:`OCTVolume`.

    Compressed transfer syntaxes (RLE, JPEG, JPEG-LS, JPEG 2000) are decoded by pydicom's
    pixel-data plugins (pylibjpeg).

    Raises:
        OCTVolumeError: the input cannot be assessed; the message says why.
    """
    if isinstance(path_or_dataset, Dataset):
        ds = path_or_dataset
        filename = getattr(ds, "filename", None)
        path = Path(filename) if isinstance(filename, str | Path) else None
    else:
        path = Path(path_or_dataset)
        ds = read_dicom_file(path)
        truncated = truncation_reason(ds, path)
        if truncated:
            raise OCTVolumeError(truncated, path)
    try:
        source = path if path is not None else ds.get("SOPInstanceUID")
    except Exception:  # an unparseable UID: name the instance by nothing
        source = None
    try:
        return _read_volume(ds, path, source)
    except OCTVolumeError:
        raise
    except MemoryError as exc:
        raise OCTVolumeError("not enough memory to decode the volume", source) from exc
    except Exception as exc:  # a malformed value the checks did not foresee: still a reason
        raise OCTVolumeError(f"malformed header ({type(exc).__name__}: {exc})", source) from exc


def read_dicom_file(path: str | Path) -> Dataset:
    """Read a DICOM file (PS3.10), deferring large values; never raises anything but
    :class:`OCTVolumeError`.

    Values over :data:`DEFER_BYTES` are read when first used, so call :func:`truncation_reason`
    before using them: a declared length beyond the end of the file is then refused unread.
    """
    path = Path(path)
    try:
        return pydicom.dcmread(path, defer_size=DEFER_BYTES)
    except InvalidDicomError as exc:
        raise OCTVolumeError(
            "unreadable file: not DICOM (no 'DICM' prefix after the 128-byte preamble)", path
        ) from exc
    except Exception as exc:  # any parser failure makes the file unreadable
        raise OCTVolumeError(
            f"not a readable DICOM file ({type(exc).__name__}: {exc})", path
        ) from exc


def truncation_reason(ds: Dataset, path: str | Path) -> str | None:
    """Why ``ds``, just read from ``path``, is an incomplete file; ``None`` if it looks whole.

    pydicom stops quietly at the end of a truncated file. Here every top-level value must lie
    within the file, and the file must end where its last element does: with that element's
    value, or with the Sequence Delimitation Item (FFFE,E0DD) of an undefined-length last element
    (PS3.5 7.5.2, A.4). Only elements not yet converted by pydicom can be checked.
    """
    size = Path(path).stat().st_size
    last: RawDataElement | None = None
    for tag in sorted(ds.keys()):
        # keep_deferred: ``ds.elements()`` would read a deferred value, whatever its length.
        element = ds.get_item(tag, keep_deferred=True)
        if not isinstance(element, RawDataElement):
            continue
        if element.length != _UNDEFINED_LENGTH and element.value_tell + element.length > size:
            remaining = max(0, size - element.value_tell)
            return (
                f"truncated file: {_element_name(element)} declares {element.length} bytes, "
                f"the file holds {remaining}"
            )
        last = element
    if not len(ds):
        return "truncated file: no data elements after the file meta information"
    if last is None:
        return None
    if last.length == _UNDEFINED_LENGTH:
        with open(path, "rb") as stream:
            stream.seek(max(0, size - 8))
            tail = stream.read(8)
        if tail != _SEQUENCE_DELIMITER[bool(last.is_little_endian)]:
            return f"truncated file: it ends inside {_element_name(last)} (no delimiter)"
    elif size - (last.value_tell + last.length) >= 8:
        unread = size - (last.value_tell + last.length)
        return (
            f"truncated or corrupt file: {unread} bytes after {_element_name(last)} cannot be read"
        )
    return None


def _element_name(element: RawDataElement) -> str:
    """E.g. "pixel data (7FE0,0010)"."""
    tag = element.tag
    try:
        name = pydicom.datadict.dictionary_description(tag).lower()
    except KeyError:
        name = "private element"
    return f"{name} ({tag.group:04X},{tag.element:04X})"


def _read_volume(ds: Dataset, path: Path | None, source: Any) -> OCTVolume:
    _check_header(ds, source)
    laterality = _laterality(ds, source)
    groups = _FunctionalGroups(ds)
    _check_frame_items(groups, source)
    order, positions, slice_spacing = _frame_order(groups, source)
    axial, lateral = _pixel_spacing(ds, groups, source)
    if not math.isfinite(slice_spacing):
        slice_spacing = _declared_slice_spacing(groups, source)
    frames = _decode_frames(ds, source)
    # Reorder only when needed: a large cube is hundreds of MB.
    in_order = np.array_equal(order, np.arange(len(order)))
    voxels = np.ascontiguousarray(frames if in_order else frames[order])
    del frames
    _check_content(voxels, source)
    return OCTVolume(
        voxels=voxels,
        spacing_mm=(slice_spacing, axial, lateral),
        laterality=laterality,
        dataset=ds,
        frame_order=order,
        source_path=path,
        positions_mm=positions,
    )


# --- header checks ---------------------------------------------------------------------------


def _check_header(ds: Dataset, source: Any) -> None:
    """Check SOP class, identity, pixel description and pixel data length before decoding.

    Absurd sizes are refused from the declared dimensions alone, before anything is allocated.
    """
    sop_class = _text(ds, "SOPClassUID", source)
    if sop_class != OPT_SOP_CLASS_UID:
        raise OCTVolumeError(
            f"SOPClassUID {sop_class or '(missing)'} is not Ophthalmic Tomography Image Storage "
            f"({OPT_SOP_CLASS_UID})",
            source,
        )
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        uid = _text(ds, keyword, source)
        if not uid:
            raise OCTVolumeError(f"missing {keyword}", source)
        if not is_valid_uid(uid):
            # Results reference the volume by these; "..", for one, is no place for files.
            raise OCTVolumeError(f"invalid {keyword}: not a DICOM UID", source)
    if "PixelData" not in ds:  # not read yet: it is, below, once its size is known to be sane
        raise OCTVolumeError("missing pixel data (7FE0,0010)", source)
    rows, columns, bits = (_integer(ds, k, source) for k in ("Rows", "Columns", "BitsAllocated"))
    frames = _integer(ds, "NumberOfFrames", source, default=1)
    samples = _integer(ds, "SamplesPerPixel", source, default=1)
    if samples != 1:
        raise OCTVolumeError(f"SamplesPerPixel is {samples}; OCT B-scans are greyscale (1)", source)
    photometric = _text(ds, "PhotometricInterpretation", source)
    if photometric and photometric != "MONOCHROME2":
        # MONOCHROME1 would reach the model with inverted intensities.
        raise OCTVolumeError(
            f"PhotometricInterpretation is {photometric}; OPT B-scans are MONOCHROME2", source
        )
    if bits not in BITS_ALLOCATED:
        raise OCTVolumeError(f"BitsAllocated is {bits}; OPT pixel data is 8 or 16 bits", source)
    if frames < MIN_FRAMES:
        raise OCTVolumeError(
            f"too few B-scans: NumberOfFrames is {frames}, a volume scan needs at least "
            f"{MIN_FRAMES}",
            source,
        )
    if rows < MIN_ROWS_COLUMNS or columns < MIN_ROWS_COLUMNS:
        raise OCTVolumeError(
            f"B-scans too small: {rows} rows x {columns} columns (at least "
            f"{MIN_ROWS_COLUMNS} x {MIN_ROWS_COLUMNS})",
            source,
        )
    bytes_per_sample = bits // 8
    decoded = frames * rows * columns * bytes_per_sample
    if decoded > MAX_DECODED_BYTES:
        raise OCTVolumeError(
            f"declared size {frames} frames x {rows} rows x {columns} columns x "
            f"{bytes_per_sample} bytes = {decoded / 1024**3:.1f} GiB exceeds the "
            f"{MAX_DECODED_BYTES / 1024**3:.0f} GiB limit",
            source,
        )
    transfer_syntax = _transfer_syntax(ds, source)
    if not ds.PixelData:
        raise OCTVolumeError("missing pixel data (7FE0,0010): empty value", source)
    if transfer_syntax is None or not transfer_syntax.is_encapsulated:
        _check_native_length(len(ds.PixelData), frames, rows, columns, decoded, source)


def _check_native_length(
    stored: int, frames: int, rows: int, columns: int, expected: int, source: Any
) -> None:
    """Native pixel data holds exactly the declared frames, plus at most one padding byte."""
    if stored < expected:
        raise OCTVolumeError(
            f"pixel data shorter than declared: {stored} bytes for {frames} frames of "
            f"{rows} x {columns} ({expected} bytes expected)",
            source,
        )
    if stored > expected + 1:
        raise OCTVolumeError(
            f"pixel data longer than declared: {stored} bytes for {frames} frames of "
            f"{rows} x {columns} ({expected} bytes expected); NumberOfFrames, Rows, Columns or "
            "BitsAllocated is wrong",
            source,
        )


def _transfer_syntax(ds: Dataset, source: Any) -> pydicom.uid.UID | None:
    """The file's Transfer Syntax UID (``None`` for a Dataset built in memory); refuses unknown
    ones, whose pixel data no decoder can read."""
    file_meta = getattr(ds, "file_meta", None)
    uid = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if uid is None:
        return None
    uid = pydicom.uid.UID(str(uid))
    if not uid.is_transfer_syntax:
        raise OCTVolumeError(
            f"unknown transfer syntax {uid}: the pixel data cannot be decoded", source
        )
    try:
        available = get_decoder(uid).is_available
    except NotImplementedError:  # e.g. the MPEG and HEVC video syntaxes
        available = False
    if not available:
        raise OCTVolumeError(
            f"unsupported transfer syntax {uid.name} ({uid}): no decoder for its pixel data",
            source,
        )
    return uid


def is_valid_uid(value: str) -> bool:
    """Whether ``value`` has the form of a UID (PS3.5 9.1): at most 64 characters, digits and
    dots, no empty component (leading zeros, common in the field, are let through)."""
    return len(value) <= 64 and _UID_PATTERN.fullmatch(value) is not None


def _text(ds: Dataset, keyword: str, source: Any) -> str:
    """A string attribute, stripped ("" if absent); an unparseable value is an OCTVolumeError."""
    try:
        value = ds.get(keyword)
    except Exception as exc:  # pydicom converts on access and can fail on malformed bytes
        raise OCTVolumeError(f"unreadable {keyword} value", source) from exc
    return "" if value is None else str(value).strip()


def _integer(ds: Dataset, keyword: str, source: Any, default: int | None = None) -> int:
    """A single non-negative integer attribute (US or IS); ``default`` when absent or empty."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            if default is None:
                raise OCTVolumeError(f"missing {keyword}", source)
            return default
        number = int(value)
        if number != float(value) or number < 0:
            raise ValueError(value)
    except OCTVolumeError:
        raise
    except Exception as exc:  # a value that is not one whole number (text, list, ...)
        raise OCTVolumeError(f"invalid {keyword}: not a whole number >= 0", source) from exc
    return number


def _laterality(ds: Dataset, source: Any) -> str:
    """The eye, "R" or "L", from every place that states it; they must agree.

    ImageLaterality (0020,0062), Frame Anatomy > FrameLaterality (0020,9072) of the shared and
    per-frame groups, and the series Laterality (0020,0060), which must be absent on OPT but is
    the only one some exporters write (as "OD"/"OS"). A disagreement is refused rather than
    guessed: the wrong eye puts the optic nerve head on the wrong side for the model.
    """
    eyes: dict[str, list[str]] = {}
    invalid: list[str] = []
    for keyword, value in _laterality_values(ds):
        code = value.strip().upper()
        if not code:
            continue
        if code == "B":
            raise OCTVolumeError("laterality is B (both eyes); one eye per volume expected", source)
        if code in _LATERALITY_ALIASES:
            eyes.setdefault(_LATERALITY_ALIASES[code], []).append(keyword)
        else:
            invalid.append(f"{keyword} {code[:16]!r}")
    if len(eyes) > 1:
        stated = "; ".join(f"{', '.join(sorted(set(k)))} {eye}" for eye, k in sorted(eyes.items()))
        raise OCTVolumeError(f"conflicting laterality: {stated}", source)
    if eyes:
        return next(iter(eyes))
    if invalid:
        raise OCTVolumeError(
            f"invalid laterality: {', '.join(sorted(set(invalid)))} is not R or L", source
        )
    raise OCTVolumeError(
        "missing laterality: no ImageLaterality (0020,0062) or FrameLaterality (0020,9072) R or L",
        source,
    )


def _laterality_values(ds: Dataset) -> list[tuple[str, str]]:
    """(keyword, value) of every laterality attribute present."""
    values = [("ImageLaterality", ds.get("ImageLaterality"))]
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    for group in [*shared, *(ds.get("PerFrameFunctionalGroupsSequence") or [])]:
        for item in group.get("FrameAnatomySequence") or []:
            values.append(("FrameLaterality", item.get("FrameLaterality")))
    values.append(("Laterality", ds.get("Laterality")))
    return [(keyword, str(value)) for keyword, value in values if value]


# --- pixel data ------------------------------------------------------------------------------


def _decode_frames(ds: Dataset, source: Any) -> np.ndarray:
    """Decode all frames to an (F, rows, columns) array."""
    try:
        # The function form, not ds.pixel_array: that would also keep a copy on the dataset.
        pixels = decode_pixel_array(ds)
    except Exception as exc:  # decoder errors come in many types
        file_meta = getattr(ds, "file_meta", None)
        syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
        name = getattr(syntax, "name", None) or "unknown transfer syntax"
        raise OCTVolumeError(f"cannot decode pixel data ({name}): {exc}", source) from exc
    frames = int(ds.get("NumberOfFrames") or 1)
    expected = (frames, int(ds.Rows), int(ds.Columns))
    if pixels.shape != expected:
        raise OCTVolumeError(
            f"decoded pixel data shaped {pixels.shape}, expected {expected} from "
            "NumberOfFrames, Rows and Columns",
            source,
        )
    return pixels


def _check_content(voxels: np.ndarray, source: Any) -> None:
    low, high = voxels.min(), voxels.max()
    if low == high:
        raise OCTVolumeError(f"blank or constant volume: every voxel is {low.item()}", source)


# --- geometry --------------------------------------------------------------------------------


class _FunctionalGroups:
    """Per-frame and shared functional groups (PS3.3 C.7.6.16) of one instance."""

    def __init__(self, ds: Dataset) -> None:
        self.frames = int(ds.get("NumberOfFrames") or 1)
        self.per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
        shared = ds.get("SharedFunctionalGroupsSequence") or []
        self.shared = shared[0] if len(shared) else None

    def macro(self, frame_index: int, keyword: str) -> Dataset | None:
        """First item of a functional-group macro for one frame; per-frame wins over shared."""
        if frame_index < len(self.per_frame):
            sequence = self.per_frame[frame_index].get(keyword)
            if sequence:
                return sequence[0]
        if self.shared is not None:
            sequence = self.shared.get(keyword)
            if sequence:
                return sequence[0]
        return None


def _check_frame_items(groups: _FunctionalGroups, source: Any) -> None:
    """One Per-frame Functional Groups item per frame (PS3.3 C.7.6.16.1), when there are any."""
    if groups.per_frame and len(groups.per_frame) != groups.frames:
        raise OCTVolumeError(
            f"NumberOfFrames is {groups.frames} but PerFrameFunctionalGroupsSequence has "
            f"{len(groups.per_frame)} items",
            source,
        )


def _frame_order(
    groups: _FunctionalGroups, source: Any
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Storage indices in spatial order, the sorted positions and the B-scan spacing (or nan).

    Positions are projected on the stack normal (row direction x column direction). The order is
    then set so that S runs superior to inferior: DICOM patient coordinates are LPS, so the
    superior direction is +Z. A stack with no superior-inferior component keeps ascending order.
    """
    positions = _positions(groups, source)
    if positions is None:
        return _order_by_stack_position(groups, source), None, math.nan
    normal = _stack_normal(groups, positions, source)
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    if normal[2] > _ORIENTATION_TOLERANCE:  # ascending along the normal goes superior: reverse
        order = order[::-1]
    gaps = np.abs(np.diff(distance[order]))
    if gaps.min() < _DUPLICATE_POSITION_MM:
        raise OCTVolumeError(
            "inconsistent per-frame positions: two frames share one ImagePositionPatient "
            "along the stack normal",
            source,
        )
    spacing = float(np.median(gaps))
    if np.abs(gaps - spacing).max() > _SPACING_TOLERANCE * spacing:
        raise OCTVolumeError(
            f"inconsistent per-frame positions: B-scan gaps range {gaps.min():.4g}-"
            f"{gaps.max():.4g} mm around a median of {spacing:.4g} mm",
            source,
        )
    return order.astype(np.int64), positions[order], spacing


def _positions(groups: _FunctionalGroups, source: Any) -> np.ndarray | None:
    """(F, 3) per-frame ImagePositionPatient, ``None`` if no frame has one."""
    frames = groups.frames
    values = []
    for index in range(frames):
        item = groups.macro(index, "PlanePositionSequence")
        values.append(_numbers(item, "ImagePositionPatient", 3, source))
    present = sum(value is not None for value in values)
    if present == 0:
        return None
    if present < frames:
        raise OCTVolumeError(
            f"inconsistent per-frame positions: {frames - present} of {frames} frames lack "
            "PlanePositionSequence > ImagePositionPatient",
            source,
        )
    positions = np.asarray(values, dtype=np.float64)
    if not np.isfinite(positions).all():
        raise OCTVolumeError(
            "inconsistent per-frame positions: non-finite ImagePositionPatient", source
        )
    return positions


def _stack_normal(groups: _FunctionalGroups, positions: np.ndarray, source: Any) -> np.ndarray:
    """Unit normal of the B-scan planes, from Plane Orientation, else the positions' main axis."""
    frames = groups.frames
    orientations = []
    for index in range(frames):
        orientation = _numbers(
            groups.macro(index, "PlaneOrientationSequence"), "ImageOrientationPatient", 6, source
        )
        if orientation is not None:
            orientations.append(np.asarray(orientation, dtype=np.float64))
    if orientations:
        if not np.isfinite(orientations).all():
            raise OCTVolumeError("invalid ImageOrientationPatient: non-finite values", source)
        if (
            len(orientations) < frames
            or np.abs(np.asarray(orientations) - orientations[0]).max() > _ORIENTATION_TOLERANCE
        ):
            raise OCTVolumeError(
                "inconsistent per-frame positions: the B-scans do not share one "
                "ImageOrientationPatient",
                source,
            )
        row, column = orientations[0][:3], orientations[0][3:]
        if not (
            abs(np.linalg.norm(row) - 1) < _UNIT_TOLERANCE
            and abs(np.linalg.norm(column) - 1) < _UNIT_TOLERANCE
            and abs(row @ column) < _UNIT_TOLERANCE
        ):
            raise OCTVolumeError(
                "invalid ImageOrientationPatient: the row and column directions are not "
                "orthogonal unit vectors",
                source,
            )
        normal = np.cross(row, column)
    else:  # no orientation: the positions' direction of largest spread
        _, _, vt = np.linalg.svd(positions - positions.mean(axis=0))
        normal = vt[0]
        if normal[np.argmax(np.abs(normal))] < 0:  # a fixed sign, so the order is deterministic
            normal = -normal
    length = np.linalg.norm(normal)
    if not length > 0:
        raise OCTVolumeError("degenerate ImageOrientationPatient (parallel row/column)", source)
    return normal / length


def _order_by_stack_position(groups: _FunctionalGroups, source: Any) -> np.ndarray:
    """Storage indices sorted by Frame Content > InStackPositionNumber, else storage order."""
    frames = groups.frames
    numbers = []
    for index in range(frames):
        item = groups.macro(index, "FrameContentSequence")
        numbers.append(None if item is None else item.get("InStackPositionNumber"))
    if all(number is None for number in numbers):
        return np.arange(frames, dtype=np.int64)
    if any(number is None for number in numbers) or len(set(numbers)) != frames:
        raise OCTVolumeError(
            "inconsistent per-frame positions: InStackPositionNumber missing or repeated",
            source,
        )
    return np.argsort(np.asarray(numbers, dtype=np.int64), kind="stable").astype(np.int64)


def _pixel_spacing(ds: Dataset, groups: _FunctionalGroups, source: Any) -> tuple[float, float]:
    """(axial, lateral) mm from Pixel Measures (shared or per-frame), ``nan`` if absent."""
    values = set()
    for index in range(groups.frames):
        spacing = _numbers(groups.macro(index, "PixelMeasuresSequence"), "PixelSpacing", 2, source)
        if spacing is not None:
            values.add(spacing)
    if not values and (spacing := _numbers(ds, "PixelSpacing", 2, source)) is not None:
        values.add(spacing)
    if not values:
        return math.nan, math.nan
    if len(values) > 1:
        raise OCTVolumeError(
            "inconsistent per-frame Pixel Measures: the B-scans declare different PixelSpacing",
            source,
        )
    axial, lateral = values.pop()
    if not (math.isfinite(axial) and math.isfinite(lateral) and axial > 0 and lateral > 0):
        raise OCTVolumeError(
            f"invalid PixelSpacing {axial:g}\\{lateral:g} mm: spacings must be positive", source
        )
    return axial, lateral


def _numbers(
    item: Dataset | None, keyword: str, count: int, source: Any
) -> tuple[float, ...] | None:
    """``count`` numbers of a DS attribute of ``item``; ``None`` when it is absent or empty."""
    if item is None:
        return None
    try:
        value = item.get(keyword)
        if value is None or value == "":
            return None
        numbers = tuple(float(v) for v in ([value] if isinstance(value, str | float) else value))
    except Exception as exc:  # text that is no number, a malformed element
        raise OCTVolumeError(f"invalid {keyword}: not numbers", source) from exc
    if len(numbers) != count:
        raise OCTVolumeError(f"invalid {keyword}: {len(numbers)} values, {count} expected", source)
    return numbers


def _declared_slice_spacing(groups: _FunctionalGroups, source: Any) -> float:
    """SpacingBetweenSlices, else SliceThickness, from Pixel Measures; ``nan`` if neither.

    A value that is not a positive finite number is refused rather than skipped: the other one
    may not describe the B-scan spacing.
    """
    item = groups.macro(0, "PixelMeasuresSequence")
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = item.get(keyword) if item is not None else None
        if value is None or value == "":
            continue
        spacing = float(value)
        if not (math.isfinite(spacing) and spacing > 0):
            raise OCTVolumeError(f"invalid {keyword} {spacing:g} mm: must be positive", source)
        return spacing
    return math.nan
