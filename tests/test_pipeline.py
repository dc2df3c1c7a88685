"""Tests for monai_app.pipeline: the application run in-process (holoscan graph) on a sample study,
and the same steps without a graph."""

from __future__ import annotations

import json

import highdicom as hd
import numpy as np
import pydicom
import pytest

from monai_app.pipeline import NoOCTInputError, process_folder, process_folder_direct
from monai_app.sample_study import write_sample_study
from operators.seg import SEGMENT_LABELS
from operators.sr import GLAUCOMA, PROBABILITY
from tests.app_support import dciodvfy_errors, make_bundle, opt_dataset, save

KINDS = ("sr", "seg", "report")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Sample study (OD + OS) + a corrupt file + a fundus-like non-OCT file + a constant OPT."""
    root = tmp_path_factory.mktemp("pipeline")
    bundle = make_bundle(root / "bundle")
    folder = root / "in"
    sources = write_sample_study(folder / "study", shape=(16, 32, 24))
    (folder / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    (folder / "README.txt").write_text("not DICOM")
    blank = opt_dataset(51, volume=np.full((16, 32, 32), 9, np.uint8), series_number=9)
    save(blank, folder / "blank" / "blank.dcm")
    graph = process_folder(folder, root / "out_graph", bundle)
    direct = process_folder_direct(folder, root / "out_direct", bundle)
    return {
        "root": root,
        "folder": folder,
        "sources": sources,
        "bundle": bundle,
        "graph": graph,
        "direct": direct,
    }


def test_one_entry_per_volume(study):
    entries = study["graph"]
    assert [e["source_file"] for e in entries] == [
        "blank/blank.dcm",
        "study/OD_glaucoma.dcm",
        "study/OS_normal.dcm",
    ]
    blank, od, os_ = entries
    assert blank["assessable"] is False and "constant volume" in blank["reason"]
    assert (od["laterality"], os_["laterality"]) == ("R", "L")
    assert od["assessable"] and os_["assessable"]
    document = json.loads((study["root"] / "out_graph" / "results.json").read_text())
    assert document["results"] == entries
    assert document["model"] == {"name": "aicnet3d_test", "version": "1.2.3"}


def test_graph_and_direct_runs_agree(study):
    for graph, direct in zip(study["graph"], study["direct"], strict=True):
        for key in (
            "source_file",
            "sop_instance_uid",
            "probability",
            "label",
            "assessable",
            "reason",
            "outputs",
            "output_series_instance_uids",
        ):
            assert graph[key] == direct[key], key


def test_every_output_is_valid_dicom(study):
    out = study["root"] / "out_graph"
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 3 + 3 + 2  # two assessable volumes, one not assessable (no SEG)
    for path in files:
        assert dciodvfy_errors(path) == [], path


def test_identity_and_new_series(study):
    out = study["root"] / "out_graph"
    for entry, source_path in zip(study["graph"][1:], study["sources"], strict=True):
        source = pydicom.dcmread(source_path, stop_before_pixels=True)
        assert entry["sop_instance_uid"] == source.SOPInstanceUID
        assert entry["series_instance_uid"] == source.SeriesInstanceUID
        series = set()
        for kind in KINDS:
            ds = pydicom.dcmread(out / entry["outputs"][kind], stop_before_pixels=True)
            for keyword in (
                "PatientID",
                "PatientName",
                "PatientBirthDate",
                "PatientSex",
                "StudyInstanceUID",
                "AccessionNumber",
                "StudyID",
                "StudyDate",
            ):
                assert ds[keyword].value == source[keyword].value, (kind, keyword)
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.ManufacturerModelName == "OCT Glaucoma AI"
            assert "aicnet3d_test 1.2.3" in list(ds.SoftwareVersions)
            series.add(ds.SeriesInstanceUID)
        assert len(series) == 3 and source.SeriesInstanceUID not in series


def test_results_read_back_with_highdicom(study):
    out = study["root"] / "out_graph"
    for entry in study["graph"][1:]:
        sr = hd.sr.srread(out / entry["outputs"]["sr"])
        (group,) = sr.content.get_image_measurement_groups()
        assert group.get_measurements(name=PROBABILITY)[0].value == pytest.approx(
            entry["probability"], abs=1e-6
        )
        assert group.get_qualitative_evaluations(name=GLAUCOMA)
        assert group.source_images[0].referenced_sop_instance_uid == entry["sop_instance_uid"]
        seg = hd.seg.segread(out / entry["outputs"]["seg"])
        assert [s.SegmentLabel for s in seg.SegmentSequence] == list(SEGMENT_LABELS)
        refs = seg.get_source_image_uids()
        assert any(uid[2] == entry["sop_instance_uid"] for uid in refs)


def test_timings_show_each_step(study):
    for entry in study["graph"][1:]:
        timings = entry["timings"]
        for step in ("load", "preprocess", "inference", "write"):
            assert timings[step] >= 0.0
        assert timings["inference"] > 0.0


def test_repeated_runs_in_one_process_give_the_same_outputs(tmp_path, study):
    again = process_folder(study["folder"], tmp_path / "again", study["bundle"])
    for first, second in zip(study["graph"], again, strict=True):
        assert second["probability"] == first["probability"]
        # Deterministic UIDs: a re-run replaces its results in a PACS instead of duplicating them.
        assert second["output_series_instance_uids"] == first["output_series_instance_uids"]


def test_no_oct_input_writes_nothing(tmp_path, study):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "notes.txt").write_text("no DICOM here")
    for run in (process_folder, process_folder_direct):
        with pytest.raises(NoOCTInputError):
            run(folder, tmp_path / "out", study["bundle"])
        assert not (tmp_path / "out").exists()
