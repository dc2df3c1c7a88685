"""The shipped deployment files agree with each other and with the application: Orthanc config
and Lua rule vs the node's example config; MONAI Deploy (MIG + MWM) files vs the MAP."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from orthanc_harness import load_commented_json

from monai_app.node.config import OPT_SOP_CLASS_UID, load_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
MIG = DEPLOY / "monai-deploy" / "informatics-gateway"
WORKFLOW = DEPLOY / "monai-deploy" / "workflow-manager" / "oct-glaucoma-workflow.json"


def test_orthanc_example_matches_the_node_example():
    orthanc = load_commented_json(DEPLOY / "orthanc" / "orthanc.json")
    node = load_config(DEPLOY / "node.example.yaml")
    lua = (DEPLOY / "orthanc" / "route-opt.lua").read_text()
    modality = re.search(r"NODE_MODALITY = '([^']+)'", lua).group(1)
    entry = orthanc["DicomModalities"][modality]
    assert (entry["AET"], entry["Port"]) == (node.ae_title, node.port)
    assert entry["AllowStore"] is True  # the node's results are accepted
    assert node.destination.ae_title == orthanc["DicomAet"]
    assert node.destination.port == orthanc["DicomPort"]
    assert orthanc["DicomAet"] in {c.ae_title for c in node.allowed_callers}
    # Locked down: allow-listed modalities only, REST API on loopback, series-level routing.
    assert orthanc["DicomAlwaysAllowStore"] is False and orthanc["DicomCheckModalityHost"]
    assert orthanc["RemoteAccessAllowed"] is False
    assert "function OnStableSeries" in lua and "OnStableStudy(" not in lua
    assert "tags['Modality'] == 'OPT'" in lua
    assert orthanc["LuaScripts"] == ["route-opt.lua"]


def test_informatics_gateway_files_match_the_workflow():
    ae = json.loads((MIG / "ae.json").read_text())
    source = json.loads((MIG / "source.json").read_text())
    destination = json.loads((MIG / "destination.json").read_text())
    workflow = json.loads(WORKFLOW.read_text())
    gateway = workflow["informatics_gateway"]
    assert ae["allowedSopClasses"] == [OPT_SOP_CLASS_UID]
    assert ae["grouping"] == "0020,000E"  # one MAP run per series
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,15}", ae["aeTitle"])
    assert gateway["ae_title"] == ae["aeTitle"]
    assert gateway["data_origins"] == [source["aeTitle"]]
    assert gateway["export_destinations"] == [destination["name"]]


def test_workflow_runs_the_map_as_packaged():
    workflow = json.loads(WORKFLOW.read_text())
    tasks = {t["id"]: t for t in workflow["tasks"]}
    assert workflow["tasks"][0]["type"] == "router"
    (route,) = tasks["route-opt"]["task_destinations"]
    assert "'0008','0060'" in route["conditions"][0] and "'OPT'" in route["conditions"][0]
    docker = tasks[route["name"]]
    args = docker["args"]
    manifest = yaml.safe_load((DEPLOY.parent / "app.yaml").read_text())
    version = manifest["application"]["version"]
    assert args["container_image"] == f"oct-glaucoma-x64-workstation-dgpu-linux-amd64:{version}"
    assert args["command"] == "python3 -u /opt/holoscan/app/"
    for key in ("server_url", "entrypoint", "temp_storage_container_path"):
        assert args[key]
    # MWM mounts each artifact at the path given by the args key of the same name.
    for artifact in docker["artifacts"]["input"] + docker["artifacts"]["output"]:
        assert artifact["name"] in args
    assert args["env_HOLOSCAN_MODEL_PATH"].rstrip("/") == "/opt/holoscan/models"
    (export_name,) = [d["name"] for d in docker["task_destinations"]]
    export = tasks[export_name]
    assert export["type"] == "export"
    assert [d["name"] for d in export["export_destinations"]] == \
        workflow["informatics_gateway"]["export_destinations"]
    (source,) = export["artifacts"]["input"]
    assert source["value"] == (
        f"{{{{ context.executions.{docker['id']}.artifacts.env_HOLOSCAN_OUTPUT_PATH }}}}")
