"""Helpers for the application tests: a small random model bundle, phantom OPT instances, dciodvfy.

Not a conftest: imported explicitly by the application test modules.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from model.bundle import BundleMetadata, save_bundle
from model.network import AICNet3D
from model.phantoms import make_phantom
from model.predictor import Prediction
from monai_app.sample_study import phantom_to_opt_dataset

GRID = (16, 24, 16)
"""The test bundle's input grid (small: fast on CPU)."""

SHAPE = (16, 32, 32)
"""Native phantom grid of the tests; JPEG 2000 needs rows and columns >= 32."""

STUDY_UID = "1.2.826.0.1.3680043.8.498.4242.1"
PATIENT = {
    "patient_id": "PAT-0042",
    "patient_name": "Müller^Zoë",  # non-ASCII on purpose: the outputs must keep it intact
    "patient_birth_date": "19580214",
    "patient_sex": "F",
}

# dciodvfy lines starting with "Error" that are not errors of our outputs (none so far; the
# three concatenation false positives of dicom.md section 6 concern the OPT inputs only).
KNOWN_DCIODVFY_FALSE_POSITIVES: tuple[str, ...] = ()


def make_bundle(bundle_dir: Path, seed: int = 0) -> Path:
    """Save a small, randomly initialised AICNet3D bundle (BN statistics from a few passes)."""
    torch.manual_seed(seed)
    net = AICNet3D(channels=8, input_size=GRID)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(2, 1, *GRID))
    metadata = BundleMetadata(
        name="aicnet3d_test", version="1.2.3", input_grid=GRID, network_kwargs={"channels": 8}
    )
    return save_bundle(net.eval(), metadata, bundle_dir)


def opt_dataset(
    seed: int = 1,
    *,
    glaucoma: bool = True,
    laterality: str = "R",
    shape: tuple[int, int, int] = SHAPE,
    series_number: int = 1,
    transfer_syntax: str = ExplicitVRLittleEndian,
    frame_order=None,
    volume: np.ndarray | None = None,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """A phantom OPT instance of the test patient and study (``volume`` replaces the phantom's)."""
    phantom = make_phantom(seed, glaucoma=glaucoma, laterality=laterality, shape=shape)
    if volume is not None:
        phantom = dataclasses.replace(phantom, volume=volume)
    return phantom_to_opt_dataset(
        phantom,
        **PATIENT,
        study_instance_uid=STUDY_UID,
        study_id="7",
        accession_number="ACC-77",
        series_number=series_number,
        transfer_syntax=transfer_syntax,
        frame_order=frame_order,
        sop_instance_uid=sop_instance_uid,
    )


def save(dataset: Dataset, path: Path) -> Path:
    """Write a dataset as a DICOM file (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


def fake_prediction(shape: tuple[int, int, int], probability: float = 0.8) -> Prediction:
    """A Prediction with distinctive maps: CARE ramps along S, Grad-CAM along W."""
    s, d, w = shape
    care = np.broadcast_to(np.linspace(0, 1, s, dtype=np.float32)[:, None, None], shape).copy()
    gradcam = np.broadcast_to(np.linspace(1, 0, w, dtype=np.float32)[None, None, :], shape).copy()
    return Prediction(
        probability=probability,
        label="glaucoma" if probability >= 0.5 else "no glaucoma",
        glaucoma=probability >= 0.5,
        care=care,
        gradcam=gradcam,
        model_name="aicnet3d_test",
        model_version="1.2.3",
        timings={"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0},
    )


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy reports for a file, minus the known false positives."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    return [
        line
        for line in lines
        if line.startswith("Error")
        and not any(known in line for known in KNOWN_DCIODVFY_FALSE_POSITIVES)
    ]
