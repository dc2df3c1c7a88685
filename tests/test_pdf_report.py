"""Tests for operators.pdf_report: page content, key B-scans, Encapsulated PDF instance."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from operators.equipment import AlgorithmInfo
from operators.oct_volume import read_oct_volume
from operators.pdf_report import (
    A4_INCHES,
    ENCAPSULATED_PDF_SOP_CLASS_UID,
    build_pdf_report,
    key_bscans,
    report_figure,
)
from tests.app_support import dciodvfy_errors, fake_prediction, opt_dataset, save

INTENDED_USE = "Demo model: synthetic training data, not for clinical use."
INFO = AlgorithmInfo("aicnet3d_test", "1.2.3", INTENDED_USE, 0.5)


@pytest.fixture(scope="module")
def volume():
    return read_oct_volume(opt_dataset(31, laterality="L", series_number=3))


def _texts(fig):
    texts = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        texts += [t.get_text() for t in ax.texts]
    return "\n".join(texts)


def test_result_page_content(volume):
    fig = report_figure(volume, fake_prediction(volume.shape, 0.87), INFO)
    text = _texts(fig)
    assert tuple(fig.get_size_inches()) == pytest.approx(A4_INCHES)
    for expected in (
        "Müller, Zoë",  # patient name, from Müller^Zoë
        "PAT-0042",
        "1958-02-14",
        "ACC-77",
        "Left eye (OS)",
        "Glaucoma",
        "P(glaucoma) = 0.87",
        INTENDED_USE,
        "En-face projection",
        "OCT + CARE",
        "OCT + Grad-CAM",
        "Superior hemiretina",
        "Inferior hemiretina",
        "aicnet3d_test 1.2.3",
        "Nasal",  # a left eye: nasal on the left of the B-scans
    ):
        assert expected in text, expected
    assert len(fig.axes) >= 3 + 4  # three en-face panels, four key B-scan panels


def test_not_assessable_page_states_the_reason(volume):
    reason = "too few B-scans: NumberOfFrames is 3, a volume scan needs at least 8"
    text = _texts(report_figure(volume.dataset, reason, INFO))
    assert "Not assessable" in text and reason in text and INTENDED_USE in text
    assert "P(glaucoma) =" not in text


def test_key_bscans_pick_the_most_salient_of_each_half():
    care = np.zeros((10, 4, 4), np.float32)
    gradcam = np.zeros_like(care)
    assert key_bscans(care, gradcam) == {"superior": 2, "inferior": 7}  # ties: the middle
    care[3] = 1.0
    gradcam[8] = 0.5
    assert key_bscans(care, gradcam) == {"superior": 3, "inferior": 8}


@pytest.mark.parametrize("assessable", [True, False])
def test_encapsulated_pdf_instance(tmp_path, volume, assessable):
    outcome = fake_prediction(volume.shape) if assessable else "blank or constant volume"
    source = volume if assessable else volume.dataset
    path = save(build_pdf_report(source, outcome, INFO), tmp_path / "report.dcm")
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    opt = volume.dataset
    assert ds.SOPClassUID == ENCAPSULATED_PDF_SOP_CLASS_UID
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.Modality == "DOC"
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    document = bytes(ds.EncapsulatedDocument)[: ds.EncapsulatedDocumentLength]
    assert document.startswith(b"%PDF-") and document.rstrip().endswith(b"%%EOF")
    for keyword in (
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "AccessionNumber",
        "StudyID",
    ):
        assert ds[keyword].value == opt[keyword].value, keyword
    assert ds.SeriesInstanceUID != opt.SeriesInstanceUID
    assert ds.SeriesNumber == 303
    assert ds.SourceInstanceSequence[0].ReferencedSOPInstanceUID == opt.SOPInstanceUID
    assert ds.Manufacturer == INFO.manufacturer
    assert ds.ManufacturerModelName == INFO.app_name
    assert list(ds.SoftwareVersions) == INFO.software_versions
