"""Tests for operators.sr: TID 1500 content, identity, equipment, dciodvfy, highdicom read-back."""

from __future__ import annotations

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from operators.equipment import AlgorithmInfo
from operators.oct_volume import read_oct_volume
from operators.sr import (
    ABSENT,
    COMMENT,
    GLAUCOMA,
    OPTIC_NERVE_HEAD,
    PRESENT,
    PROBABILITY,
    UNDETERMINED,
    build_sr,
)
from tests.app_support import PATIENT, dciodvfy_errors, fake_prediction, opt_dataset, save

INFO = AlgorithmInfo("aicnet3d_test", "1.2.3", "test use only", 0.5, device_serial_number="T1")


@pytest.fixture(scope="module")
def volume():
    return read_oct_volume(opt_dataset(11, laterality="L", series_number=4))


def _group(path):
    sr = hd.sr.srread(path)
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 1
    return sr, groups[0]


@pytest.mark.parametrize("probability", [0.91, 0.12])
def test_assessable_result_reads_back(tmp_path, volume, probability):
    path = save(
        build_sr(volume, fake_prediction(volume.shape, probability), INFO), tmp_path / "sr.dcm"
    )
    assert dciodvfy_errors(path) == []
    sr, group = _group(path)

    assert group.finding_type == GLAUCOMA
    (evaluation,) = group.get_qualitative_evaluations(name=GLAUCOMA)
    assert evaluation.value == (PRESENT if probability >= 0.5 else ABSENT)
    (measurement,) = group.get_measurements(name=PROBABILITY)
    assert measurement.value == pytest.approx(probability)
    assert measurement.unit.value == "1"
    (site,) = group.finding_sites
    assert site.value == OPTIC_NERVE_HEAD
    assert site.laterality.value == "7771000"  # Left
    (source,) = group.source_images
    assert source.referenced_sop_instance_uid == volume.sop_instance_uid
    assert source.referenced_sop_class_uid == volume.dataset.SOPClassUID
    texts = {
        item.name.meaning: item.value
        for item in group[0].ContentSequence
        if item.ValueType == "TEXT"
    }
    assert texts["Algorithm Name"] == "aicnet3d_test"
    assert texts["Algorithm Version"] == "1.2.3"
    assert "Comment" not in texts
    family = group.get_qualitative_evaluations(name=codes.DCM.AlgorithmFamily)
    assert family[0].value == codes.DCM.ArtificialIntelligence


def test_identity_series_and_equipment(tmp_path, volume):
    source = volume.dataset
    path = save(build_sr(volume, fake_prediction(volume.shape), INFO), tmp_path / "sr.dcm")
    sr = pydicom.dcmread(path)
    for keyword in (
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
    ):
        assert sr[keyword].value == source[keyword].value, keyword
    assert str(sr.PatientName) == PATIENT["patient_name"]
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.SOPInstanceUID != source.SOPInstanceUID
    assert sr.SeriesNumber == 401
    assert sr.Modality == "SR"
    assert sr.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert sr.Manufacturer == INFO.manufacturer
    assert sr.ManufacturerModelName == INFO.app_name
    assert list(sr.SoftwareVersions) == INFO.software_versions
    assert sr.DeviceSerialNumber == "T1"
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert (
        evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        == source.SOPInstanceUID
    )


def test_uids_are_deterministic_and_distinct(volume):
    prediction = fake_prediction(volume.shape)
    first, second = build_sr(volume, prediction, INFO), build_sr(volume, prediction, INFO)
    assert first.SOPInstanceUID == second.SOPInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    other = build_sr(volume, prediction, AlgorithmInfo("aicnet3d_test", "2.0.0"))
    assert other.SeriesInstanceUID != first.SeriesInstanceUID  # a new model version: new series


def test_not_assessable_states_the_reason(tmp_path):
    source = opt_dataset(12)  # the header alone: the volume itself could not be read
    reason = "blank or constant volume: every voxel is 0"
    path = save(build_sr(source, reason, INFO), tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    _, group = _group(path)
    (evaluation,) = group.get_qualitative_evaluations(name=GLAUCOMA)
    assert evaluation.value == UNDETERMINED
    assert group.get_measurements(name=PROBABILITY) == []
    comments = [
        item.value
        for item in group[0].ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == COMMENT.value
    ]
    assert comments == [f"Not assessable: {reason}"]
    assert group.finding_sites[0].laterality.value == "24028007"  # Right, from ImageLaterality
