"""Tests of the phantom -> DICOM OPT writer (monai_app/sample_study.py)."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from model.phantoms import make_phantom
from monai_app.sample_study import (
    OPT_SOP_CLASS_UID,
    main,
    phantom_to_opt_dataset,
    write_sample_study,
)

SHAPE = (16, 32, 24)
J2K_SHAPE = (16, 32, 32)  # the JPEG 2000 encoder needs >= 32 rows and columns

# dciodvfy 20220618 false positives on a correct OPT (docs/dicom.md section 6): the OPT IOD fixes
# the concatenation attributes at 0/1/1 (Type 1), which dciodvfy reads as a 1C condition.
DCIODVFY_ALLOWED = (
    "Error - Attribute present when condition unsatisfied (which may not be present otherwise) "
    "Type 1C Conditional Element=<ConcatenationFrameOffsetNumber> "
    "Module=<MultiFrameFunctionalGroupsCommon>",
    "Error - Attribute present when condition unsatisfied (which may not be present otherwise) "
    "Type 1C Conditional Element=<InConcatenationNumber> Module=<MultiFrameFunctionalGroupsCommon>",
    "Error - Cannot be less than or equal to one since then not a Concatenation - attribute "
    "<InConcatenationTotalNumber>",
)

needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy missing")


def _patient(**overrides):
    kwargs = dict(
        patient_id="P-1", patient_name="Doe^Jane", patient_birth_date="19650312",
        patient_sex="F", study_instance_uid=generate_uid(), study_id="42",
        accession_number="ACC-1", series_number=7,
    )
    kwargs.update(overrides)
    return kwargs


def _write(tmp_path, phantom, name="opt.dcm", **overrides):
    ds = phantom_to_opt_dataset(phantom, **_patient(**overrides))
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _dciodvfy_errors(path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error") and line not in DCIODVFY_ALLOWED]


def _in_stack_positions(ds) -> list[int]:
    return [int(f.FrameContentSequence[0].InStackPositionNumber)
            for f in ds.PerFrameFunctionalGroupsSequence]


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(3, glaucoma=True, laterality="R", shape=SHAPE)


def test_roundtrip_pixels_and_header(tmp_path, phantom):
    ds = pydicom.dcmread(_write(tmp_path, phantom))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == OPT_SOP_CLASS_UID == ds.file_meta.MediaStorageSOPClassUID
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.Modality == "OPT" and ds.SpecificCharacterSet == "ISO_IR 192"
    assert (ds.NumberOfFrames, ds.Rows, ds.Columns) == SHAPE
    assert np.array_equal(ds.pixel_array, phantom.volume)
    assert ds.OphthalmicVolumetricPropertiesFlag == "YES"
    assert ds.FrameOfReferenceUID and ds.PositionReferenceIndicator == ""
    assert (ds.PatientID, str(ds.PatientName), ds.StudyID, ds.SeriesNumber) == (
        "P-1", "Doe^Jane", "42", 7)
    assert ds.ScanPatternTypeCodeSequence[0].CodeValue == "128279"
    assert ds.RelativeImagePositionCodeSequence[0].CodeValue == "111903"
    assert ds.AnatomicRegionSequence[0].CodeValue == "5665001"
    assert ds.AcquisitionDeviceTypeCodeSequence[0].CodeValue == "392012008"


@pytest.mark.parametrize("laterality", ["R", "L"])
def test_laterality(tmp_path, laterality):
    p = make_phantom(4, glaucoma=False, laterality=laterality, shape=SHAPE)
    ds = pydicom.dcmread(_write(tmp_path, p))
    assert ds.ImageLaterality == laterality
    assert "Laterality" not in ds  # series Laterality must be absent beside ImageLaterality
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert shared.FrameAnatomySequence[0].FrameLaterality == laterality


def test_geometry(tmp_path, phantom):
    ds = pydicom.dcmread(_write(tmp_path, phantom))
    d_slice, d_axial, d_lateral = phantom.spacing_mm
    shared = ds.SharedFunctionalGroupsSequence[0]
    measures = shared.PixelMeasuresSequence[0]
    assert np.allclose([float(v) for v in measures.PixelSpacing], [d_axial, d_lateral])
    assert float(measures.SpacingBetweenSlices) == pytest.approx(d_slice)
    assert float(measures.SliceThickness) == pytest.approx(d_slice)
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array([f.PlanePositionSequence[0].ImagePositionPatient
                          for f in ds.PerFrameFunctionalGroupsSequence], float)
    steps = np.diff(positions, axis=0)
    # Frames one B-scan apart along the stack normal, stepping inferior (-z in LPS).
    assert np.allclose(steps @ normal, -d_slice, atol=1e-4)
    assert np.allclose(steps - np.outer(steps @ normal, normal), 0.0, atol=1e-6)
    assert _in_stack_positions(ds) == list(range(1, SHAPE[0] + 1))
    values = [f.FrameContentSequence[0].DimensionIndexValues  # one dimension: a single UL
              for f in ds.PerFrameFunctionalGroupsSequence]
    assert values == list(range(1, SHAPE[0] + 1))
    assert ds.DimensionIndexSequence[0].DimensionIndexPointer == 0x00209057


def test_shuffled_frame_order(tmp_path, phantom):
    order = np.random.default_rng(0).permutation(SHAPE[0])  # storage index of spatial frame j
    ds = pydicom.dcmread(_write(tmp_path, phantom, frame_order=order))
    stored = ds.pixel_array
    assert not np.array_equal(stored, phantom.volume)
    assert np.array_equal(stored[order], phantom.volume)
    # A reader sorting by InStackPositionNumber (or by position) restores the spatial order.
    by_number = np.argsort(_in_stack_positions(ds))
    assert np.array_equal(by_number, order)
    assert np.array_equal(stored[by_number], phantom.volume)
    z = np.array([float(f.PlanePositionSequence[0].ImagePositionPatient[2])
                  for f in ds.PerFrameFunctionalGroupsSequence])
    assert np.array_equal(np.argsort(-z), order)
    times = [f.FrameContentSequence[0].FrameAcquisitionDateTime
             for f in ds.PerFrameFunctionalGroupsSequence]
    assert sorted(times) == [times[i] for i in order]  # acquired in spatial order


def test_non_ascii_patient_name(tmp_path, phantom):
    name = "Müller^Zoë=山田^太郎"
    ds = pydicom.dcmread(_write(tmp_path, phantom, patient_name=name))
    assert str(ds.PatientName) == name


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(transfer_syntax=JPEGBaseline8Bit),  # lossy: not supported
        dict(frame_order=[0, 1, 2]),
        dict(frame_order=[0] * SHAPE[0]),
        dict(transfer_syntax=JPEG2000Lossless),  # 24 columns < 32
    ],
)
def test_rejects_bad_arguments(phantom, kwargs):
    with pytest.raises(ValueError):
        phantom_to_opt_dataset(phantom, **_patient(**kwargs))


@pytest.mark.parametrize(
    "transfer_syntax",
    [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless, JPEGLSLossless,
     JPEG2000Lossless],
)
def test_other_transfer_syntaxes_are_lossless(tmp_path, transfer_syntax):
    shape = J2K_SHAPE if transfer_syntax == JPEG2000Lossless else SHAPE
    p = make_phantom(5, glaucoma=True, laterality="L", shape=shape)
    reference = pydicom.dcmread(_write(tmp_path, p, "ref.dcm"))
    order = np.random.default_rng(1).permutation(shape[0])
    kwargs = dict(study_instance_uid=reference.StudyInstanceUID, transfer_syntax=transfer_syntax)
    copy = pydicom.dcmread(_write(tmp_path, p, "copy.dcm", **kwargs))
    assert copy.file_meta.TransferSyntaxUID == transfer_syntax
    assert copy.SOPInstanceUID == reference.SOPInstanceUID  # lossless: same instance
    assert copy.LossyImageCompression == "00"
    assert np.array_equal(copy.pixel_array, reference.pixel_array)
    shuffled = pydicom.dcmread(_write(tmp_path, p, "shuffled.dcm", frame_order=order, **kwargs))
    assert np.array_equal(shuffled.pixel_array[order], p.volume)


@needs_dciodvfy
@pytest.mark.parametrize(
    "transfer_syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEGLSLossless,
     JPEG2000Lossless],
)
def test_dciodvfy_clean(tmp_path, transfer_syntax):
    shape = J2K_SHAPE if transfer_syntax == JPEG2000Lossless else SHAPE
    p = make_phantom(6, glaucoma=True, laterality="L", shape=shape)
    order = np.random.default_rng(2).permutation(shape[0])
    path = _write(tmp_path, p, transfer_syntax=transfer_syntax, frame_order=order,
                  patient_name="Müller^Zoë")
    assert _dciodvfy_errors(path) == []


@needs_dciodvfy
def test_dciodvfy_reports_a_real_error(tmp_path, phantom):
    """The allow-list hides only the known false positives: a series Laterality is caught."""
    ds = phantom_to_opt_dataset(phantom, **_patient())
    ds.Laterality = "R"
    path = tmp_path / "bad.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert _dciodvfy_errors(path)


@pytest.mark.skipif(shutil.which("dcmdump") is None, reason="dcmtk missing")
def test_deflated_parses_with_dcmtk(tmp_path, phantom):
    """dciodvfy (built without zlib) cannot inflate; dcmtk checks the deflated encoding instead."""
    path = _write(tmp_path, phantom, transfer_syntax=DeflatedExplicitVRLittleEndian)
    result = subprocess.run(["dcmdump", "-q", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Ophthalmic" in result.stdout or "1.2.840.10008.5.1.4.1.1.77.1.5.4" in result.stdout


def test_write_sample_study(tmp_path):
    paths = write_sample_study(tmp_path / "a", shape=SHAPE, seed=11)
    assert [p.name for p in paths] == ["OD_glaucoma.dcm", "OS_normal.dcm"]
    od, os_ = (pydicom.dcmread(p) for p in paths)
    assert (od.ImageLaterality, os_.ImageLaterality) == ("R", "L")
    assert od.PatientID == os_.PatientID and od.StudyInstanceUID == os_.StudyInstanceUID
    assert od.SeriesInstanceUID != os_.SeriesInstanceUID
    assert od.FrameOfReferenceUID != os_.FrameOfReferenceUID
    assert od.SeriesNumber != os_.SeriesNumber
    assert (od.NumberOfFrames, od.Rows, od.Columns) == SHAPE
    expected = make_phantom(11, glaucoma=True, laterality="R", shape=SHAPE, severity=0.8)
    assert np.array_equal(od.pixel_array, expected.volume)
    # Reproducible: same seed, same bytes; another seed, other UIDs.
    again = write_sample_study(tmp_path / "b", shape=SHAPE, seed=11)
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(paths, again, strict=True))
    other = pydicom.dcmread(write_sample_study(tmp_path / "c", shape=SHAPE, seed=12)[0])
    assert other.StudyInstanceUID != od.StudyInstanceUID
    assert other.SOPInstanceUID != od.SOPInstanceUID


@needs_dciodvfy
def test_sample_study_is_consistent(tmp_path):
    paths = write_sample_study(tmp_path, shape=SHAPE, seed=1)
    for path in paths:
        assert _dciodvfy_errors(path) == []
    result = subprocess.run(["dcentvfy", *map(str, paths)], capture_output=True, text=True,
                            timeout=60)
    assert "Error" not in result.stdout + result.stderr


def test_cli(tmp_path, capsys):
    assert main([str(tmp_path / "in"), "--seed", "3", "--shape", *map(str, SHAPE),
                 "--transfer-syntax", "rle"]) == 0
    printed = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in printed] == ["OD_glaucoma.dcm", "OS_normal.dcm"]
    ds = pydicom.dcmread(printed[0])
    assert ds.file_meta.TransferSyntaxUID == RLELossless and ds.NumberOfFrames == SHAPE[0]


def test_cli_module_entry_point(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "monai_app.sample_study", str(tmp_path),
         "--shape", *map(str, SHAPE)],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OD_glaucoma.dcm", "OS_normal.dcm"]
