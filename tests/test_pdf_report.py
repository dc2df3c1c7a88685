"""Tests for operators.pdf_report: the PDF file's structure, page content (poppler's pdftotext) and
rendering (pdftoppm), key B-scans, text encoding, speed, the Encapsulated PDF instance."""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import subprocess
import time

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from operators.equipment import AlgorithmInfo
from operators.oct_volume import read_oct_volume
from operators.pdf_report import (
    A4_POINTS,
    ENCAPSULATED_PDF_SOP_CLASS_UID,
    build_pdf_report,
    key_bscans,
    render_report_pdf,
)
from tests.app_support import dciodvfy_errors, fake_prediction, opt_dataset, save

INTENDED_USE = "Demo model: synthetic training data, not for clinical use."
INFO = AlgorithmInfo("aicnet3d_test", "1.2.3", INTENDED_USE, 0.5)
REASON = "too few B-scans: NumberOfFrames is 3, a volume scan needs at least 8"


@pytest.fixture(scope="module")
def volume():
    return read_oct_volume(opt_dataset(31, laterality="L", series_number=3))


@pytest.fixture(scope="module")
def result_pdf(volume):
    return render_report_pdf(volume, fake_prediction(volume.shape, 0.87), INFO)


def _poppler(*command: str, pdf: bytes) -> subprocess.CompletedProcess:
    """Run a poppler utility, the PDF on stdin ("-"); skip when poppler is not installed."""
    path = shutil.which(command[0])
    if path is None:
        pytest.skip(f"{command[0]} (poppler-utils) is not installed")
    return subprocess.run([path, *command[1:]], input=pdf, capture_output=True, timeout=60)


def _text(pdf: bytes) -> str:
    """The page's text (pdftotext), whitespace collapsed: wrapped lines join up again."""
    run = _poppler("pdftotext", "-enc", "UTF-8", "-", "-", pdf=pdf)
    assert run.returncode == 0 and not run.stderr, run.stderr
    return " ".join(run.stdout.decode("utf-8").split())


def _render(pdf: bytes, dpi: int = 40) -> np.ndarray:
    """The page as an (H, W, 3) uint8 array (pdftoppm, PPM); poppler must not complain."""
    run = _poppler("pdftoppm", "-r", str(dpi), "-", pdf=pdf)  # PPM on stdout
    assert run.returncode == 0 and not run.stderr, run.stderr
    header = re.match(rb"P6\s+(\d+)\s+(\d+)\s+255\s", run.stdout)
    assert header is not None
    width, height = int(header[1]), int(header[2])
    return np.frombuffer(run.stdout[header.end() :], np.uint8).reshape(height, width, 3)


def _region(page: np.ndarray, left: float, bottom: float, width: float, height: float):
    """Pixels of a box given in page fractions (from the bottom left, like the layout)."""
    rows, columns = page.shape[:2]
    top = 1 - bottom - height
    return page[
        int(top * rows) : int((top + height) * rows),
        int(left * columns) : int((left + width) * columns),
    ].astype(int)


def test_pdf_file_structure(result_pdf):
    """Header, cross-reference table (every offset at its object), trailer, A4 page, fonts."""
    assert result_pdf.startswith(b"%PDF-1.4\n") and result_pdf.endswith(b"%%EOF\n")
    startxref = int(re.search(rb"startxref\n(\d+)\n%%EOF\n$", result_pdf)[1])
    assert result_pdf[startxref:].startswith(b"xref\n0 ")
    first, count = map(int, re.match(rb"xref\n(\d+) (\d+)\n", result_pdf[startxref:]).groups())
    assert first == 0
    table = result_pdf[startxref:].split(b"\n", 2)[2]
    entries = [table[20 * i : 20 * (i + 1)] for i in range(count)]
    assert entries[0] == b"0000000000 65535 f \n"
    for number, entry in enumerate(entries[1:], start=1):
        assert entry.endswith(b" 00000 n \n"), entry
        assert result_pdf[int(entry[:10]) :].startswith(b"%d 0 obj\n" % number)
    assert re.search(rb"trailer\n<< /Size %d /Root 1 0 R /Info \d+ 0 R /ID" % count, result_pdf)
    media_box = re.search(rb"/MediaBox \[0 0 ([\d.]+) ([\d.]+)\]", result_pdf)
    width, height = float(media_box[1]), float(media_box[2])
    assert (width, height) == pytest.approx(A4_POINTS, abs=0.01)
    assert (width / 72 * 25.4, height / 72 * 25.4) == pytest.approx((210, 297), abs=0.1)
    for font in (b"/Helvetica ", b"/Helvetica-Bold ", b"/Symbol "):
        assert b"/BaseFont " + font in result_pdf
    assert result_pdf.count(b"/Subtype /Image") >= 1 + 2 + 2  # en-face, two B-scans, overlays


def test_result_page_content(result_pdf):
    text = _text(result_pdf)
    for expected in (
        "Glaucoma AI report (OCT)",
        "Müller, Zoë",  # patient name, from Müller^Zoë
        "PAT-0042",
        "1958-02-14",
        "ACC-77",
        "Left eye (OS)",
        "Glaucoma",
        "P(glaucoma) = 0.87",
        "decision threshold 0.5",
        f"Intended use: {INTENDED_USE}",
        "En-face projection",
        "OCT + CARE",
        "OCT + Grad-CAM",
        "Superior hemiretina, B-scan",
        "Inferior hemiretina, B-scan",
        "Nasal ← A-scans → Temporal",  # a left eye: nasal on the left; arrows in Symbol
        "Heat-map value (0-1)",
        "aicnet3d_test 1.2.3",
        "to be reviewed by a clinician",
    ):
        assert expected in text, expected


def test_page_renders_grey_oct_and_coloured_overlays(result_pdf):
    page = _render(result_pdf, dpi=40)
    assert page.shape[:2] == (round(297 / 25.4 * 40), round(210 / 25.4 * 40))
    # En-face panels (axes at x 0.06 / 0.365 / 0.67, y 0.515-0.685): the middle of each.
    oct_only = _region(page, 0.10, 0.56, 0.19, 0.08)
    with_care = _region(page, 0.405, 0.56, 0.19, 0.08)
    coloured = lambda pixels: (np.ptp(pixels, axis=-1) > 20).mean()  # noqa: E731
    assert coloured(oct_only) < 0.1  # greyscale but for the dotted cyan key-scan lines
    assert coloured(with_care) > 0.5  # the inferno overlay
    assert oct_only.std() > 5  # an image, not a blank box
    # The probability bar is filled in the glaucoma colour (#b2182b) up to 0.87.
    bar = _region(page, 0.46, 0.81, 0.3, 0.02).reshape(-1, 3).mean(axis=0)
    assert bar == pytest.approx((0xB2, 0x18, 0x2B), abs=12)


def test_not_assessable_page_states_the_reason(volume):
    pdf = render_report_pdf(volume.dataset, REASON, INFO)
    text = _text(pdf)
    assert "Not assessable" in text and REASON in text and INTENDED_USE in text
    assert "P(glaucoma) =" not in text and "En-face" not in text
    assert b"/Subtype /Image" not in pdf
    _render(pdf, dpi=20)


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("Ŋgʊɲa^Þyrí", "?g??a, Þyrí"),  # letters outside WinAnsi: "?" on the page only
        ("Yamadax^Taroux=山田^太郎=やまだ^たろう", "Yamadax, Taroux"),  # the alphabetic group
        ("Dvořák^Łukasz", "Dvorák, Lukasz"),  # transliterated (á is WinAnsi)
    ],
)
def test_names_outside_latin1_render_and_stay_intact_in_dicom(tmp_path, name, shown):
    source = opt_dataset(5)
    source.SpecificCharacterSet = "ISO_IR 192"
    source.PatientName = name
    volume = read_oct_volume(source)
    ds = build_pdf_report(volume, fake_prediction(volume.shape), INFO)
    document = bytes(ds.EncapsulatedDocument)[: ds.EncapsulatedDocumentLength]
    assert shown in _text(document)
    assert str(pydicom.dcmread(save(ds, tmp_path / "r.dcm")).PatientName) == name


def test_unknown_spacing_and_a_large_bscan(volume):
    """No spacing: the images fill their panels; a B-scan over 400 pixels is block-averaged."""
    rng = np.random.default_rng(0)
    voxels = rng.integers(0, 255, size=(6, 900, 420), dtype=np.uint8)
    large = dataclasses.replace(volume, voxels=voxels, spacing_mm=(math.nan,) * 3)
    pdf = render_report_pdf(large, fake_prediction(voxels.shape, 0.2), INFO)
    text = _text(pdf)
    assert "No glaucoma" in text
    # CARE ramps up along S: the last B-scan of each half is the most salient.
    assert "Superior hemiretina, B-scan 3/6" in text and "Inferior hemiretina, B-scan 6/6" in text
    assert len(pdf) < 2_000_000


def test_rendering_is_fast(volume):
    """The page costs milliseconds, not the quarter second of a plotting library."""
    prediction = fake_prediction(volume.shape, 0.87)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        render_report_pdf(volume, prediction, INFO)
        times.append(time.perf_counter() - start)
    assert min(times) < 0.1, times


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
