"""Tests for model.data: sources, patient-level split, Dataset."""

import csv
import json
import logging

import numpy as np
import pytest
import torch

from model.data import (
    DataError,
    OCTDataset,
    Sample,
    describe_split,
    dicom_samples,
    folder_samples,
    laterality_from_name,
    phantom_samples,
    read_labels_csv,
    split_by_patient,
    write_phantom_folders,
    zenodo_samples,
)

SHAPE = (8, 12, 10)


def _asym(value: int) -> np.ndarray:
    """Volume with a bright W[:2] edge (acquisition orientation) and a label-specific level."""
    vol = np.full(SHAPE, value, np.uint8)
    vol[:, :, :2] = 250
    return vol


def test_zenodo_layout(tmp_path, caplog):
    names = [
        "POAG-001978-2012-02-08-OS.npy",
        "Normal-000123-2011-05-01-OD.npy",
        "POAG-001978-2013-01-02-OD.npy",
        "notes.npy",
    ]
    for n in names:
        np.save(tmp_path / n, _asym(10))
    with caplog.at_level(logging.WARNING):
        samples = zenodo_samples(tmp_path)
    assert "notes.npy" in caplog.text
    assert [s.path.name for s in samples] == sorted(names[:3])  # sorted (D7)
    by_name = {s.path.name: s for s in samples}
    s = by_name["POAG-001978-2012-02-08-OS.npy"]
    assert (s.patient_id, s.label, s.laterality) == ("001978", 1, "L")
    n = by_name["Normal-000123-2011-05-01-OD.npy"]
    assert (n.patient_id, n.label, n.laterality) == ("000123", 0, "R")
    # The left eye is canonicalised: the bright edge moves to the other side of W.
    assert s.load()[:, :, -1].mean() == 250 and n.load()[:, :, 0].mean() == 250


def test_zenodo_layout_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        zenodo_samples(tmp_path / "missing")
    with pytest.raises(DataError, match="no .npy"):
        zenodo_samples(tmp_path)
    np.save(tmp_path / "scan.npy", _asym(1))
    with pytest.raises(DataError, match="OD\\|OS"):
        zenodo_samples(tmp_path)


@pytest.mark.parametrize(
    "name, expected",
    [("p1_OD", "R"), ("p1-OS-2020", "L"), ("OS_p1", "L"), ("GOOD_p1", None), ("p1", None),
     ("p1_OD_OS", None)],
)
def test_laterality_from_name(name, expected):
    assert laterality_from_name(name) == expected


def test_folder_layout(tmp_path, caplog):
    g, n = tmp_path / "g", tmp_path / "n"
    g.mkdir()
    n.mkdir()
    np.save(g / "P1_OD.npy", _asym(1))
    np.save(g / "P1_OS.npy", _asym(1))
    np.save(n / "P2.npy", _asym(2))
    with caplog.at_level(logging.WARNING):
        samples = folder_samples(g, n)
    assert "assumed right eyes" in caplog.text
    assert [(s.patient_id, s.label, s.laterality) for s in samples] == [
        ("P1", 1, "R"), ("P1", 1, "L"), ("P2", 0, "R")]
    custom = folder_samples(g, n, patient_pattern=r"(?P<patient>P\d)")
    assert {s.patient_id for s in custom} == {"P1", "P2"}


def test_phantom_samples_and_folders(tmp_path):
    samples = phantom_samples(4, seed=1, shape=(16, 24, 16))
    assert sum(s.label for s in samples) == 2
    assert {s.laterality for s in samples} == {"R", "L"}
    for s in samples:
        assert s.load().shape == (16, 24, 16)
        assert (s.thinned_hemiretina is not None) == bool(s.label)
    g, n = write_phantom_folders(tmp_path, 4, seed=1, shape=(16, 24, 16))
    from_disk = folder_samples(g, n)
    assert len(from_disk) == 4 and sum(s.label for s in from_disk) == 2
    mem = {s.source_id.split(":")[1]: s for s in samples}
    for s in from_disk:
        seed = s.path.stem.split("_")[0].removeprefix("phantom")
        np.testing.assert_array_equal(s.load(), mem[seed].load())
        assert s.laterality == mem[seed].laterality


def _fake(n_patients: int, per_patient: int = 2, frac_glaucoma: float = 0.5) -> list[Sample]:
    out = []
    for p in range(n_patients):
        label = int(p < n_patients * frac_glaucoma)
        for v in range(per_patient):
            out.append(Sample(f"f{p}_{v}", f"pat{p:03d}", label, "R"))
    return out


def test_split_groups_patients_stratifies_and_is_seeded():
    samples = _fake(40)
    split = split_by_patient(samples, seed=3)
    patients = {k: {s.patient_id for s in v} for k, v in split.items()}
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    assert not (patients["val"] & patients["test"])
    assert sum(len(v) for v in split.values()) == len(samples)
    assert [len(patients[k]) for k in ("train", "val", "test")] == [26, 6, 8]
    for name in ("train", "val", "test"):
        labels = [s.label for s in split[name]]
        assert sum(labels) * 2 == len(labels)  # stratified: half glaucoma in every split
    again = split_by_patient(list(reversed(samples)), seed=3)
    assert {k: [s.source_id for s in v] for k, v in again.items()} == {
        k: [s.source_id for s in v] for k, v in split.items()}
    other = split_by_patient(samples, seed=4)
    assert {s.patient_id for s in other["test"]} != patients["test"]


def test_split_tiny_set_keeps_val_and_test():
    split = split_by_patient(_fake(6, per_patient=1), seed=0)
    assert all(split[k] for k in ("train", "val", "test"))
    assert {s.label for s in split["val"]} == {0, 1}


def test_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="fractions"):
        split_by_patient(_fake(4), fractions=(0.5, 0.5, 0.5))


def test_describe_split_is_json():
    split = split_by_patient(_fake(10), seed=0)
    record = describe_split(split, seed=0)
    text = json.dumps(record)
    assert record["counts"]["train"]["patients"] + record["counts"]["val"]["patients"] + \
        record["counts"]["test"]["patients"] == 10
    assert "pat000" in text


def test_labels_csv(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("SeriesInstanceUID,label,patient_id\n1.2.3,POAG,p1\n1.2.4,0,\n")
    rows = read_labels_csv(path)
    assert rows == {"1.2.3": {"label": "1", "patient_id": "p1"},
                    "1.2.4": {"label": "0", "patient_id": ""}}
    path.write_text("SeriesInstanceUID,diagnosis\n1.2.3,1\n")
    with pytest.raises(DataError, match="label"):
        read_labels_csv(path)
    path.write_text("SeriesInstanceUID,label\n1.2.3,maybe\n")
    with pytest.raises(DataError, match="line 2"):
        read_labels_csv(path)


def _write_dicom_folder(tmp_path, phantoms):
    """OPT files (one per phantom, two eyes per patient) and a labels CSV keyed by series UID."""
    from monai_app.sample_study import phantom_to_opt_dataset

    folder = tmp_path / "dicom"
    folder.mkdir()
    rows = []
    for i, p in enumerate(phantoms):
        ds = phantom_to_opt_dataset(
            p, patient_id=f"PAT{i // 2}", patient_name=f"Test^{i // 2}",
            patient_birth_date="19600101", patient_sex="O",
            study_instance_uid=f"1.2.826.0.1.3680043.8.498.1{i // 2}", study_id="1",
            accession_number=f"A{i // 2}", series_number=i + 1)
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
        rows.append((str(ds.SeriesInstanceUID), int(p.glaucoma)))
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["SeriesInstanceUID", "label"])
        w.writerows(rows)
    return folder, labels, rows


def test_dicom_layout(tmp_path):
    from model.phantoms import phantom_set

    phantoms = list(phantom_set(4, seed=2, shape=(8, 12, 10)))
    folder, labels, rows = _write_dicom_folder(tmp_path, phantoms)
    (folder / "readme.txt").write_text("not dicom")
    samples = dicom_samples(folder, labels)
    assert len(samples) == 4
    assert [s.label for s in samples] == [r[1] for r in rows]
    assert [s.laterality for s in samples] == [p.laterality for p in phantoms]
    assert [s.patient_id for s in samples] == ["PAT0", "PAT0", "PAT1", "PAT1"]
    np.testing.assert_array_equal(samples[1].load(),
                                  np.ascontiguousarray(phantoms[1].volume[..., ::-1])
                                  if phantoms[1].laterality == "L" else phantoms[1].volume)


def test_dicom_layout_skips_unlabelled_and_reports(tmp_path, caplog):
    from model.phantoms import phantom_set

    phantoms = list(phantom_set(3, seed=3, shape=(8, 12, 10)))
    folder, labels, rows = _write_dicom_folder(tmp_path, phantoms)
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join([lines[0], lines[1], lines[2], "9.9.9,1"]) + "\n")
    with caplog.at_level(logging.WARNING):
        samples = dicom_samples(folder, labels)
    assert [s.source_id.split(":")[1] for s in samples] == [rows[0][0], rows[1][0]]
    assert "not in" in caplog.text and "9.9.9" in caplog.text
    with pytest.raises(DataError, match="labels CSV"):
        dicom_samples(folder, tmp_path / "none.csv")


def test_dataset_pipeline_and_augmentation():
    samples = phantom_samples(2, seed=5, shape=(16, 24, 16))
    norm = {"kind": "scale", "divisor": 255}
    plain = OCTDataset(samples, (8, 12, 8), norm)
    item = plain[0]
    assert item["image"].shape == (1, 8, 12, 8) and item["image"].dtype == torch.float32
    assert 0 <= float(item["image"].min()) and float(item["image"].max()) <= 1
    assert int(item["label"]) == samples[0].label
    torch.testing.assert_close(plain[0]["image"], item["image"])  # eval: deterministic
    aug = OCTDataset(samples, (8, 12, 8), norm, augment=True, seed=1)
    a0 = aug[0]["image"]
    torch.testing.assert_close(aug[0]["image"], a0)  # same epoch: same draw
    aug.set_epoch(1)
    assert not torch.equal(aug[0]["image"], a0)
    assert not torch.equal(a0, item["image"])
    assert float(a0.max()) <= 1.0 + 1e-6
