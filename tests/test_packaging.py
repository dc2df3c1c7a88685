"""MAP packaging dry run: holoscan-cli 4.2.0's ``monai-deploy package`` runs in-process up to the
Docker build (which is replaced by a copy of the build context), then the generated Dockerfile,
app.json and pkg.json are checked; the staged app folder is also run the way the MAP runs it."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO_BUNDLE = REPO / "model" / "bundles" / "aicnet3d_demo"
TAG = "oct-glaucoma:0.1.0"
IMAGE = "oct-glaucoma-x64-workstation-dgpu-linux-amd64:0.1.0"


def _stage_module():
    spec = importlib.util.spec_from_file_location("stage_map", REPO / "deploy" / "stage_map.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bundle(tmp_path: Path) -> Path:
    """The demo bundle when present; else a bundle-shaped folder (packaging only copies it)."""
    if (DEMO_BUNDLE / "configs" / "metadata.json").is_file():
        return DEMO_BUNDLE
    bundle = tmp_path / "aicnet3d_demo"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "metadata.json").write_text('{"name": "aicnet3d_demo"}')
    (bundle / "models" / "model.pt").write_bytes(b"weights")
    return bundle


def _artifacts(path: Path) -> Path:
    """A local holoscan-cli artifact manifest (what --source replaces the GitHub download with)."""
    base = "nvcr.io/nvidia/cuda:13.0.0-runtime-ubuntu24.04"
    build = "nvcr.io/nvidia/clara-holoscan/holoscan:v4.2.0-dgpu"
    data = {
        "4.2.0": {
            "holoscan": {
                "debian-version": "4.2.0.1-1",
                "wheel-version": "4.2.0",
                "base-images": {"dgpu": base, "igpu": base},
                "build-images": {
                    "igpu": {"sbsa": build},
                    "dgpu": {"x64-workstation": build},
                    "cpu": {"x64-workstation": build},
                },
            },
            "health-probes": {
                "linux/amd64": "https://github.com/grpc-ecosystem/grpc-health-probe/releases/"
                               "download/v0.4.19/grpc_health_probe-linux-amd64",
                "linux/arm64": "https://github.com/grpc-ecosystem/grpc-health-probe/releases/"
                               "download/v0.4.19/grpc_health_probe-linux-arm64",
            },
        }
    }
    path.write_text(json.dumps(data))
    return path


def test_app_yaml_is_kebab_case_and_cpu():
    manifest = yaml.safe_load((REPO / "app.yaml").read_text())
    app = manifest["application"]
    assert app["title"] and app["input-formats"] == ["file"] and app["output-formats"] == ["file"]
    assert not {"inputFormats", "outputFormats"} & set(app)
    from operators.equipment import APP_VERSION

    assert app["version"] == APP_VERSION
    assert manifest["resources"]["gpu"] == 0


def test_monai_deploy_package_dry_run(tmp_path, monkeypatch):
    holoscan_main = pytest.importorskip("holoscan_cli.__main__")
    from holoscan_cli.packager import container_builder

    bundle = _bundle(tmp_path)
    staged = _stage_module().stage(tmp_path / "map", bundle=bundle, torch="cpu")
    context = tmp_path / "context"
    builds: list[dict] = []

    def build_docker_image(**kwargs):
        # The packager deletes its temporary context afterwards: keep a copy to inspect.
        shutil.copytree(kwargs["context_path"], context)
        builds.append(kwargs)

    monkeypatch.setattr(container_builder, "create_and_get_builder", lambda name: name)
    monkeypatch.setattr(container_builder, "build_docker_image", build_docker_image)
    monkeypatch.setattr(holoscan_main, "set_up_logging", lambda *a, **k: None)
    holoscan_main.main([
        "monai-deploy", "package", str(staged["app"]), "-c", str(staged["config"]),
        "-m", str(staged["models"]), "-t", TAG, "--platform", "x86_64",
        "--source", str(_artifacts(tmp_path / "artifacts.json")), "--sdk", "monai-deploy",
        "--build-cache", str(tmp_path / "cache"),
    ])

    (build,) = builds
    assert build["tags"] == [IMAGE] and build["platforms"] == ["linux/amd64"]
    dockerfile = (context / "Dockerfile").read_text()
    assert 'LABEL org.opencontainers.image.title="OCT Glaucoma AI"' in dockerfile
    assert 'LABEL org.opencontainers.image.version="0.1.0"' in dockerfile
    assert "pip install --no-cache-dir --user -r /tmp/requirements.txt" in dockerfile
    assert "pip install monai-deploy-app-sdk==4.0.0" in dockerfile
    assert "COPY ./models  /opt/holoscan/models" in dockerfile
    assert "COPY ./app /opt/holoscan/app" in dockerfile

    app_json = json.loads((context / "map" / "app.json").read_text())
    assert json.loads(app_json["command"]) == ["python3", "/opt/holoscan/app"]
    assert app_json["sdk"] == "monai-deploy" and app_json["sdkVersion"] == "4.0.0"
    assert app_json["version"] == "0.1.0"
    assert app_json["input"]["formats"] == ["file"] and app_json["output"]["formats"] == ["file"]
    assert app_json["environment"]["HOLOSCAN_MODEL_PATH"] == "/opt/holoscan/models"

    pkg_json = json.loads((context / "map" / "pkg.json").read_text())
    assert pkg_json["models"] == {bundle.name: f"/opt/holoscan/models/{bundle.name}"}
    assert pkg_json["resources"]["gpu"] == 0

    # The image's requirements are the repository's pins (+ the CPU torch index).
    requirements = (context / "pip" / "requirements.txt").read_text().splitlines()
    pins = [line for line in (REPO / "requirements.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert set(pins) <= set(requirements)
    assert "holoscan-cu13==4.2.0" in requirements and "torch==2.13.0" in requirements
    assert requirements[0].startswith("--extra-index-url https://download.pytorch.org/whl/cpu")

    # The app folder is self-contained; the bundle is in models/, byte for byte.
    app = context / "app"
    assert (app / "__main__.py").is_file() and (app / "monai_app" / "__main__.py").is_file()
    assert (app / "operators" / "oct_volume.py").is_file()
    assert (app / "model" / "predictor.py").is_file() and not (app / "model" / "bundles").exists()
    for path in bundle.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            copy = context / "models" / bundle.name / path.relative_to(bundle)
            assert copy.read_bytes() == path.read_bytes()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_staged_app_runs_like_the_map(tmp_path):
    """``python3 /opt/holoscan/app`` with the MAP's environment, outside Docker."""
    from app_support import make_bundle

    from monai_app.sample_study import write_sample_study

    bundle = DEMO_BUNDLE if (DEMO_BUNDLE / "configs" / "metadata.json").is_file() else \
        make_bundle(tmp_path / "aicnet3d_test")
    staged = _stage_module().stage(tmp_path / "map", bundle=bundle)
    inputs = tmp_path / "var" / "input"
    write_sample_study(inputs, shape=(16, 32, 32))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({
        "HOLOSCAN_INPUT_PATH": str(inputs),
        "HOLOSCAN_OUTPUT_PATH": str(tmp_path / "var" / "output"),
        "HOLOSCAN_MODEL_PATH": str(staged["models"]),  # a folder holding one bundle
        "HOLOSCAN_WORKDIR": str(tmp_path / "var"),
    })
    run = subprocess.run([sys.executable, str(staged["app"])], cwd=tmp_path / "var", env=env,
                         capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "var" / "output" / "results.json").read_text())
    assert len(results["results"]) == 2
    assert all(r["assessable"] for r in results["results"])
    assert len(list((tmp_path / "var" / "output").rglob("*.dcm"))) == 6


@pytest.mark.parametrize("where", ["repo", "parent"])
def test_staging_never_replaces_the_repository(where):
    stage = _stage_module()
    target = REPO if where == "repo" else REPO.parent
    with pytest.raises(ValueError, match="refusing to replace"):
        stage.stage(target)
    assert (REPO / "README.md").is_file()
