"""Patient safety: every output carries exactly the identifiers of the volume it was computed from,
and no output lands in another patient's study, when one input folder mixes patients and studies.

One run of the application (the holoscan graph, in-process) over a folder holding three patients
in four studies, files named and nested without regard to patient, two volumes with identical
pixels in different patients, and a volume that is not assessable. Every output file found in the
output folder is traced back to its source by its references, and its identity compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset

from model.phantoms import make_phantom
from monai_app.pipeline import process_folder
from monai_app.sample_study import phantom_to_opt_dataset
from operators.equipment import AlgorithmInfo
from operators.steps import RESULTS_FILE, VolumeJob, load_model, process_job
from tests.app_support import make_bundle, save

TINY = (8, 32, 32)
PATIENT_KEYS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
STUDY_KEYS = ("StudyInstanceUID", "StudyID", "AccessionNumber", "StudyDate")

PATIENTS = {
    "A": dict(
        patient_id="PS-A-111",
        patient_name="Alpha^Anna",
        patient_birth_date="19501010",
        patient_sex="F",
    ),
    "B": dict(
        patient_id="PS-B-222",
        patient_name="Beta^Björn",
        patient_birth_date="19620202",
        patient_sex="M",
    ),
    "C": dict(
        patient_id="PS-C-333",
        patient_name="Gamma^Chloé",
        patient_birth_date="19770707",
        patient_sex="O",
    ),
}
STUDIES = {  # study -> (patient, StudyInstanceUID, accession)
    "A1": ("A", "1.2.826.0.1.3680043.8.498.6001.1", "ACC-A1"),
    "A2": ("A", "1.2.826.0.1.3680043.8.498.6001.2", "ACC-A2"),
    "B1": ("B", "1.2.826.0.1.3680043.8.498.6002.1", "ACC-B1"),
    "C1": ("C", "1.2.826.0.1.3680043.8.498.6003.1", "ACC-C1"),
}
# file -> (study, phantom seed, laterality, series number); the same seed in A1 and B1.
VOLUMES = {
    "mixed/001.dcm": ("B1", 7, "R", 1),
    "mixed/002.dcm": ("A1", 7, "R", 1),
    "mixed/003.dcm": ("C1", 9, "L", 2),
    "mixed/deeper/004.dcm": ("A2", 11, "L", 3),
    "mixed/deeper/005.dcm": ("A1", 12, "L", 2),
    "other/006.dcm": ("B1", 13, "L", 2),
    "other/007_not_assessable.dcm": ("C1", 14, "R", 3),
}


def _volume(study: str, seed: int, laterality: str, series: int) -> Dataset:
    patient, study_uid, accession = STUDIES[study]
    phantom = make_phantom(seed, glaucoma=seed % 2 == 1, laterality=laterality, shape=TINY)
    ds = phantom_to_opt_dataset(
        phantom,
        **PATIENTS[patient],
        study_instance_uid=study_uid,
        study_id=study,
        accession_number=accession,
        series_number=series,
    )
    ds.StudyDate = f"2024010{list(STUDIES).index(study) + 1}"
    return ds


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("patient_safety")
    bundle = make_bundle(root / "bundle")
    folder = root / "in"
    for name, spec in VOLUMES.items():
        ds = _volume(*spec)
        if "not_assessable" in name:
            del ds.ImageLaterality
            del ds.SharedFunctionalGroupsSequence[0].FrameAnatomySequence[0].FrameLaterality
        save(ds, folder / name)
    entries = process_folder(folder, root / "out", bundle)
    sources = {
        str(ds.SOPInstanceUID): ds
        for ds in (pydicom.dcmread(folder / name, stop_before_pixels=True) for name in VOLUMES)
    }
    return {
        "root": root,
        "bundle": bundle,
        "out": root / "out",
        "entries": {e["source_file"]: e for e in entries},
        "sources": sources,
    }


def _referenced_sources(ds: Dataset) -> set[str]:
    """Every SOP Instance UID an output references, wherever the IOD puts references."""
    found: set[str] = set()

    def walk(dataset: Dataset) -> None:
        for element in dataset:
            if element.VR == "SQ":
                for item in element.value:
                    walk(item)
            elif element.keyword == "ReferencedSOPInstanceUID":
                found.add(str(element.value))

    walk(ds)
    return found


def test_every_volume_has_its_results(run):
    assert set(run["entries"]) == set(VOLUMES)
    for name, entry in run["entries"].items():
        study, *_ = VOLUMES[name]
        patient, study_uid, _ = STUDIES[study]
        assert entry["patient_id"] == PATIENTS[patient]["patient_id"]
        assert entry["study_instance_uid"] == study_uid
        expected = {"sr", "report"} if "not_assessable" in name else {"sr", "seg", "report"}
        assert set(entry["outputs"]) == expected, entry.get("errors")
        # The results of a volume lie in the folder named by its SOPInstanceUID.
        assert {Path(p).parts[0] for p in entry["outputs"].values()} == {entry["sop_instance_uid"]}
    document = json.loads((run["out"] / RESULTS_FILE).read_text())
    assert document["skipped"] == []


def test_every_output_file_carries_exactly_its_sources_identity(run):
    files = sorted(run["out"].rglob("*.dcm"))
    assert len(files) == 3 * len(VOLUMES) - 1  # no SEG for the volume that is not assessable
    source_series = {str(s.SeriesInstanceUID) for s in run["sources"].values()}
    for path in files:
        output = pydicom.dcmread(path, stop_before_pixels=True)
        referenced = _referenced_sources(output)
        assert len(referenced) == 1, (path, referenced)  # one volume in, one volume referenced
        (uid,) = referenced
        source = run["sources"][uid]
        assert path.parent.name == uid
        for keyword in PATIENT_KEYS + STUDY_KEYS:
            assert output[keyword].value == source[keyword].value, (path, keyword)
        if "FrameOfReferenceUID" in output:
            assert output.FrameOfReferenceUID == source.FrameOfReferenceUID, path
        assert str(output.SeriesInstanceUID) not in source_series  # a new series, in that study
        evidence = output.get("CurrentRequestedProcedureEvidenceSequence") or []
        for study in evidence:
            assert study.StudyInstanceUID == source.StudyInstanceUID
            assert [s.SeriesInstanceUID for s in study.ReferencedSeriesSequence] == [
                source.SeriesInstanceUID
            ]


def test_seg_is_on_its_sources_frames_and_frame_of_reference(run):
    for name, entry in run["entries"].items():
        if "seg" not in entry["outputs"]:
            continue
        source = run["sources"][entry["sop_instance_uid"]]
        seg = hd.seg.segread(run["out"] / entry["outputs"]["seg"])
        assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert seg.get_source_image_uids() == [
            (source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID)
        ]
        derived = {
            image.ReferencedSOPInstanceUID
            for frame in seg.PerFrameFunctionalGroupsSequence
            for derivation in frame.DerivationImageSequence
            for image in derivation.SourceImageSequence
        }
        assert derived == {source.SOPInstanceUID}, name


def test_sr_measures_its_own_volume(run):
    for entry in run["entries"].values():
        source = run["sources"][entry["sop_instance_uid"]]
        sr = hd.sr.srread(run["out"] / entry["outputs"]["sr"])
        (group,) = sr.content.get_image_measurement_groups()
        (image,) = group.source_images
        assert image.referenced_sop_instance_uid == source.SOPInstanceUID
        assert image.referenced_sop_class_uid == source.SOPClassUID


def test_identical_pixels_in_two_patients_give_two_separate_result_sets(run):
    a, b = run["entries"]["mixed/002.dcm"], run["entries"]["mixed/001.dcm"]
    assert a["probability"] == b["probability"]  # same phantom: the same result...
    assert a["patient_id"] != b["patient_id"]  # ...filed under each patient's own study
    assert a["study_instance_uid"] != b["study_instance_uid"]
    uids_a = set(a["output_series_instance_uids"].values())
    uids_b = set(b["output_series_instance_uids"].values())
    assert not uids_a & uids_b


def test_no_study_receives_another_patients_output(run):
    owner = {uid: patient for patient, uid, _ in STUDIES.values()}
    for path in run["out"].rglob("*.dcm"):
        output = pydicom.dcmread(path, stop_before_pixels=True)
        patient = owner[output.StudyInstanceUID]
        assert output.PatientID == PATIENTS[patient]["patient_id"], path


def test_a_header_without_its_study_gets_no_output_at_all(tmp_path, run):
    """A result that cannot be filed under its source's study is not written anywhere."""
    ds = _volume("A1", 21, "R", 9)
    del ds.StudyInstanceUID
    path = save(ds, tmp_path / "in" / "no_study.dcm")
    predictor = load_model(run["bundle"])
    info = AlgorithmInfo.from_metadata(predictor.metadata)
    entry = process_job(VolumeJob(path=path), predictor, info, tmp_path / "out")
    assert entry["assessable"] is False and entry["reason"] == "missing StudyInstanceUID"
    assert entry["outputs"] == {}
    assert entry["errors"] == {
        kind: "the source has no valid StudyInstanceUID; no result can reference it"
        for kind in ("sr", "report")
    }
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.dcm"))


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_malformed_patient_values_are_copied_unchanged_and_cost_no_output(tmp_path, run):
    """Vendor exports with a missing Type 2 attribute or free-text values still get every
    output, each carrying the source's values exactly as they are."""
    ds = _volume("A1", 41, "R", 8)
    del ds.AccessionNumber
    ds.PatientBirthDate, ds.PatientSex, ds.StudyTime = "1960-01-01", "female", "25:99"
    path = save(ds, tmp_path / "in" / "odd_values.dcm")
    predictor = load_model(run["bundle"])
    info = AlgorithmInfo.from_metadata(predictor.metadata)
    entry = process_job(VolumeJob(path=path), predictor, info, tmp_path / "out")
    assert set(entry["outputs"]) == {"sr", "seg", "report"}, entry.get("errors")
    for relative in entry["outputs"].values():
        output = pydicom.dcmread(tmp_path / "out" / relative, stop_before_pixels=True)
        assert output.PatientBirthDate == "1960-01-01"
        assert output.PatientSex == "female"
        assert output.StudyTime == "25:99"
        assert output.AccessionNumber == ""  # Type 2: present, empty, as the source had none
        assert output.PatientID == PATIENTS["A"]["patient_id"]
