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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array as decode_pixel_array

OPT_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
"""Ophthalmic Tomography Image Storage (PS3.4 B.5)."""

MIN_FRAMES = 8
"""Fewer B-scans than this is a line or few-line raster scan, not a cube the model can assess."""

MIN_ROWS_COLUMNS = 8
"""Smaller B-scans than this (rows or columns) carry no usable retinal structure."""

MAX_DECODED_BYTES = 2 * 1024**3
"""Refuse volumes whose declared decoded size exceeds this (2 GiB), before allocating anything."""

# Relative tolerances of the geometry checks.
_DUPLICATE_POSITION_MM = 1e-4
_SPACING_TOLERANCE = 0.2
_ORIENTATION_TOLERANCE = 1e-3

_LATERALITY_ALIASES = {"R": "R", "L": "L", "OD": "R", "OS": "L"}


class OCTVolumeError(ValueError):
    """An OPT instance that cannot be assessed; the message names the file and the reason.

    Attributes:
        reason: the reason alone (no file name), suitable for a report.
        source: the file path or SOP Instance UID of the instance, or ``None``.
    """

    def __init__(self, reason: str, source: str | Path | None = None) -> None:
        self.reason = reason
        self.source = None if source is None else str(source)
        super().__init__(f"{self.source}: {reason}" if self.source else reason)


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
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:  # any parser failure makes the file unreadable
            raise OCTVolumeError(f"not a readable DICOM file ({exc})", path) from exc
    source = path if path is not None else ds.get("SOPInstanceUID")

    _check_header(ds, source)
    laterality = _laterality(ds, source)
    groups = _FunctionalGroups(ds)
    order, positions, slice_spacing = _frame_order(groups, source)
    axial, lateral = _pixel_spacing(ds, groups, source)
    if not math.isfinite(slice_spacing):
        slice_spacing = _declared_slice_spacing(groups)
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
    """Check SOP class, dimensions and pixel data presence; refuse absurd sizes before decoding."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class != OPT_SOP_CLASS_UID:
        raise OCTVolumeError(
            f"SOPClassUID {sop_class or '(missing)'} is not Ophthalmic Tomography Image Storage "
            f"({OPT_SOP_CLASS_UID})",
            source,
        )
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if not ds.get(keyword):
            raise OCTVolumeError(f"missing {keyword}", source)
    if "PixelData" not in ds:
        raise OCTVolumeError("missing pixel data (7FE0,0010)", source)
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        if ds.get(keyword) is None:
            raise OCTVolumeError(f"missing {keyword}", source)
    frames = int(ds.get("NumberOfFrames") or 1)
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel") or 1)
    if samples != 1:
        raise OCTVolumeError(f"SamplesPerPixel is {samples}; OCT B-scans are greyscale (1)", source)
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
    bytes_per_sample = max(1, math.ceil(int(ds.BitsAllocated) / 8))
    decoded = frames * rows * columns * bytes_per_sample
    if decoded > MAX_DECODED_BYTES:
        raise OCTVolumeError(
            f"declared size {frames} frames x {rows} rows x {columns} columns x "
            f"{bytes_per_sample} bytes = {decoded / 1024**3:.1f} GiB exceeds the "
            f"{MAX_DECODED_BYTES / 1024**3:.0f} GiB limit",
            source,
        )
    file_meta = getattr(ds, "file_meta", None)
    transfer_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if transfer_syntax is None or not transfer_syntax.is_encapsulated:
        stored = len(ds.PixelData)
        expected = math.ceil(frames * rows * columns * int(ds.BitsAllocated) / 8)
        if stored < expected:
            raise OCTVolumeError(
                f"pixel data shorter than declared: {stored} bytes for {frames} frames of "
                f"{rows} x {columns} ({expected} bytes expected)",
                source,
            )


def _laterality(ds: Dataset, source: Any) -> str:
    """ImageLaterality (0020,0062), else FrameAnatomy > FrameLaterality, else series Laterality."""
    candidates: list[str] = [str(ds.get("ImageLaterality", "") or "")]
    candidates += [str(item.get("FrameLaterality", "") or "") for item in _frame_anatomy(ds)]
    # Series Laterality must be absent on OPT, but some exporters write only that (as "OD"/"OS").
    candidates.append(str(ds.get("Laterality", "") or ""))
    for value in candidates:
        value = value.strip().upper()
        if value in _LATERALITY_ALIASES:
            return _LATERALITY_ALIASES[value]
        if value == "B":
            raise OCTVolumeError("laterality is B (both eyes); one eye per volume expected", source)
    raise OCTVolumeError(
        "missing laterality: no ImageLaterality (0020,0062) or FrameLaterality (0020,9072) R or L",
        source,
    )


def _frame_anatomy(ds: Dataset) -> list[Dataset]:
    """Frame Anatomy items of the shared group and of the first frame."""
    groups = _FunctionalGroups(ds)
    return [item for item in (groups.macro(0, "FrameAnatomySequence"),) if item is not None]


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
            f"decoded pixel data shaped {pixels.shape}, expected {expected}", source
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
        position = item.get("ImagePositionPatient") if item is not None else None
        values.append(None if position is None or len(position) != 3 else position)
    present = sum(value is not None for value in values)
    if present == 0:
        return None
    if present < frames:
        raise OCTVolumeError(
            f"inconsistent per-frame positions: {frames - present} of {frames} frames lack "
            "PlanePositionSequence > ImagePositionPatient",
            source,
        )
    return np.asarray(values, dtype=np.float64)


def _stack_normal(groups: _FunctionalGroups, positions: np.ndarray, source: Any) -> np.ndarray:
    """Unit normal of the B-scan planes, from Plane Orientation, else the positions' main axis."""
    frames = groups.frames
    orientations = []
    for index in range(frames):
        item = groups.macro(index, "PlaneOrientationSequence")
        if item is not None and len(item.get("ImageOrientationPatient") or []) == 6:
            orientations.append(np.asarray(item.ImageOrientationPatient, dtype=np.float64))
    if orientations:
        if (
            len(orientations) < frames
            or np.abs(np.asarray(orientations) - orientations[0]).max() > _ORIENTATION_TOLERANCE
        ):
            raise OCTVolumeError(
                "inconsistent per-frame positions: the B-scans do not share one "
                "ImageOrientationPatient",
                source,
            )
        normal = np.cross(orientations[0][:3], orientations[0][3:])
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
        item = groups.macro(index, "PixelMeasuresSequence")
        spacing = item.get("PixelSpacing") if item is not None else None
        if spacing is not None and len(spacing) == 2:
            values.add((float(spacing[0]), float(spacing[1])))
    if not values and len(ds.get("PixelSpacing") or []) == 2:
        values.add((float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])))
    if not values:
        return math.nan, math.nan
    if len(values) > 1:
        raise OCTVolumeError(
            "inconsistent per-frame Pixel Measures: the B-scans declare different PixelSpacing",
            source,
        )
    return values.pop()


def _declared_slice_spacing(groups: _FunctionalGroups) -> float:
    """SpacingBetweenSlices, else SliceThickness, from Pixel Measures; ``nan`` if neither."""
    item = groups.macro(0, "PixelMeasuresSequence")
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = item.get(keyword) if item is not None else None
        if value is not None and float(value) > 0:
            return float(value)
    return math.nan
