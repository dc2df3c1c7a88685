"""Tests for model.bundle: MONAI bundle layout, round trip, validation errors."""

import json

import pytest
import torch

from model.bundle import BundleError, BundleMetadata, load_bundle, read_metadata, save_bundle
from model.network import AICNet3D

GRID = (16, 24, 16)


def _net(seed: int = 0, **kwargs) -> AICNet3D:
    torch.manual_seed(seed)
    net = AICNet3D(channels=8, input_size=GRID, **kwargs)
    with torch.no_grad():  # non-default BN statistics, so a lost buffer would show
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _metadata(**kwargs) -> BundleMetadata:
    base = dict(name="aicnet3d_test", version="0.0.1", input_grid=GRID,
                network_kwargs={"channels": 8, "attention": "Hemiretinal"},
                consistency={"criterion": "mse", "weight": 0.75},
                evaluation={"auroc": 0.9})
    base.update(kwargs)
    return BundleMetadata(**base)


@pytest.fixture()
def bundle(tmp_path):
    net = _net()
    fig = tmp_path / "evaluation.png"
    fig.write_bytes(b"\x89PNG fake")
    root = save_bundle(net, _metadata(), tmp_path / "b", figures=[fig])
    return net, root


def test_layout(bundle):
    _, root = bundle
    for rel in ("configs/metadata.json", "configs/inference.json", "models/model.pt",
                "docs/README.md", "docs/evaluation.png"):
        assert (root / rel).is_file(), rel
    meta = json.loads((root / "configs/metadata.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["spatial_shape"] == list(GRID)
    assert image["intensity_normalisation"] == {"kind": "scale", "divisor": 255.0}
    assert "mirrored" in image["laterality_canonicalisation"]
    assert meta["network_data_format"]["outputs"]["care"]["spatial_shape"] == [2, 3, 2]
    assert meta["monai_version"] and meta["pytorch_version"]
    assert "NOT for clinical use" in meta["intended_use"]
    assert "phantoms" in meta["training_data"]
    assert meta["aicnet3d"]["figures"] == ["docs/evaluation.png"]
    infer = json.loads((root / "configs/inference.json").read_text())
    assert infer["network_def"]["_target_"] == "model.network.AICNet3D"
    assert infer["network_def"]["input_size"] == list(GRID)
    assert (root / "models/model.pt").stat().st_size < 200_000  # state_dict only, small


def test_round_trip_identical_outputs(bundle):
    net, root = bundle
    loaded, meta = load_bundle(root)
    assert not loaded.training
    assert meta.input_grid == GRID and meta.threshold == 0.5
    assert meta.consistency == {"criterion": "mse", "weight": 0.75}
    assert meta.network_kwargs["input_size"] == GRID
    x = torch.rand(2, 1, *GRID)
    with torch.inference_mode():
        a, b = net(x), loaded(x)
    torch.testing.assert_close(a.probabilities, b.probabilities, rtol=0, atol=0)
    torch.testing.assert_close(a.care, b.care, rtol=0, atol=0)
    pa, ca, ga = net.explain(x)
    pb, cb, gb = loaded.explain(x)
    torch.testing.assert_close(ga, gb, rtol=0, atol=0)


def test_monai_config_parser_reads_bundle(bundle):
    """The same files work with MONAI's own bundle machinery."""
    from monai.bundle import ConfigParser

    net, root = bundle
    parser = ConfigParser()
    parser.read_config(str(root / "configs/inference.json"))
    parser.read_meta(str(root / "configs/metadata.json"))
    parser["bundle_root"] = str(root)
    parser["device"] = "$torch.device('cpu')"
    monai_net = parser.get_parsed_content("network")
    parser.get_parsed_content("initialize")
    assert parser.get_parsed_content("_meta_#network_data_format#inputs#image#spatial_shape") == \
        list(GRID)
    x = torch.rand(1, 1, *GRID)
    with torch.inference_mode():
        torch.testing.assert_close(monai_net(x).probabilities, net(x).probabilities)


def _edit(root, rel, fn):
    path = root / rel
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "rel, fn, message",
    [
        ("configs/metadata.json",
         lambda d: d["network_data_format"]["inputs"]["image"].pop("spatial_shape"),
         "network_data_format.inputs.image.spatial_shape"),
        ("configs/metadata.json",
         lambda d: d["network_data_format"]["inputs"]["image"].update(spatial_shape=[16, 24]),
         "three positive integers"),
        ("configs/metadata.json",
         lambda d: d["network_data_format"]["inputs"]["image"].update(spatial_shape=[16, 20, 16]),
         "network_def.input_size"),
        ("configs/metadata.json", lambda d: d["aicnet3d"].update(threshold=2),
         "aicnet3d.threshold"),
        ("configs/metadata.json", lambda d: d["aicnet3d"].update(threshold=True),
         "aicnet3d.threshold"),
        ("configs/metadata.json", lambda d: d.pop("intended_use"), "intended_use"),
        ("configs/metadata.json",
         lambda d: d["network_data_format"]["inputs"]["image"].update(
             intensity_normalisation={"kind": "scale"}), "divisor"),
        ("configs/inference.json", lambda d: d["network_def"].update(_target_="os.system"),
         "network_def._target_"),
        ("configs/inference.json", lambda d: d["network_def"].update(channels=4),
         "do not fit"),
        ("configs/inference.json", lambda d: d["network_def"].update(colour="red"),
         "network_def"),
    ],
)
def test_invalid_bundle_errors_name_the_key(bundle, rel, fn, message):
    _, root = bundle
    _edit(root, rel, fn)
    with pytest.raises(BundleError, match=message.replace(".", r"\.")):
        load_bundle(root)


def test_missing_files(bundle, tmp_path):
    _, root = bundle
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")
    (root / "models/model.pt").unlink()
    with pytest.raises(BundleError, match="model.pt is missing"):
        load_bundle(root)
    (root / "configs/inference.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_metadata(root)
    (root / "configs/metadata.json").unlink()
    with pytest.raises(BundleError, match="metadata.json is missing"):
        read_metadata(root)


def test_bundle_error_is_value_error():
    assert issubclass(BundleError, ValueError)


def test_stage1_bundle_has_null_consistency(tmp_path):
    root = save_bundle(_net(attention="none"),
                       _metadata(consistency=None, network_kwargs={"channels": 8,
                                                                   "attention": "none"}),
                       tmp_path / "s1")
    net, meta = load_bundle(root)
    assert meta.consistency is None and meta.network_kwargs["attention"] == "none"
    assert all(isinstance(m, torch.nn.Identity) for m in net.attention.values())
