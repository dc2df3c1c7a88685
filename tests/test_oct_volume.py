"""Tests for operators.oct_volume: frame order, spacing, laterality, decoding, input checks."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from model.phantoms import make_phantom
from operators.oct_volume import (
    MAX_DECODED_BYTES,
    MIN_FRAMES,
    OCTVolume,
    OCTVolumeError,
    read_oct_volume,
)
from tests.app_support import PATIENT, SHAPE, STUDY_UID, opt_dataset, save


def _shared(ds):
    return ds.SharedFunctionalGroupsSequence[0]


def test_reads_phantom_in_spatial_order_from_shuffled_storage(tmp_path):
    phantom = make_phantom(1, glaucoma=True, laterality="L", shape=SHAPE)
    order = np.random.default_rng(3).permutation(SHAPE[0])
    path = save(opt_dataset(1, laterality="L", frame_order=order), tmp_path / "opt.dcm")

    volume = read_oct_volume(path)

    assert isinstance(volume, OCTVolume)
    np.testing.assert_array_equal(volume.voxels, phantom.volume)
    np.testing.assert_array_equal(volume.frame_order, order)
    stored = pydicom.dcmread(path).pixel_array
    np.testing.assert_array_equal(stored[volume.frame_order], volume.voxels)
    assert volume.laterality == "L"
    assert volume.spacing_mm == pytest.approx(phantom.spacing_mm, rel=1e-6)
    assert volume.source_path == path
    assert volume.patient_id == PATIENT["patient_id"]
    assert volume.study_instance_uid == STUDY_UID
    assert volume.frame_of_reference_uid
    # Positions are sorted superior (+z in LPS) to inferior.
    assert np.all(np.diff(volume.positions_mm[:, 2]) < 0)


def test_falls_back_to_in_stack_position_number_and_declared_spacing():
    order = np.random.default_rng(5).permutation(SHAPE[0])
    ds = opt_dataset(2, frame_order=order)
    for item in ds.PerFrameFunctionalGroupsSequence:
        del item.PlanePositionSequence
    volume = read_oct_volume(ds)
    np.testing.assert_array_equal(volume.frame_order, order)
    assert volume.positions_mm is None
    thickness = float(_shared(ds).PixelMeasuresSequence[0].SliceThickness)
    assert volume.spacing_mm[0] == pytest.approx(thickness)


def test_without_any_position_keeps_storage_order_and_nan_slice_spacing():
    ds = opt_dataset(2)
    for item in ds.PerFrameFunctionalGroupsSequence:
        del item.PlanePositionSequence
        del item.FrameContentSequence
    measures = _shared(ds).PixelMeasuresSequence[0]
    del measures.SliceThickness
    del measures.SpacingBetweenSlices
    volume = read_oct_volume(ds)
    np.testing.assert_array_equal(volume.frame_order, np.arange(SHAPE[0]))
    assert math.isnan(volume.spacing_mm[0])
    assert volume.spacing_mm[1:] == pytest.approx([float(v) for v in measures.PixelSpacing])


def test_per_frame_pixel_measures_and_slice_spacing_from_positions():
    ds = opt_dataset(3)
    measures = _shared(ds).PixelMeasuresSequence[0]
    expected = (float(measures.SliceThickness), *map(float, measures.PixelSpacing))
    del _shared(ds).PixelMeasuresSequence
    for item in ds.PerFrameFunctionalGroupsSequence:
        per_frame = pydicom.Dataset()
        per_frame.PixelSpacing = measures.PixelSpacing  # no slice thickness: from positions
        item.PixelMeasuresSequence = [per_frame]
    volume = read_oct_volume(ds)
    assert volume.spacing_mm == pytest.approx(expected, rel=1e-6)


def test_laterality_from_frame_laterality_when_image_laterality_is_absent():
    ds = opt_dataset(4, laterality="L")
    del ds.ImageLaterality
    assert read_oct_volume(ds).laterality == "L"


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_compressed_copies_decode_to_the_same_volume(tmp_path, syntax):
    order = np.random.default_rng(7).permutation(SHAPE[0])
    plain = read_oct_volume(save(opt_dataset(5, frame_order=order), tmp_path / "plain.dcm"))
    path = save(opt_dataset(5, frame_order=order, transfer_syntax=syntax), tmp_path / "c.dcm")
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    compressed = read_oct_volume(path)
    np.testing.assert_array_equal(compressed.voxels, plain.voxels)
    np.testing.assert_array_equal(compressed.frame_order, plain.frame_order)


def _too_few_frames():
    return opt_dataset(6, shape=(MIN_FRAMES - 1, 32, 32))


def _constant():
    return opt_dataset(6, volume=np.full(SHAPE, 17, np.uint8))


def _missing_pixels():
    ds = opt_dataset(6)
    del ds.PixelData
    return ds


def _short_pixels():
    ds = opt_dataset(6)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    return ds


def _missing_laterality():
    ds = opt_dataset(6)
    del ds.ImageLaterality
    del _shared(ds).FrameAnatomySequence[0].FrameLaterality
    return ds


def _duplicate_positions():
    ds = opt_dataset(6)
    frames = ds.PerFrameFunctionalGroupsSequence
    position = frames[0].PlanePositionSequence[0].ImagePositionPatient
    frames[1].PlanePositionSequence[0].ImagePositionPatient = position
    return ds


def _partial_positions():
    ds = opt_dataset(6)
    del ds.PerFrameFunctionalGroupsSequence[3].PlanePositionSequence
    return ds


def _absurd_size():
    ds = opt_dataset(6)
    ds.NumberOfFrames, ds.Rows, ds.Columns = 4096, 4096, 4096  # 64 GiB declared, 16 kB stored
    return ds


def _not_opt():
    ds = opt_dataset(6)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    return ds


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (_too_few_frames, "too few B-scans"),
        (_constant, "constant volume"),
        (_missing_pixels, "missing pixel data"),
        (_short_pixels, "shorter than declared"),
        (_missing_laterality, "missing laterality"),
        (_duplicate_positions, "inconsistent per-frame positions"),
        (_partial_positions, "inconsistent per-frame positions"),
        (_absurd_size, "GiB exceeds"),
        (_not_opt, "not Ophthalmic Tomography"),
    ],
)
def test_input_checks_give_a_clear_reason(make, words):
    ds = make()
    with pytest.raises(OCTVolumeError, match=words) as caught:
        read_oct_volume(ds)
    assert words in caught.value.reason
    assert str(ds.SOPInstanceUID) in str(caught.value)  # the message names the instance


def test_absurd_size_is_refused_before_allocating():
    ds = _absurd_size()
    assert 4096**3 > MAX_DECODED_BYTES
    tracemalloc.start()
    try:
        with pytest.raises(OCTVolumeError):
            read_oct_volume(ds)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024**2


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_unreadable_file_names_the_file(tmp_path):
    path = tmp_path / "broken.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage")
    with pytest.raises(OCTVolumeError, match="broken.dcm"):
        read_oct_volume(path)


def test_truncated_file_is_not_assessable(tmp_path):
    path = save(opt_dataset(8), tmp_path / "full.dcm")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(OCTVolumeError, match="truncated.dcm"):
        read_oct_volume(truncated)
