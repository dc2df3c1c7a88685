"""Tests for operators.dicom_input: recursive search, skipped files, symlinks, duplicates."""

from __future__ import annotations

import logging

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from operators.dicom_input import NoOCTInputError, find_oct_files, require_oct_files
from tests.app_support import opt_dataset, save


def _secondary_capture() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "in"
    save(opt_dataset(1, laterality="R", series_number=1), root / "study" / "a" / "od.dcm")
    save(opt_dataset(2, laterality="L", series_number=2), root / "study" / "b" / "os")  # no suffix
    save(_secondary_capture(), root / "fundus.dcm")
    (root / "notes.txt").write_text("not DICOM")
    (root / "corrupt.dcm").write_bytes(b"\0" * 50)
    return root


def test_finds_every_opt_recursively_and_ignores_the_rest(folder, caplog):
    caplog.set_level(logging.WARNING, logger="operators.dicom_input")
    files = find_oct_files(folder)
    assert [f.relative_to(folder).as_posix() for f in files] == ["study/a/od.dcm", "study/b/os"]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "notes.txt" in warned and "corrupt.dcm" in warned  # named in a warning
    assert "fundus.dcm" not in warned  # another SOP class is ignored, not an error


def test_a_single_file_input(folder):
    path = folder / "study" / "a" / "od.dcm"
    assert find_oct_files(path) == [path]


def test_symbolic_links_never_lead_out_of_the_folder(tmp_path, folder):
    outside = save(opt_dataset(3, series_number=3), tmp_path / "outside" / "other.dcm")
    (folder / "link.dcm").symlink_to(outside)
    (folder / "linked_dir").symlink_to(outside.parent, target_is_directory=True)
    (folder / "inside_link.dcm").symlink_to(folder / "study" / "a" / "od.dcm")
    files = find_oct_files(folder)
    assert outside not in [f.resolve() for f in files]
    assert all("linked_dir" not in f.parts for f in files)
    # A link to a file inside the folder is the same instance: counted once.
    assert len(files) == 2


def test_duplicate_instances_count_once(folder, caplog):
    save(opt_dataset(1, laterality="R", series_number=1), folder / "zz_copy.dcm")
    caplog.set_level(logging.WARNING, logger="operators.dicom_input")
    files = find_oct_files(folder)
    assert len(files) == 2
    assert any("zz_copy.dcm" in r.getMessage() for r in caplog.records)


def test_no_oct_raises(tmp_path):
    save(_secondary_capture(), tmp_path / "only_fundus.dcm")
    with pytest.raises(NoOCTInputError, match="no OCT volume"):
        require_oct_files(tmp_path)


def test_missing_input_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        find_oct_files(tmp_path / "absent")
