"""Security of the one-shot application: no patient name or ID in any log line, and no symbolic
link followed out of the input folder.

The log test runs the command line (``python -m monai_app``, the holoscan graph, DEBUG level) on
a folder of distinctive patients whose values provoke the library messages that would quote them
(a one-component name, a CJK name the report font lacks, a malformed birth date), beside bad files,
a foreign instance and symbolic links to another patient's volume outside the folder; every line
of stdout and stderr is scanned.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from model.phantoms import make_phantom
from monai_app.pipeline import process_folder_direct
from monai_app.sample_study import phantom_to_opt_dataset
from operators.dicom_input import OUT_OF_FOLDER, scan_input
from operators.equipment import AlgorithmInfo
from operators.steps import RESULTS_FILE, VolumeJob, load_model, process_job
from tests.app_support import make_bundle, save

# The test data's malformed birth date, written on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR DA")

REPO = Path(__file__).resolve().parent.parent
TINY = (8, 32, 32)

PATIENTS = [
    dict(patient_id="QX7-31415-ZZ", patient_name="Zqxjvbn^Wrplmk", patient_birth_date="1960-01-01"),
    dict(patient_id="ŊID-99887", patient_name="Ŋgʊɲa^Þyrí", patient_birth_date="19700101"),
    dict(patient_id="KQ-2718281", patient_name="QUOKKAWALLABY", patient_birth_date="19800101"),
    dict(
        patient_id="JP-161803",
        patient_name="Yamadax^Taroux=山田^太郎=やまだ^たろう",
        patient_birth_date="19900101",
    ),
]
OUTSIDER = dict(patient_id="OUT-5550-VX", patient_name="Outsider^Vexillum", patient_birth_date="")
FOREIGN = dict(patient_id="SC-4040-XQ", patient_name="Xylophone^Quagga")


def _opt(seed: int, patient: dict, study: int, *, laterality: str = "R") -> Dataset:
    phantom = make_phantom(seed, glaucoma=True, laterality=laterality, shape=TINY)
    return phantom_to_opt_dataset(
        phantom,
        **patient,
        patient_sex="O",
        study_instance_uid=f"1.2.826.0.1.3680043.8.498.7007.{study}",
        study_id=str(study),
        accession_number=f"ACCQZ{study}X",
        series_number=seed,
    )


def _identifiers(patients: list[dict]) -> list[str]:
    """Every string that must not appear in a log: IDs, names, name parts, accession numbers."""
    tokens = set()
    for number, patient in enumerate(patients):
        tokens.add(patient["patient_id"])
        name = patient["patient_name"]
        tokens.add(name)
        for group in name.split("="):
            tokens.add(group)
            tokens.update(part for part in group.split("^") if len(part) >= 2)
        if patient.get("patient_birth_date"):
            tokens.add(patient["patient_birth_date"])
        tokens.add(f"ACCQZ{number}X")
    return sorted(tokens)


def _secondary_capture(patient: dict) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.7007.99.1"
    ds.PatientID, ds.PatientName = patient["patient_id"], patient["patient_name"]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Distinctive patients, bad files and links out of the folder."""
    root = tmp_path_factory.mktemp("security")
    bundle = make_bundle(root / "bundle")
    inside = root / "in"
    for number, patient in enumerate(PATIENTS):
        ds = _opt(number + 1, patient, number, laterality="RL"[number % 2])
        if number == 2:  # not assessable: its SR and report still carry the name
            del ds.ImageLaterality
            del ds.SharedFunctionalGroupsSequence[0].FrameAnatomySequence[0].FrameLaterality
        if number == 3:
            ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
        save(ds, inside / "volumes" / f"v{number}.dcm")
    truncated = save(_opt(9, PATIENTS[0], 0), root / "scratch" / "t.dcm").read_bytes()[:-3000]
    (inside / "volumes" / "truncated.dcm").write_bytes(truncated)
    (inside / "noise.dcm").write_bytes(os.urandom(4000))
    save(_secondary_capture(FOREIGN), inside / "foreign.dcm")
    outside = save(_opt(20, OUTSIDER, 20), root / "outside" / "elsewhere.dcm")
    (inside / "link_to_outside.dcm").symlink_to(outside)
    (inside / "linked_folder").symlink_to(outside.parent, target_is_directory=True)
    (inside / "volumes" / "chain.dcm").symlink_to(inside / "link_to_outside.dcm")
    return {"root": root, "bundle": bundle, "in": inside, "outside": outside}


def _cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m monai_app`` with an 8 MiB stack (it re-executes itself with 32 MiB)."""

    def limit_stack() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_STACK)
        resource.setrlimit(resource.RLIMIT_STACK, (8192 * 1024, hard))

    env = {k: v for k, v in os.environ.items() if not k.startswith("HOLOSCAN_")}
    return subprocess.run(
        [sys.executable, "-m", "monai_app", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=180,
        preexec_fn=limit_stack,
    )


@pytest.fixture(scope="module")
def cli_run(folder):
    out = folder["root"] / "cli_out"
    run = _cli("-i", str(folder["in"]), "-o", str(out), "-m", str(folder["bundle"]), "-l", "DEBUG")
    document = json.loads((out / RESULTS_FILE).read_text()) if out.exists() else None
    return {"run": run, "out": out, "document": document}


def test_cli_logs_name_no_patient(cli_run):
    run = cli_run["run"]
    assert run.returncode == 0, run.stderr[-3000:]
    lines = (run.stdout + run.stderr).splitlines()
    assert any("v0.dcm" in line for line in lines)  # the log is there, and names the files
    tokens = _identifiers([*PATIENTS, OUTSIDER, FOREIGN])
    leaks = [(token, line) for line in lines for token in tokens if token in line]
    assert leaks == []
    assert not [line for line in lines if "missing from font" in line or "Traceback" in line]
    # The scan can fail: results.json, which is no log, holds these patient IDs.
    ids = {entry["patient_id"] for entry in cli_run["document"]["results"]}
    assert ids == {patient["patient_id"] for patient in PATIENTS}


def test_cli_never_follows_a_link_out_of_the_input_folder(cli_run, folder):
    document = cli_run["document"]
    processed = {e["source_file"] for e in document["results"]}
    assert processed == {f"volumes/v{n}.dcm" for n in range(4)} | {"volumes/truncated.dcm"}
    skipped = {s["source_file"]: s["reason"] for s in document["skipped"]}
    for link in ("link_to_outside.dcm", "linked_folder", "volumes/chain.dcm"):
        assert skipped[link] == OUT_OF_FOLDER
    outsider_uid = pydicom.dcmread(folder["outside"], stop_before_pixels=True).SOPInstanceUID
    assert not (cli_run["out"] / outsider_uid).exists()
    assert all(e["patient_id"] != OUTSIDER["patient_id"] for e in document["results"])


def test_a_link_swapped_after_the_search_is_not_read(folder, tmp_path):
    """The input may change between search and read: the read checks the link again."""
    inside = tmp_path / "in"
    target = save(_opt(31, PATIENTS[0], 31), inside / "real.dcm")
    link = inside / "link.dcm"
    link.symlink_to(target)
    assert scan_input(inside).files == [link]  # the same instance twice: counted once
    link.unlink()
    link.symlink_to(folder["outside"])  # now pointing at another patient, outside
    predictor = load_model(folder["bundle"])
    info = AlgorithmInfo.from_metadata(predictor.metadata)
    entry = process_job(VolumeJob(path=link, input_root=inside), predictor, info, tmp_path / "out")
    assert entry["reason"] == OUT_OF_FOLDER
    assert entry["patient_id"] is None and entry["outputs"] == {}
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.dcm"))


def test_a_fifo_in_the_input_is_skipped_not_read(folder, tmp_path):
    inside = tmp_path / "in"
    save(_opt(32, PATIENTS[1], 32), inside / "good.dcm")
    os.mkfifo(inside / "pipe.dcm")  # reading it would block for ever
    entries = process_folder_direct(inside, tmp_path / "out", folder["bundle"])
    assert [e["source_file"] for e in entries] == ["good.dcm"]
    document = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    assert document["skipped"] == [{"source_file": "pipe.dcm", "reason": "not a regular file"}]
