"""Node configuration: defaults, the documented example, validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from monai_app.node.config import (
    AllowedCaller,
    ConfigError,
    NodeConfig,
    load_config,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "node.example.yaml"


def _keys(cls: type, prefix: str = "") -> set[str]:
    keys = set()
    for f in dataclasses.fields(cls):
        keys.add(prefix + f.name)
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not
                                    dataclasses.MISSING else None):
            keys |= _keys(f.default_factory, prefix + f.name + ".")
    return keys


def _yaml_keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in data.items():
        keys.add(prefix + k)
        if isinstance(v, dict):
            keys |= _yaml_keys(v, prefix + k + ".")
    return keys


def test_example_documents_every_key_with_its_default():
    data = yaml.safe_load(EXAMPLE.read_text())
    assert _yaml_keys(data) == _keys(NodeConfig)
    example = load_config(EXAMPLE)
    defaults = parse_config({}, EXAMPLE.parent)
    assert example == defaults


def test_defaults_work_on_one_machine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert config.spool_dir == tmp_path / "node-spool"
    assert config.audit_path == tmp_path / "node-spool" / "audit.jsonl"
    assert config.bind_address == "127.0.0.1"
    assert config.destination.host == "127.0.0.1" and config.destination.port == 4242
    assert config.sending_ae_title == config.ae_title
    assert config.allowed_callers == (AllowedCaller("ORTHANC"),)
    assert not config.tls.enabled and not config.destination.tls.enabled


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    path = tmp_path / "conf" / "node.yaml"
    path.parent.mkdir()
    path.write_text("spool_dir: spool\nworker: {model_path: ../bundle}\n")
    config = load_config(path)
    assert config.spool_dir == path.parent / "spool"
    assert config.worker.model_path == path.parent / ".." / "bundle"


def test_allowed_callers_accept_strings_and_mappings():
    config = parse_config({"allowed_callers": ["A", {"ae_title": "B", "host": "10.0.0.1"}]})
    assert config.allowed_callers == (AllowedCaller("A"), AllowedCaller("B", "10.0.0.1"))


def test_padded_ae_titles_are_stripped():
    """Peers' AE titles arrive stripped: a padded title in the file must still match them."""
    config = parse_config({
        "ae_title": " GLAUCOMA_AI ",
        "allowed_callers": ["ORTHANC  ", {"ae_title": " B", "host": "10.0.0.1"}],
        "destination": {"ae_title": "PACS ", "calling_ae_title": " AI_SCU"},
    })
    assert config.ae_title == "GLAUCOMA_AI"
    assert config.allowed_callers == (AllowedCaller("ORTHANC"), AllowedCaller("B", "10.0.0.1"))
    assert config.destination.ae_title == "PACS"
    assert config.sending_ae_title == "AI_SCU"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"ae_tilte": "X"}, "unknown key(s) ae_tilte"),
        ({"destination": {"prot": 1}}, "destination.prot"),
        ({"ae_title": "A" * 17}, "not a valid AE title"),
        ({"port": 70000}, "not a TCP port"),
        ({"port": "11112"}, "expected a number"),
        ({"quiet_period_s": 0}, "quiet_period_s: must be > 0"),
        ({"allowed_callers": []}, "allow-list is empty"),
        ({"tls": {"enabled": True}}, "cert_file and key_file are required"),
        ({"tls": {"enabled": True, "cert_file": "c", "key_file": "k"}}, "needs ca_file"),
        ({"worker": {"max_attempts": 0}}, "worker.max_attempts"),
        ({"tls": {"enabled": "yes"}}, "expected true or false"),
        ({"log_level": "LOUD"}, "unknown level"),
        ({"worker": {"process_function": "tests/stub.py"}}, "not 'package.module:function'"),
    ],
)
def test_invalid_settings_are_named(data, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(data)


def test_unreadable_or_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)
