"""Bad input, end to end: a corpus of broken, odd and foreign files beside good OCT volumes, run
through the application's steps (``process_folder_direct``) once.

Every bad file gets a clear, specific reason: in the log, in results.json (``results`` for an
OPT instance, ``skipped`` for a file that is not one) and, where a volume is involved, in the SR
("not assessable", Undetermined); never a traceback; and the good volumes beside them (a study of
20 volumes, three patients, non-ASCII names) are all processed. The corpus is generated here, in
tmp_path, from tiny (8, 32, 32) phantoms.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import struct
import time
import tracemalloc
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from model.phantoms import make_phantom
from monai_app.pipeline import process_folder_direct
from monai_app.sample_study import phantom_to_opt_dataset
from operators.equipment import AlgorithmInfo
from operators.oct_volume import MAX_DECODED_BYTES
from operators.sr import GLAUCOMA, UNDETERMINED
from operators.steps import RESULTS_FILE, VolumeJob, load_model, process_job
from tests.app_support import make_bundle, save

TINY = (8, 32, 32)
FRAME_BYTES = TINY[1] * TINY[2]
STUDY20_UID = "1.2.826.0.1.3680043.8.498.5005.20"
OTHER_STUDY_UID = "1.2.826.0.1.3680043.8.498.5005.99"

PATIENTS = {
    "default": dict(patient_id="BAD-0001", patient_name="Doe^Jane"),
    "latin1": dict(patient_id="BAD-0002", patient_name="Müller^Jürgen"),
    "jis": dict(patient_id="BAD-0003", patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう"),
    "utf8": dict(patient_id="BAD-0004", patient_name="Ærøskøbing^Þórunn"),
    "undeclared": dict(patient_id="BAD-0005", patient_name="PLACEHOLDERXX"),  # see UNDECLARED
}
# Latin-1 bytes with no SpecificCharacterSet (non-conformant, seen in old exports).
UNDECLARED = (b"PLACEHOLDERXX ", "Müller^Jürgen ".encode("latin-1"))


def opt(
    seed: int,
    *,
    laterality: str = "R",
    shape: tuple[int, int, int] = TINY,
    patient: str = "default",
    study_uid: str = OTHER_STUDY_UID,
    series_number: int | None = None,
    volume: np.ndarray | None = None,
) -> Dataset:
    """A tiny phantom OPT instance; distinct seeds give distinct SOP Instance UIDs."""
    phantom = make_phantom(seed, glaucoma=seed % 2 == 0, laterality=laterality, shape=shape)
    if volume is not None:
        phantom = dataclasses.replace(phantom, volume=volume)
    return phantom_to_opt_dataset(
        phantom,
        **PATIENTS[patient],
        patient_birth_date="19600101",
        patient_sex="O",
        study_instance_uid=study_uid,
        study_id="5",
        accession_number=f"ACC-{seed}",
        series_number=series_number or seed,
    )


def _patch(path: Path, old: bytes, new: bytes) -> Path:
    """Replace one byte string, which must occur exactly once, in a written file."""
    data = path.read_bytes()
    assert data.count(old) == 1, old
    path.write_bytes(data.replace(old, new))
    return path


def _non_opt(sop_class: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = OTHER_STUDY_UID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OP"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


_FRAMES_IS = b"\x28\x00\x08\x00IS\x02\x00"  # NumberOfFrames, explicit VR, 2 bytes


def _one_frame() -> np.ndarray:
    return make_phantom(17, glaucoma=False, shape=(2, 32, 32)).volume[:1].copy()


def _no_pixels(ds: Dataset) -> Dataset:
    del ds.PixelData
    return ds


def _short_pixels(ds: Dataset) -> Dataset:
    ds.PixelData = ds.PixelData[: 4 * FRAME_BYTES]
    return ds


def _more_frames_declared(ds: Dataset) -> Dataset:
    ds.NumberOfFrames = 12
    return ds


def _fewer_frames_declared(ds: Dataset) -> Dataset:
    ds.NumberOfFrames = 9  # of 12 stored
    del ds.PerFrameFunctionalGroupsSequence[9:]
    return ds


def _one_item_short(ds: Dataset) -> Dataset:
    del ds.PerFrameFunctionalGroupsSequence[-1]
    return ds


def _position_missing(ds: Dataset) -> Dataset:
    del ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
    return ds


def _position_irregular(ds: Dataset) -> Dataset:
    ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence[0].ImagePositionPatient[2] = "55"
    return ds


def _position_duplicate(ds: Dataset) -> Dataset:
    frames = ds.PerFrameFunctionalGroupsSequence
    position = frames[0].PlanePositionSequence[0].ImagePositionPatient
    frames[1].PlanePositionSequence[0].ImagePositionPatient = position
    return ds


def _no_laterality(ds: Dataset) -> Dataset:
    del ds.ImageLaterality
    del ds.SharedFunctionalGroupsSequence[0].FrameAnatomySequence[0].FrameLaterality
    return ds


def _frame_laterality_only(ds: Dataset) -> Dataset:
    del ds.ImageLaterality  # FrameLaterality L remains: a good volume
    return ds


def _conflicting_laterality(ds: Dataset) -> Dataset:
    ds.ImageLaterality = "L"  # FrameLaterality stays R
    return ds


def _huge(ds: Dataset) -> Dataset:
    ds.NumberOfFrames, ds.Rows, ds.Columns = 60000, 65535, 65535
    return ds


def _mpeg2(ds: Dataset) -> Dataset:
    frames = [ds.PixelData[i * FRAME_BYTES : (i + 1) * FRAME_BYTES] for i in range(TINY[0])]
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile @ Main Level
    return ds


def _monochrome1(ds: Dataset) -> Dataset:
    ds.PhotometricInterpretation = "MONOCHROME1"
    return ds


def _negative_spacing(ds: Dataset) -> Dataset:
    ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = ["-0.1", "0"]
    return ds


def _bits12(ds: Dataset) -> Dataset:
    ds.BitsAllocated = 12
    return ds


def _bad_uid(ds: Dataset) -> Dataset:
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ".."  # would escape the output
    return ds


# name -> (builder of the file in the folder, exact reason); None: a good volume.
NOT_ASSESSABLE = {
    "no_pixels.dcm": (
        lambda d: save(_no_pixels(opt(11)), d),
        "missing pixel data (7FE0,0010)",
    ),
    "short_pixels.dcm": (
        lambda d: save(_short_pixels(opt(12)), d),
        "pixel data shorter than declared: 4096 bytes for 8 frames of 32 x 32 "
        "(8192 bytes expected)",
    ),
    "frames_more_than_stored.dcm": (
        lambda d: save(_more_frames_declared(opt(13)), d),
        "pixel data shorter than declared: 8192 bytes for 12 frames of 32 x 32 "
        "(12288 bytes expected)",
    ),
    "frames_fewer_than_stored.dcm": (
        lambda d: save(_fewer_frames_declared(opt(14, shape=(12, 32, 32))), d),
        "pixel data longer than declared: 12288 bytes for 9 frames of 32 x 32 (9216 bytes "
        "expected); NumberOfFrames, Rows, Columns or BitsAllocated is wrong",
    ),
    "frames_not_a_number.dcm": (
        lambda d: _patch(save(opt(15), d), _FRAMES_IS + b"8 ", _FRAMES_IS + b"ab"),
        "invalid NumberOfFrames: not a whole number >= 0",
    ),
    "frames_items_mismatch.dcm": (
        lambda d: save(_one_item_short(opt(16)), d),
        "NumberOfFrames is 8 but PerFrameFunctionalGroupsSequence has 7 items",
    ),
    "one_frame.dcm": (
        lambda d: save(opt(17, shape=(2, 32, 32), volume=_one_frame()), d),
        "too few B-scans: NumberOfFrames is 1, a volume scan needs at least 8",
    ),
    "position_missing.dcm": (
        lambda d: save(_position_missing(opt(18)), d),
        "inconsistent per-frame positions: 1 of 8 frames lack PlanePositionSequence > "
        "ImagePositionPatient",
    ),
    "position_irregular.dcm": (
        lambda d: save(_position_irregular(opt(19)), d),
        "inconsistent per-frame positions: B-scan gaps range 1.125-51.06 mm around a median "
        "of 1.125 mm",
    ),
    "position_duplicate.dcm": (
        lambda d: save(_position_duplicate(opt(20)), d),
        "inconsistent per-frame positions: two frames share one ImagePositionPatient along the "
        "stack normal",
    ),
    "laterality_missing.dcm": (
        lambda d: save(_no_laterality(opt(21)), d),
        "missing laterality: no ImageLaterality (0020,0062) or FrameLaterality (0020,9072) R or L",
    ),
    "laterality_conflict.dcm": (
        lambda d: save(_conflicting_laterality(opt(22)), d),
        "conflicting laterality: ImageLaterality L; FrameLaterality R",
    ),
    "unknown_syntax.dcm": (
        lambda d: _unknown_syntax(opt(23), d),
        "unknown transfer syntax 1.2.3.4.5.6.7: the pixel data cannot be decoded",
    ),
    "mpeg2_syntax.dcm": (
        lambda d: save(_mpeg2(opt(24)), d),
        "unsupported transfer syntax MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100): "
        "no decoder for its pixel data",
    ),
    "huge_dimensions.dcm": (
        lambda d: save(_huge(opt(25)), d),
        "declared size 60000 frames x 65535 rows x 65535 columns x 1 bytes = 239992.7 GiB "
        "exceeds the 2 GiB limit",
    ),
    "huge_element_length.dcm": (
        lambda d: _huge_length(opt(26), d),
        "truncated file: pixel data (7FE0,0010) declares 4294967280 bytes, the file holds 8192",
    ),
    "truncated_in_pixels.dcm": (
        lambda d: _truncate(save(opt(27), d), 3000),
        "truncated file: pixel data (7FE0,0010) declares 8192 bytes, the file holds 5192",
    ),
    "truncated_in_frames.dcm": (
        lambda d: _truncate(save(opt(28), d), FRAME_BYTES * TINY[0] + 200),
        "truncated file: per-frame functional groups sequence (5200,9230) declares",
    ),
    "monochrome1.dcm": (
        lambda d: save(_monochrome1(opt(29)), d),
        "PhotometricInterpretation is MONOCHROME1; OPT B-scans are MONOCHROME2",
    ),
    "negative_spacing.dcm": (
        lambda d: save(_negative_spacing(opt(30)), d),
        "invalid PixelSpacing -0.1\\0 mm: spacings must be positive",
    ),
    "bits_allocated_12.dcm": (
        lambda d: save(_bits12(opt(31)), d),
        "BitsAllocated is 12; OPT pixel data is 8 or 16 bits",
    ),
    "blank.dcm": (
        lambda d: save(opt(32, volume=np.full(TINY, 7, np.uint8)), d),
        "blank or constant volume: every voxel is 7",
    ),
}

# Not an OPT instance, or not to be read: listed under "skipped" with the reason.
SKIPPED = {
    "random_bytes.dcm": (
        lambda d: d.write_bytes(np.random.default_rng(5).bytes(5000)),
        "unreadable file: not DICOM (no 'DICM' prefix after the 128-byte preamble)",
    ),
    "random_after_dicm.dcm": (
        lambda d: d.write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(1).bytes(3000)),
        "no SOPClassUID (0008,0016): not a readable DICOM instance",
    ),
    "notes.txt": (
        lambda d: d.write_text("not DICOM"),
        "unreadable file: not DICOM (no 'DICM' prefix after the 128-byte preamble)",
    ),
    "fundus_photo.dcm": (
        lambda d: save(_non_opt("1.2.840.10008.5.1.4.1.1.77.1.5.1"), d),
        "not an OCT volume: SOP class 1.2.840.10008.5.1.4.1.1.77.1.5.1 (Ophthalmic Photography "
        "8 Bit Image Storage)",
    ),
    "secondary_capture.dcm": (
        lambda d: save(_non_opt("1.2.840.10008.5.1.4.1.1.7"), d),
        "not an OCT volume: SOP class 1.2.840.10008.5.1.4.1.1.7 (Secondary Capture Image Storage)",
    ),
    # A truncated copy of a good volume (same SOPInstanceUID): the whole file is used.
    "aa_truncated_copy.dcm": (
        lambda d: d.write_bytes((d.parent / "good" / "od_default.dcm").read_bytes()[:-2000]),
        "duplicate SOPInstanceUID: good/od_default.dcm is used",
    ),
}

# Good volumes beside the bad ones: three patients (non-ASCII names), two studies.
GOOD = {
    "good/od_default.dcm": lambda: opt(41, laterality="R"),
    "good/os_latin1.dcm": lambda: _charset(opt(42, laterality="L", patient="latin1"), "ISO_IR 100"),
    "good/od_jis.dcm": lambda: _charset(opt(43, patient="jis"), ["", "ISO 2022 IR 87"]),
    "good/os_utf8.dcm": lambda: opt(44, laterality="L", patient="utf8"),
    "good/frame_laterality_only.dcm": lambda: _frame_laterality_only(opt(45, laterality="L")),
    "good/od_undeclared_charset.dcm": lambda: _no_charset(opt(46, patient="undeclared")),
}
STUDY20 = [f"study20/series{n:02d}.dcm" for n in range(1, 21)]


def _no_charset(ds: Dataset) -> Dataset:
    del ds.SpecificCharacterSet
    return ds


def _charset(ds: Dataset, value) -> Dataset:
    ds.SpecificCharacterSet = value
    return ds


def _unknown_syntax(ds: Dataset, path: Path) -> Path:
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"
    pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return path


def _huge_length(ds: Dataset, path: Path) -> Path:
    """Pixel Data whose element declares 4 GiB (its 32-bit length field) in a 20 kB file."""
    save(ds, path)
    header = b"\xe0\x7f\x10\x00OB\x00\x00"
    return _patch(path, header + struct.pack("<I", 8192), header + struct.pack("<I", 0xFFFFFFF0))


def _truncate(path: Path, cut: int) -> Path:
    path.write_bytes(path.read_bytes()[:-cut])
    return path


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The corpus, one graph-free run over it, the results and every log record of the run."""
    root = tmp_path_factory.mktemp("bad_input")
    bundle = make_bundle(root / "bundle")
    folder = root / "in"
    for name, make in GOOD.items():
        save(make(), folder / name)
    _patch(folder / "good/od_undeclared_charset.dcm", *UNDECLARED)
    for number, name in enumerate(STUDY20, start=1):
        ds = opt(100 + number, laterality="RL"[number % 2], study_uid=STUDY20_UID)
        save(ds, folder / name)
    for name, (make, _) in {**NOT_ASSESSABLE, **SKIPPED}.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        make(path)

    handler = _Records()
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.INFO)
    start = time.perf_counter()
    try:
        entries = process_folder_direct(folder, root / "out", bundle)
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(level)
    document = json.loads((root / "out" / RESULTS_FILE).read_text())
    return {
        "root": root,
        "bundle": bundle,
        "folder": folder,
        "out": root / "out",
        "entries": {e["source_file"]: e for e in entries},
        "document": document,
        "records": handler.records,
        "seconds": time.perf_counter() - start,
    }


def _messages(run) -> list[str]:
    return [record.getMessage() for record in run["records"]]


@pytest.mark.parametrize("name", sorted(NOT_ASSESSABLE))
def test_bad_volume_gets_its_reason_in_results_log_and_sr(run, name):
    reason = NOT_ASSESSABLE[name][1]
    entry = run["entries"][name]
    assert entry["assessable"] is False and entry["probability"] is None
    assert entry["reason"].startswith(reason), entry["reason"]
    logged = [m for m in _messages(run) if name in m and "not assessable" in m]
    assert logged and entry["reason"] in logged[0]
    assert "seg" not in entry["outputs"]
    sr = hd.sr.srread(run["out"] / entry["outputs"]["sr"])
    (group,) = sr.content.get_image_measurement_groups()
    assert group.get_qualitative_evaluations(name=GLAUCOMA)[0].value == UNDETERMINED
    comments = [
        item.TextValue
        for item in group[0].ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106"
    ]
    assert comments == [f"Not assessable: {entry['reason']}"]
    assert group.source_images[0].referenced_sop_instance_uid == entry["sop_instance_uid"]
    assert (run["out"] / entry["outputs"]["report"]).is_file()


@pytest.mark.parametrize("name", sorted(SKIPPED))
def test_foreign_or_duplicate_file_is_skipped_with_its_reason(run, name):
    reason = SKIPPED[name][1]
    assert name not in run["entries"]
    skipped = {s["source_file"]: s["reason"] for s in run["document"]["skipped"]}
    assert skipped[name] == reason
    assert any(name in m and reason in m for m in _messages(run))


def test_every_good_volume_beside_the_bad_ones_is_processed(run):
    good = [*GOOD, *STUDY20]
    for name in good:
        entry = run["entries"][name]
        assert entry["assessable"] is True, (name, entry["reason"])
        assert set(entry["outputs"]) == {"sr", "seg", "report"}, (name, entry.get("errors"))
        assert 0.0 <= entry["probability"] <= 1.0
    assert run["entries"]["good/frame_laterality_only.dcm"]["laterality"] == "L"
    # One entry per OPT file, none lost, none twice; the bad files are all accounted for.
    document = run["document"]
    assert len(document["results"]) == len(good) + len(NOT_ASSESSABLE)
    listed = [e["source_file"] for e in document["results"]] + [
        s["source_file"] for s in document["skipped"]
    ]
    assert sorted(listed) == sorted([*good, *NOT_ASSESSABLE, *SKIPPED])


def test_a_study_of_twenty_volumes_gives_twenty_results_in_that_study(run):
    entries = [run["entries"][name] for name in STUDY20]
    assert len({e["sop_instance_uid"] for e in entries}) == 20
    folders = {Path(e["outputs"]["sr"]).parent for e in entries}
    assert len(folders) == 20
    for entry in entries:
        assert entry["study_instance_uid"] == STUDY20_UID
        for relative in entry["outputs"].values():
            ds = pydicom.dcmread(run["out"] / relative, stop_before_pixels=True)
            assert ds.StudyInstanceUID == STUDY20_UID
    assert [e["laterality"] for e in entries] == ["LR"[n % 2] for n in range(20)]


@pytest.mark.parametrize(
    ("name", "character_set"),
    [
        ("good/os_latin1.dcm", "ISO_IR 100"),
        ("good/od_jis.dcm", ["ISO 2022 IR 6", "ISO 2022 IR 87"]),  # source: "\ISO 2022 IR 87"
        ("good/os_utf8.dcm", "ISO_IR 192"),
        ("good/od_undeclared_charset.dcm", "ISO_IR 192"),  # a valid output of an invalid source
    ],
)
def test_non_ascii_patient_names_survive_into_the_sr_and_seg(run, name, character_set):
    entry = run["entries"][name]
    source = pydicom.dcmread(run["folder"] / name, stop_before_pixels=True)
    assert not str(source.PatientName).isascii()
    for kind in ("sr", "seg", "report"):
        ds = pydicom.dcmread(run["out"] / entry["outputs"][kind], stop_before_pixels=True)
        assert str(ds.PatientName) == str(source.PatientName), (name, kind)
        assert "\ufffd" not in str(ds.PatientName)  # no replacement character
        if kind != "report":  # the report copies the source's value as it is
            assert ds.SpecificCharacterSet == character_set


def test_no_traceback_and_no_error_level_line(run):
    for record in run["records"]:
        assert record.exc_info is None, record.getMessage()
        assert "Traceback" not in record.getMessage()
        assert record.levelno < logging.ERROR, record.getMessage()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom, writing ".."
def test_a_file_escaping_by_its_uid_writes_nothing_outside_the_output(run, tmp_path):
    folder = tmp_path / "in"
    save(_bad_uid(opt(51)), folder / "dotdot.dcm")
    out = tmp_path / "nested" / "out"
    (entry,) = process_folder_direct(folder, out, run["bundle"])
    assert entry["assessable"] is False
    assert entry["reason"] == "invalid SOPInstanceUID: not a DICOM UID"
    assert entry["outputs"] == {}
    assert sorted(p.name for p in (tmp_path / "nested").iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == [RESULTS_FILE]


@pytest.mark.parametrize("name", ["huge_dimensions.dcm", "huge_element_length.dcm"])
def test_huge_declarations_are_refused_fast_and_without_allocating(run, name):
    predictor = load_model(run["bundle"])
    info = AlgorithmInfo.from_metadata(predictor.metadata)
    job = VolumeJob(path=run["folder"] / name, input_root=run["folder"])
    tracemalloc.start()
    start = time.perf_counter()
    try:
        entry = process_job(job, predictor, info, run["root"] / "huge_out")
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert entry["reason"] == NOT_ASSESSABLE[name][1]
    assert seconds < 5.0
    assert peak < 64 * 1024**2 < MAX_DECODED_BYTES  # the SR and the PDF page, no pixel buffer
