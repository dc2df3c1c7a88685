"""Tests for operators.equipment: identity attributes, output UIDs and series numbers."""

from __future__ import annotations

from pydicom.uid import UID

from model.bundle import BundleMetadata
from operators.equipment import APP_NAME, APP_VERSION, AlgorithmInfo, output_series_number


def test_from_bundle_metadata():
    metadata = BundleMetadata(
        name="aicnet3d_demo",
        version="0.3.0",
        input_grid=(16, 24, 16),
        threshold=0.4,
        intended_use="Demo only.",
    )
    info = AlgorithmInfo.from_metadata(metadata)
    assert (info.model_name, info.model_version, info.threshold) == ("aicnet3d_demo", "0.3.0", 0.4)
    assert info.intended_use == "Demo only."
    assert info.software_versions == [f"{APP_NAME} {APP_VERSION}", "aicnet3d_demo 0.3.0"]
    equipment = info.equipment()
    assert equipment["manufacturer_model_name"] == APP_NAME
    assert equipment["device_serial_number"]


def test_output_uids_are_valid_deterministic_and_distinct():
    info = AlgorithmInfo("m", "1")
    uids = {
        info.output_uid("1.2.3", kind, level)
        for kind in ("sr", "seg", "report")
        for level in ("series", "instance")
    }
    assert len(uids) == 6
    for uid in uids:
        assert UID(uid).is_valid and len(uid) <= 64 and uid.startswith("2.25.")
    assert info.output_uid("1.2.3", "sr", "series") == AlgorithmInfo("m", "1").output_uid(
        "1.2.3", "sr", "series"
    )
    assert info.output_uid("1.2.3", "sr", "series") != info.output_uid("1.2.4", "sr", "series")


def test_output_series_numbers():
    assert [output_series_number(4, k) for k in ("sr", "seg", "report")] == [401, 402, 403]
    assert output_series_number(None, "seg") == 9902
    assert output_series_number("not a number", "sr") == 9901
