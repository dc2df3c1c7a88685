"""Tests for operators.seg: FRACTIONAL SEG on the source geometry, storage order, read-back."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from operators.equipment import AlgorithmInfo
from operators.oct_volume import read_oct_volume
from operators.seg import SEGMENT_LABELS, build_seg, maps_in_storage_order
from tests.app_support import SHAPE, dciodvfy_errors, fake_prediction, opt_dataset, save

INFO = AlgorithmInfo("aicnet3d_test", "1.2.3", "test use only", 0.5)


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory):
    """A volume whose frames are stored in shuffled order, its prediction and its SEG file."""
    order = np.random.default_rng(21).permutation(SHAPE[0])
    volume = read_oct_volume(opt_dataset(21, frame_order=order, series_number=2))
    prediction = fake_prediction(volume.shape)
    path = tmp_path_factory.mktemp("seg") / "seg.dcm"
    save(build_seg(volume, prediction, INFO), path)
    return volume, prediction, path


def test_maps_follow_the_storage_order(shuffled):
    volume, prediction, _ = shuffled
    stored = maps_in_storage_order(volume, prediction.care, prediction.gradcam)
    assert stored.shape == (*volume.shape, 2)
    for spatial, storage in enumerate(volume.frame_order):
        np.testing.assert_array_equal(stored[storage, ..., 0], prediction.care[spatial])
    with pytest.raises(ValueError, match="shaped"):
        maps_in_storage_order(volume, prediction.care[:-1])


def test_dciodvfy_clean(shuffled):
    assert dciodvfy_errors(shuffled[2]) == []


def test_segments_geometry_and_identity(shuffled):
    volume, _, path = shuffled
    seg = hd.seg.segread(path)
    source = volume.dataset
    assert seg.SegmentationType == "FRACTIONAL"
    assert seg.SegmentationFractionalType == "PROBABILITY"
    assert seg.MaximumFractionalValue == 255
    assert [s.SegmentLabel for s in seg.SegmentSequence] == list(SEGMENT_LABELS)
    for segment in seg.SegmentSequence:
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
        assert algorithm.AlgorithmName == "aicnet3d_test"
        assert algorithm.AlgorithmVersion == "1.2.3"
    assert seg.FrameOfReferenceUID == volume.frame_of_reference_uid
    assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber"):
        assert seg[keyword].value == source[keyword].value
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.SeriesNumber == 202
    assert seg.ManufacturerModelName == INFO.app_name
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    # Every SEG frame references one source frame of the OPT.
    referenced = set()
    for frame in seg.PerFrameFunctionalGroupsSequence:
        image = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert image.ReferencedSOPInstanceUID == volume.sop_instance_uid
        referenced.add(int(image.ReferencedFrameNumber))
    assert referenced <= set(range(1, SHAPE[0] + 1))


def test_pixels_by_source_frame_match_the_maps(shuffled):
    volume, prediction, path = shuffled
    seg = hd.seg.segread(path)
    frames = list(range(1, SHAPE[0] + 1))
    pixels = seg.get_pixels_by_source_frame(
        volume.sop_instance_uid, source_frame_numbers=frames, rescale_fractional=True
    )
    assert pixels.shape == (*volume.shape, 2)
    spatial = pixels[volume.frame_order]  # storage order -> spatial order
    np.testing.assert_allclose(spatial[..., 0], prediction.care, atol=1 / 510 + 1e-6)
    np.testing.assert_allclose(spatial[..., 1], prediction.gradcam, atol=1 / 510 + 1e-6)


def test_a_source_without_plane_positions_is_refused_clearly():
    ds = opt_dataset(22)
    for item in ds.PerFrameFunctionalGroupsSequence:
        del item.PlanePositionSequence
    volume = read_oct_volume(ds)
    with pytest.raises(ValueError, match="plane positions"):
        build_seg(volume, fake_prediction(volume.shape), INFO)
