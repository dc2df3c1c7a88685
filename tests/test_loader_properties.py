"""Property test of the OPT loader: mutate valid OPT files (delete or alter attributes, garbage
values, shuffled or missing functional groups, wrong transfer syntax, truncated or flipped bytes)
and check that ``read_oct_volume`` either returns a consistent volume or raises
:class:`OCTVolumeError`, never anything else.

Derandomised, so that CI sees the same examples each run; ``OCT_FUZZ_EXAMPLES=5000`` explores
more (and ``OCT_FUZZ_SEED`` another part of the space).
"""

from __future__ import annotations

import copy
import io
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.tag import Tag

from operators.oct_volume import MIN_FRAMES, MIN_ROWS_COLUMNS, OCTVolumeError, read_oct_volume
from tests.app_support import opt_dataset

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")

SHAPE = (8, 16, 12)
EXAMPLES = int(os.environ.get("OCT_FUZZ_EXAMPLES", "100"))
SEED = int(os.environ.get("OCT_FUZZ_SEED", "20250505"))

US_ATTRIBUTES = {  # keyword -> tag, unsigned short (binary) values
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "BitsAllocated": 0x00280100,
    "BitsStored": 0x00280101,
    "SamplesPerPixel": 0x00280002,
    "PixelRepresentation": 0x00280103,
}
DELETABLE = [
    "NumberOfFrames",
    *US_ATTRIBUTES,
    "PhotometricInterpretation",
    "ImageLaterality",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    "PixelData",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
]
MACROS = [
    "PlanePositionSequence",
    "PlaneOrientationSequence",
    "FrameContentSequence",
    "PixelMeasuresSequence",
    "FrameAnatomySequence",
]
NUMBERS = ["0", "1", "-1", "7", "8", "9", "16", "0.05", "-0.05", "1e9", "1e-9", "nan", "inf", "x"]
TEXT_VALUES = {  # keyword -> (tag, VR, candidate values)
    "NumberOfFrames": (0x00280008, "IS", ["0", "1", "7", "8", "9", "16", "-3", "1e3", "ab", ""]),
    "ImageLaterality": (0x00200062, "CS", ["R", "L", "B", "U", "OD", "OS", "", "X"]),
    "Laterality": (0x00200060, "CS", ["R", "L", "OS", "Q"]),
    "PhotometricInterpretation": (0x00280004, "CS", ["MONOCHROME1", "RGB", "", "MONOCHROME2"]),
    "SOPClassUID": (0x00080016, "UI", ["", "1.2.840.10008.5.1.4.1.1.7", "..", "1.2.3"]),
    "SOPInstanceUID": (0x00080018, "UI", ["", "..", "1..2", "1.2.3", "x" * 70]),
    "StudyInstanceUID": (0x0020000D, "UI", ["", ".", "1.2.3"]),
}
SYNTAXES = [
    "1.2.840.10008.1.2",  # Implicit VR Little Endian: the header is re-parsed as implicit
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    "1.2.840.10008.1.2.1.99",  # Deflated
    "1.2.840.10008.1.2.5",  # RLE Lossless, on native pixel data
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.100",  # MPEG2
    "1.2.3.4",  # unknown
]


def _raw(tag: int, vr: str, value: bytes) -> RawDataElement:
    """An element written as given, valid or not (pydicom converts only when read)."""
    if len(value) % 2:
        value += b"\0" if vr == "UI" else b" "
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def _ds_text(values: list[str]) -> bytes:
    return "\\".join(values).encode()


# --- mutations: each is (name, arguments) applied by _apply ------------------------------------

frame_index = st.integers(0, SHAPE[0] - 1)
mutation = st.one_of(
    st.tuples(st.just("delete"), st.sampled_from(DELETABLE)),
    st.tuples(st.just("us"), st.sampled_from(sorted(US_ATTRIBUTES)), st.integers(0, 65535)),
    st.tuples(
        st.just("text"),
        st.sampled_from(sorted(TEXT_VALUES)).flatmap(
            lambda k: st.tuples(st.just(k), st.sampled_from(TEXT_VALUES[k][2]))
        ),
    ),
    st.tuples(st.just("frame_laterality"), st.sampled_from(["R", "L", "B", "", "OS", "Z"])),
    st.tuples(st.just("position"), frame_index, st.integers(0, 2), st.sampled_from(NUMBERS)),
    st.tuples(st.just("delete_macro"), frame_index, st.sampled_from(MACROS)),
    st.tuples(st.just("shuffle_frames"), st.permutations(range(SHAPE[0]))),
    st.tuples(st.just("drop_frame_item"), frame_index),
    st.tuples(st.just("stack_position"), frame_index, st.integers(-2, 12)),
    st.tuples(st.just("pixel_spacing"), st.lists(st.sampled_from(NUMBERS), min_size=1, max_size=3)),
    st.tuples(st.just("slice_spacing"), st.sampled_from(NUMBERS)),
    st.tuples(st.just("orientation"), st.lists(st.sampled_from(NUMBERS), min_size=6, max_size=6)),
    st.tuples(st.just("pixel_bytes"), st.integers(0, SHAPE[0] * SHAPE[1] * SHAPE[2] + 64)),
    st.tuples(st.just("syntax"), st.sampled_from(SYNTAXES)),
)


def _shared(ds: Dataset) -> Dataset:
    return ds.SharedFunctionalGroupsSequence[0]


def _apply(ds: Dataset, change: tuple) -> None:
    """Apply one mutation; one that no longer applies (its target is gone) is a no-op."""
    kind, *args = change
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    if kind == "delete":
        if args[0] in ds:
            delattr(ds, args[0])
    elif kind == "us":
        ds[US_ATTRIBUTES[args[0]]] = _raw(US_ATTRIBUTES[args[0]], "US", struct.pack("<H", args[1]))
    elif kind == "text":
        keyword, value = args[0]
        tag, vr, _ = TEXT_VALUES[keyword]
        ds[tag] = _raw(tag, vr, value.encode())
    elif kind == "frame_laterality" and shared:
        for item in shared[0].get("FrameAnatomySequence") or []:
            item[0x00209072] = _raw(0x00209072, "CS", args[0].encode())
    elif kind == "position" and frames and args[0] < len(frames):
        item = frames[args[0]].get("PlanePositionSequence")
        if item:
            values = [str(v) for v in item[0].ImagePositionPatient]
            values[args[1]] = args[2]
            item[0][0x00200032] = _raw(0x00200032, "DS", _ds_text(values))
    elif kind == "delete_macro" and frames and args[0] < len(frames):
        if args[1] in frames[args[0]]:
            delattr(frames[args[0]], args[1])
        elif shared and args[1] in shared[0]:
            delattr(shared[0], args[1])
    elif kind == "shuffle_frames" and frames and len(frames) == SHAPE[0]:
        items = list(frames)
        ds.PerFrameFunctionalGroupsSequence = [items[i] for i in args[0]]
    elif kind == "drop_frame_item" and frames and args[0] < len(frames):
        del frames[args[0]]
    elif kind == "stack_position" and frames and args[0] < len(frames):
        content = frames[args[0]].get("FrameContentSequence")
        if content:
            content[0].InStackPositionNumber = max(0, args[1])
    elif kind == "pixel_spacing" and shared and shared[0].get("PixelMeasuresSequence"):
        measures = shared[0].PixelMeasuresSequence[0]
        measures[0x00280030] = _raw(0x00280030, "DS", _ds_text(args[0]))
    elif kind == "slice_spacing" and shared and shared[0].get("PixelMeasuresSequence"):
        measures = shared[0].PixelMeasuresSequence[0]
        measures[0x00180088] = _raw(0x00180088, "DS", args[0].encode())  # SpacingBetweenSlices
    elif kind == "orientation" and shared and shared[0].get("PlaneOrientationSequence"):
        item = shared[0].PlaneOrientationSequence[0]
        item[0x00200037] = _raw(0x00200037, "DS", _ds_text(args[0]))
    elif kind == "pixel_bytes" and "PixelData" in ds:
        ds.PixelData = ds.PixelData[: args[0]] + b"\x55" * max(0, args[0] - len(ds.PixelData))
    elif kind == "syntax":
        ds.file_meta.TransferSyntaxUID = args[0]


def _serialise(ds: Dataset) -> bytes:
    """The file bytes, written as Explicit VR Little Endian whatever the meta header says."""
    stream = io.BytesIO()
    ds.save_as(stream, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return stream.getvalue()


@pytest.fixture(scope="module")
def base():
    return opt_dataset(3, shape=SHAPE, frame_order=np.array([3, 0, 7, 1, 6, 2, 5, 4]))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("loader_properties") / "mutated.dcm"


def _sometimes(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """``strategy`` one time in four, else None: most examples keep the file's bytes whole."""
    return st.integers(0, 3).flatmap(lambda k: strategy if k == 0 else st.none())


def _check_consistent(volume) -> None:
    """What a returned volume must satisfy."""
    ds = volume.dataset
    frames, rows, columns = int(ds.get("NumberOfFrames") or 1), int(ds.Rows), int(ds.Columns)
    assert volume.voxels.shape == (frames, rows, columns)
    assert frames >= MIN_FRAMES and min(rows, columns) >= MIN_ROWS_COLUMNS
    assert volume.voxels.dtype in (np.uint8, np.uint16)
    assert volume.voxels.min() < volume.voxels.max()
    assert sorted(volume.frame_order.tolist()) == list(range(frames))
    np.testing.assert_array_equal(pixel_array(ds)[volume.frame_order], volume.voxels)
    assert volume.laterality in ("R", "L")
    assert len(volume.spacing_mm) == 3
    for spacing in volume.spacing_mm:  # nan: not declared anywhere (documented)
        assert math.isnan(spacing) or (math.isfinite(spacing) and spacing > 0), volume.spacing_mm
    assert all(math.isfinite(s) and s > 0 for s in volume.spacing_mm[1:]) or all(
        math.isnan(s) for s in volume.spacing_mm[1:]
    )
    if volume.positions_mm is not None:
        positions = volume.positions_mm
        assert positions.shape == (frames, 3) and np.isfinite(positions).all()
        steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
        assert steps.min() > 0  # no two B-scans in one place
        assert math.isfinite(volume.spacing_mm[0]) and volume.spacing_mm[0] > 0


@seed(SEED)
@settings(
    max_examples=EXAMPLES,
    deadline=3000,  # ms: generous for 2 shared cores; a read takes ~20 ms
    derandomize="OCT_FUZZ_SEED" not in os.environ,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    changes=st.lists(mutation, min_size=1, max_size=3),
    cut=_sometimes(st.floats(0.0, 1.0, exclude_max=True)),
    flip=_sometimes(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255))),
)
def test_loader_returns_a_consistent_volume_or_raises_its_own_error(
    base, scratch, changes, cut, flip
):
    ds = copy.deepcopy(base)
    for change in changes:
        _apply(ds, change)
    try:
        data = bytearray(_serialise(ds))
    except Exception:  # pydicom cannot write this combination: nothing to read
        return
    if flip is not None:
        where, byte = flip
        data[132 + int(where * (len(data) - 132))] = byte  # after the preamble and "DICM"
    if cut is not None:
        data = data[: 132 + int(cut * (len(data) - 132))]
    scratch.write_bytes(bytes(data))

    try:
        volume = read_oct_volume(scratch)
    except OCTVolumeError as error:
        assert error.reason and isinstance(error.reason, str)
        assert "\n" not in error.reason  # one line: it goes into logs, results.json and the SR
        event(f"refused: {error.reason.split(':')[0]}")
        return
    event("read")
    _check_consistent(volume)


def test_the_unmutated_file_reads(base, scratch):
    """The property test starts from a volume the loader accepts (else it proves nothing)."""
    scratch.write_bytes(_serialise(copy.deepcopy(base)))
    volume = read_oct_volume(scratch)
    _check_consistent(volume)
    assert volume.frame_order.tolist() == [3, 0, 7, 1, 6, 2, 5, 4]
