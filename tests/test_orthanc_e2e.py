"""End to end against a real PACS: Orthanc routes the OCT series to the node (OnStableSeries Lua
rule), the node runs the pipeline and stores SR, SEG and PDF back into the same study.

Needs Debian's ``orthanc`` (``/usr/sbin/Orthanc``; ``.ci/run`` installs it); skipped without it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import pytest
from orthanc_harness import (
    ORTHANC_BIN,
    REPO,
    NodeProcess,
    Orthanc,
    store_files,
    wait_for,
)
from pydicom import dcmread

from monai_app.node.audit import read_audit
from monai_app.sample_study import write_sample_study

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which(ORTHANC_BIN) is None, reason="Orthanc is not installed"),
]

DEMO_BUNDLE = REPO / "model" / "bundles" / "aicnet3d_demo"
RESULT_MODALITIES = ("SR", "SEG", "DOC")


def _bundle(tmp_path: Path) -> Path:
    """The demo model when it is there, else a small random bundle (same pipeline either way)."""
    if (DEMO_BUNDLE / "configs" / "metadata.json").is_file():
        return DEMO_BUNDLE
    from app_support import make_bundle

    return make_bundle(tmp_path / "bundle")


def _num_values(ds) -> list[float]:
    """Every NUM content item value in an SR tree (the report holds one: the probability)."""
    values = []
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "NUM" and "MeasuredValueSequence" in item:
            values.append(float(item.MeasuredValueSequence[0].NumericValue))
        values.extend(_num_values(item))
    return values


@pytest.mark.timeout(300)
def test_orthanc_routes_oct_to_node_and_results_come_back(tmp_path):
    bundle = _bundle(tmp_path)
    inputs = write_sample_study(tmp_path / "study")
    sources = [dcmread(p, stop_before_pixels=True) for p in inputs]
    study_uid = str(sources[0].StudyInstanceUID)
    patient_id, patient_name = str(sources[0].PatientID), str(sources[0].PatientName)

    node = NodeProcess(tmp_path / "node", worker={"model_path": str(bundle)})
    orthanc = Orthanc(tmp_path / "orthanc", node_aet=node.AET, node_port=node.port)
    node.start(dest_port=orthanc.dicom_port)
    orthanc.start()
    try:
        node.wait_ready(timeout=120)
        assert store_files(orthanc.dicom_port, inputs, called_ae=Orthanc.AET) == [0, 0]

        def results_stored():
            series = orthanc.find_series(study_uid)
            found = [s["MainDicomTags"].get("Modality") for s in series]
            done = all(found.count(m) == len(inputs) for m in RESULT_MODALITIES)
            return series if done else None

        try:
            series = wait_for(results_stored, timeout=180, interval=0.5,
                              what="SR, SEG and PDF in Orthanc")
        except TimeoutError:
            pytest.fail(f"no results.\nnode log:\n{node.log_tail()}\n"
                        f"orthanc log:\n{orthanc.log_tail()}")

        # Same study (one Orthanc study holds the OPT series and every result), same patient.
        studies = {s["ParentStudy"] for s in series}
        assert len(studies) == 1
        study = orthanc.get(f"/studies/{studies.pop()}")
        assert study["MainDicomTags"]["StudyInstanceUID"] == study_uid
        assert study["PatientMainDicomTags"]["PatientID"] == patient_id
        modalities = sorted(s["MainDicomTags"]["Modality"] for s in series)
        assert modalities == sorted(["OPT"] * 2 + [m for m in RESULT_MODALITIES for _ in inputs])

        # The SR probability equals what `python -m monai_app` gives for the same input.
        out = tmp_path / "direct"
        run = subprocess.run(
            [sys.executable, "-m", "monai_app", "-i", str(tmp_path / "study"), "-o", str(out),
             "-m", str(bundle)], cwd=REPO, capture_output=True, text=True, timeout=240,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        direct = json.loads((out / "results.json").read_text())["results"]
        expected = {e["sop_instance_uid"]: e["probability"] for e in direct}
        assert len(expected) == 2 and None not in expected.values()
        seen = {}
        for s in series:
            if s["MainDicomTags"]["Modality"] != "SR":
                continue
            (instance,) = s["Instances"]
            sr = dcmread(BytesIO(orthanc.instance_file(instance)))
            assert str(sr.PatientID) == patient_id and str(sr.StudyInstanceUID) == study_uid
            source_uid = str(sr.CurrentRequestedProcedureEvidenceSequence[0]
                             .ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
                             .ReferencedSOPInstanceUID)
            (probability,) = _num_values(sr)
            seen[source_uid] = probability
        assert seen.keys() == expected.keys()
        for uid, probability in seen.items():
            assert probability == pytest.approx(expected[uid], abs=1e-6)
    finally:
        node_code = node.stop()
        orthanc_code = orthanc.stop()
    assert node_code == 0, node.log_tail()
    assert orthanc_code == 0, orthanc.log_tail()

    # Node bookkeeping: one job per series, delivered once, spool cleaned, no patient data logged.
    audit = read_audit(node.audit_path)
    events = [e["event"] for e in audit]
    assert events.count("delivered") == 2 and events.count("failed") == 0
    assert not list((node.spool / "jobs").iterdir())
    log = node.log_path.read_text() + node.audit_path.read_text()
    assert patient_id not in log and patient_name not in log
    assert "stopped" in node.log_tail()
