"""Tests for operators.bundle_path: default demo bundle, MAP layout, errors."""

from __future__ import annotations

import pytest

from operators.bundle_path import (
    DEFAULT_BUNDLE,
    SDK_DEFAULT_MODEL_PATH,
    BundleNotFoundError,
    resolve_bundle,
)


def _bundle(path):
    (path / "configs").mkdir(parents=True)
    (path / "configs" / "metadata.json").write_text("{}")
    return path


def test_bundle_folder_and_map_layout(tmp_path):
    bundle = _bundle(tmp_path / "models" / "aicnet3d")
    assert resolve_bundle(bundle) == bundle.resolve()
    assert resolve_bundle(tmp_path / "models") == bundle.resolve()  # /opt/holoscan/models/<name>


def test_default_is_the_demo_bundle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./models here: the SDK default means "not given"
    for given in (None, SDK_DEFAULT_MODEL_PATH):
        if DEFAULT_BUNDLE.joinpath("configs", "metadata.json").is_file():
            assert resolve_bundle(given) == DEFAULT_BUNDLE
        else:
            with pytest.raises(BundleNotFoundError, match="aicnet3d_demo"):
                resolve_bundle(given)


def test_errors(tmp_path):
    with pytest.raises(BundleNotFoundError, match="no model bundle"):
        resolve_bundle(tmp_path / "absent")
    _bundle(tmp_path / "two" / "a")
    _bundle(tmp_path / "two" / "b")
    with pytest.raises(BundleNotFoundError, match="several"):
        resolve_bundle(tmp_path / "two")
