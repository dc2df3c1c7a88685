"""Tests for operators.steps: the pipeline steps without a graph (mirror, order, compression,
not-assessable volumes, corrupt files, results entries)."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from model.phantoms import make_phantom
from operators.equipment import AlgorithmInfo
from operators.sr import GLAUCOMA, UNDETERMINED
from operators.steps import (
    MAIN_STEPS,
    VolumeJob,
    build_outputs,
    build_volume,
    infer,
    load_model,
    preprocess,
    process_job,
    read_instance,
    warm_up,
)
from tests.app_support import SHAPE, make_bundle, opt_dataset, save


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return load_model(make_bundle(tmp_path_factory.mktemp("bundle") / "b"))


@pytest.fixture(scope="module")
def info(predictor):
    return AlgorithmInfo.from_metadata(predictor.metadata)


def _predict(path, predictor):
    job = VolumeJob(path=path)
    for step in (read_instance, build_volume):
        step(job)
    preprocess(job, predictor)
    infer(job, predictor)
    assert job.reason is None, job.reason
    return job


def test_left_eye_and_its_mirror_image_right_eye_agree(tmp_path, predictor):
    right = make_phantom(41, glaucoma=True, laterality="R", shape=SHAPE)
    left = make_phantom(41, glaucoma=True, laterality="L", shape=SHAPE)
    np.testing.assert_array_equal(left.volume, right.volume[..., ::-1])  # precondition
    r = _predict(save(opt_dataset(41, laterality="R"), tmp_path / "od.dcm"), predictor)
    lft = _predict(save(opt_dataset(41, laterality="L"), tmp_path / "os.dcm"), predictor)
    assert lft.prediction.probability == pytest.approx(r.prediction.probability, abs=1e-6)
    np.testing.assert_allclose(lft.prediction.care, r.prediction.care[..., ::-1], atol=1e-5)
    np.testing.assert_allclose(lft.prediction.gradcam, r.prediction.gradcam[..., ::-1], atol=1e-5)
    assert r.prediction.care.max() > 0  # the comparison is not between empty maps


def test_shuffled_frames_give_the_same_result(tmp_path, predictor):
    order = np.random.default_rng(42).permutation(SHAPE[0])
    plain = _predict(save(opt_dataset(42), tmp_path / "plain.dcm"), predictor)
    mixed = _predict(save(opt_dataset(42, frame_order=order), tmp_path / "mixed.dcm"), predictor)
    assert mixed.prediction.probability == pytest.approx(plain.prediction.probability, abs=1e-7)
    np.testing.assert_array_equal(mixed.prediction.care, plain.prediction.care)
    np.testing.assert_array_equal(mixed.prediction.gradcam, plain.prediction.gradcam)
    other = _predict(save(opt_dataset(43), tmp_path / "other.dcm"), predictor)
    assert not np.array_equal(other.prediction.care, plain.prediction.care)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_compressed_and_uncompressed_copies_agree(tmp_path, predictor, syntax):
    plain = _predict(save(opt_dataset(44), tmp_path / "plain.dcm"), predictor)
    packed = _predict(save(opt_dataset(44, transfer_syntax=syntax), tmp_path / "c.dcm"), predictor)
    assert packed.prediction.probability == plain.prediction.probability
    np.testing.assert_array_equal(packed.prediction.care, plain.prediction.care)


def test_constant_volume_is_not_assessable(tmp_path, predictor, info):
    path = save(opt_dataset(45, volume=np.zeros(SHAPE, np.uint8)), tmp_path / "in" / "blank.dcm")
    job = VolumeJob(path=path, input_root=tmp_path / "in")
    entry = process_job(job, predictor, info, tmp_path / "out")
    assert entry["assessable"] is False
    assert "constant volume" in entry["reason"]
    assert entry["probability"] is None and entry["label"] is None
    assert entry["source_file"] == "blank.dcm"
    assert set(entry["outputs"]) == {"sr", "report"}  # no heat-maps without a prediction
    sr = hd.sr.srread(tmp_path / "out" / entry["outputs"]["sr"])
    (group,) = sr.content.get_image_measurement_groups()
    assert group.get_qualitative_evaluations(name=GLAUCOMA)[0].value == UNDETERMINED
    comments = [i.value for i in group[0].ContentSequence if i.ValueType == "TEXT"]
    assert any("constant volume" in c for c in comments)


def test_truncated_opt_is_not_assessable_but_reported(tmp_path, predictor, info):
    good = save(opt_dataset(46), tmp_path / "good.dcm")
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(good.read_bytes()[:-4000])
    entry = process_job(VolumeJob(path=broken), predictor, info, tmp_path / "out")
    assert entry["assessable"] is False
    assert "pixel data" in entry["reason"]
    assert entry["sop_instance_uid"]  # the header still identifies the instance
    assert "sr" in entry["outputs"]


def test_entry_fields_and_timings(tmp_path, predictor, info):
    job = VolumeJob(path=save(opt_dataset(47, laterality="L"), tmp_path / "os.dcm"))
    entry = process_job(job, predictor, info, tmp_path / "out")
    assert entry["assessable"] is True and entry["reason"] is None
    assert entry["laterality"] == "L"
    assert 0.0 <= entry["probability"] <= 1.0
    assert entry["label"] in ("glaucoma", "no glaucoma")
    assert (entry["model_name"], entry["model_version"]) == ("aicnet3d_test", "1.2.3")
    assert entry["shape"] == list(SHAPE)
    uid = entry["sop_instance_uid"]
    assert entry["outputs"] == {k: f"{uid}/{k}.dcm" for k in ("sr", "seg", "report")}
    for relative in entry["outputs"].values():
        assert (tmp_path / "out" / relative).is_file()
    assert set(MAIN_STEPS) <= set(entry["timings"])
    assert {"write_sr", "write_seg", "write_report", "write_files"} <= set(entry["timings"])
    assert entry["timings"]["total"] == pytest.approx(
        sum(entry["timings"][k] for k in MAIN_STEPS), abs=1e-3
    )
    assert len(set(entry["output_series_instance_uids"].values())) == 3


def test_build_outputs_skips_everything_without_a_header(tmp_path, info):
    path = tmp_path / "noise.dcm"
    path.write_bytes(b"\x00" * 300)
    job = read_instance(VolumeJob(path=path))
    build_volume(job)
    build_outputs(job, info)
    assert job.reason and "unreadable" in job.reason
    assert job.outputs == {}


def test_a_failing_output_is_recorded_and_the_others_are_written(tmp_path, predictor, info):
    ds = opt_dataset(48)
    for item in ds.PerFrameFunctionalGroupsSequence:
        del item.PlanePositionSequence  # classifiable, but a SEG cannot be placed
    entry = process_job(
        VolumeJob(path=save(ds, tmp_path / "flat.dcm")), predictor, info, tmp_path / "out"
    )
    assert entry["assessable"] is True
    assert "plane positions" in entry["errors"]["seg"]
    assert set(entry["outputs"]) == {"sr", "report"}


def test_warm_up_freezes_the_start_up_objects_out_of_the_collector():
    """After warm-up, a full collection no longer walks the start-up objects (torch, MONAI, the
    model), which would otherwise cost about 0.17 s inside some volume's timed step."""
    import gc

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        warm_up()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
