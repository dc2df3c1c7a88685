"""Tests for model.predictor: laterality handling, geometry of maps, caching, timings."""

import os

import numpy as np
import pytest
import torch

from model.bundle import BundleMetadata, save_bundle
from model.network import AICNet3D
from model.phantoms import make_phantom
from model.predictor import Prediction, Predictor, load_predictor

GRID = (16, 24, 16)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    torch.manual_seed(0)
    net = AICNet3D(channels=8, input_size=GRID)
    # A few training-mode passes give BN non-trivial statistics and a non-flat Grad-CAM.
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(2, 1, *GRID))
    meta = BundleMetadata(name="aicnet3d_test", version="1.2.3", input_grid=GRID,
                          network_kwargs={"channels": 8})
    return save_bundle(net.eval(), meta, tmp_path_factory.mktemp("bundle") / "b")


def test_prediction_fields_and_geometry(bundle_dir):
    pred = load_predictor(bundle_dir)
    vol = make_phantom(1, glaucoma=True, shape=(20, 30, 18)).volume  # not the model grid
    out = pred(vol, "R")
    assert isinstance(out, Prediction)
    assert 0.0 <= out.probability <= 1.0
    assert out.glaucoma == (out.probability >= 0.5)
    assert out.label == ("glaucoma" if out.glaucoma else "no glaucoma")
    assert (out.model_name, out.model_version) == ("aicnet3d_test", "1.2.3")
    for m in (out.care, out.gradcam):
        assert m.shape == vol.shape and m.dtype == np.float32
        assert m.min() >= 0.0 and m.max() <= 1.0
    assert out.care.max() > 0
    assert set(out.timings) == {"preprocess", "inference", "postprocess"}
    assert all(t >= 0 for t in out.timings.values())


def test_left_eye_equals_mirrored_right_eye(bundle_dir):
    pred = load_predictor(bundle_dir)
    right = make_phantom(2, glaucoma=True, laterality="R", shape=(16, 24, 20)).volume
    left = np.ascontiguousarray(right[..., ::-1])  # the same eye stored as a left eye
    r, lft = pred(right, "R"), pred(left, "L")
    assert r.probability == pytest.approx(lft.probability, abs=1e-6)
    np.testing.assert_allclose(lft.care, r.care[..., ::-1], atol=1e-6)
    np.testing.assert_allclose(lft.gradcam, r.gradcam[..., ::-1], atol=1e-6)
    # Canonicalisation really happens: the same array declared "R" gives other maps.
    wrong = pred(left, "R")
    assert not np.allclose(wrong.care, lft.care, atol=1e-4)


def test_prepare_infer_restore_steps(bundle_dir):
    pred = load_predictor(bundle_dir)
    vol = np.full((8, 12, 8), 255, np.uint8)
    x = pred.prepare(vol, "L")
    assert x.shape == (1, 1, *GRID) and x.device == pred.device
    torch.testing.assert_close(x, torch.ones_like(x))  # scale normalisation /255
    prob, care, gradcam = pred.infer(x)
    assert isinstance(prob, float)
    assert care.shape == gradcam.shape == (2, 3, 2)
    restored = pred.restore(care, (8, 12, 8), "L")
    assert restored.shape == (8, 12, 8)


def test_rejects_bad_input(bundle_dir):
    pred = load_predictor(bundle_dir)
    with pytest.raises(ValueError, match="3-D"):
        pred(np.zeros((4, 4)), "R")
    with pytest.raises(ValueError, match="laterality"):
        pred(np.zeros((8, 8, 8)), "OD")


def test_load_predictor_cached_and_reloaded_on_change(bundle_dir):
    a = load_predictor(bundle_dir)
    b = load_predictor(str(bundle_dir) + "/")
    assert a is b
    assert a.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert load_predictor(bundle_dir, device="cpu").device == torch.device("cpu")
    weights = bundle_dir / "models" / "model.pt"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    c = load_predictor(bundle_dir)
    assert c is not a
    assert isinstance(c, Predictor) and c.metadata.version == "1.2.3"


def test_package_imports_lazily():
    """``import model`` stays cheap: torch loads only when a name that needs it is used."""
    import subprocess
    import sys

    code = ("import sys, model; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'load_predictor' in dir(model); model.make_phantom; "
            "assert 'torch' not in sys.modules; model.load_predictor; "
            "assert 'torch' in sys.modules; print(sorted(model.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    for name in ("AICNet3D", "Prediction", "Predictor", "load_predictor", "BundleMetadata",
                 "save_bundle", "load_bundle", "make_phantom", "phantom_set"):
        assert name in out.stdout
