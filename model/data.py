"""Training data: sources, the patient-level split and the torch Dataset.

Sources (each returns a sorted list of :class:`Sample`; files are listed in sorted order, D7):

* :func:`zenodo_samples`: the Zenodo 1481223 layout
  ``<Normal|POAG>-<6-digit patient>-<yyyy>-<mm>-<dd>-<OD|OS>.npy`` (model.md §10).
* :func:`folder_samples`: two folders of ``.npy`` volumes, glaucoma and non-glaucoma.
* :func:`dicom_samples`: a folder of OCT DICOM files plus a labels CSV keyed by SeriesInstanceUID.
* :func:`phantom_samples` / :func:`write_phantom_folders`: synthetic phantoms, in memory or on disk.

Every sample loads as an ``(S, D, W)`` volume canonicalised to the right-eye layout (D8).
:func:`split_by_patient` keeps all volumes of one patient in one split (D6).
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.transforms import augment, canonicalise, normalise_intensity, resample_volume

logger = logging.getLogger(__name__)

ZENODO_PATTERN = re.compile(
    r"^(?P<label>Normal|POAG)-(?P<patient>\d{6})-(?P<date>\d{4}-\d{2}-\d{2})-(?P<eye>OD|OS)\.npy$"
)
# An OD/OS token delimited by start/end or a non-alphanumeric character ("x_OD.npy", "OS-1.npy").
_EYE_TOKEN = re.compile(r"(?<![A-Za-z0-9])(OD|OS)(?![A-Za-z0-9])")
_EYE_TO_LATERALITY = {"OD": "R", "OS": "L"}
SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """A data source cannot be used; the message names the folder, file or column."""


@dataclass(frozen=True)
class Sample:
    """One labelled OCT volume.

    Attributes:
        source_id: file path, ``dicom:<SeriesInstanceUID>:<path>`` or ``phantom:<seed>``.
        patient_id: grouping key for the split.
        label: 1 glaucoma, 0 not.
        laterality: ``"R"`` or ``"L"`` of the stored volume.
        path: file to read (None for in-memory volumes).
        kind: ``"npy"``, ``"dicom"`` or ``"memory"``.
        volume: the stored volume for ``kind == "memory"`` (acquisition orientation).
        thinned_hemiretina: phantom ground truth (``"superior"``/``"inferior"``/None), else None.
    """

    source_id: str
    patient_id: str
    label: int
    laterality: str
    path: Path | None = None
    kind: str = "npy"
    volume: np.ndarray | None = field(default=None, repr=False, compare=False)
    thinned_hemiretina: str | None = None

    def load_raw(self) -> np.ndarray:
        """The stored ``(S, D, W)`` volume in acquisition orientation."""
        if self.kind == "memory":
            if self.volume is None:
                raise DataError(f"{self.source_id}: in-memory sample without a volume")
            return self.volume
        if self.kind == "npy":
            volume = np.load(self.path, allow_pickle=False)
        elif self.kind == "dicom":
            from operators.oct_volume import read_oct_volume  # lazy: model/ never needs pydicom

            volume = read_oct_volume(self.path).voxels
        else:
            raise DataError(f"{self.source_id}: unknown sample kind {self.kind!r}")
        if volume.ndim != 3:
            raise DataError(f"{self.path}: expected a 3-D (S, D, W) volume, got {volume.shape}")
        return volume

    def load(self) -> np.ndarray:
        """The volume canonicalised to the right-eye layout (W flipped for a left eye)."""
        return canonicalise(self.load_raw(), self.laterality)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary for split.json."""
        return {
            "source_id": self.source_id,
            "patient_id": self.patient_id,
            "label": self.label,
            "laterality": self.laterality,
        }


def _npy_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*.npy") if p.is_file())
    if not files:
        raise DataError(f"no .npy files under {folder}")
    return files


def zenodo_samples(folder: str | Path) -> list[Sample]:
    """Samples from the Zenodo 1481223 file-name layout (labels, patient and eye from the name).

    Files not matching the pattern are skipped with a warning; none matching is an error.
    """
    samples, skipped = [], []
    for path in _npy_files(Path(folder)):
        m = ZENODO_PATTERN.match(path.name)
        if m is None:
            skipped.append(path.name)
            continue
        samples.append(
            Sample(
                source_id=str(path),
                patient_id=m["patient"],
                label=int(m["label"] == "POAG"),
                laterality=_EYE_TO_LATERALITY[m["eye"]],
                path=path,
            )
        )
    if skipped:
        logger.warning("skipped %d files not named like the Zenodo layout, e.g. %s",
                       len(skipped), skipped[0])
    if not samples:
        raise DataError(
            f"no file under {folder} matches "
            "<Normal|POAG>-<6-digit id>-<yyyy>-<mm>-<dd>-<OD|OS>.npy"
        )
    return samples


def laterality_from_name(name: str) -> str | None:
    """``"R"``/``"L"`` from an OD/OS token in a file name, or None when there is none (or both)."""
    tokens = set(_EYE_TOKEN.findall(name))
    return _EYE_TO_LATERALITY[tokens.pop()] if len(tokens) == 1 else None


def _patient_from_name(stem: str, pattern: re.Pattern[str] | None) -> str:
    if pattern is not None:
        m = pattern.search(stem)
        if m is None:
            raise DataError(f"patient pattern {pattern.pattern!r} does not match file {stem!r}")
        return m.group("patient") if "patient" in pattern.groupindex else m.group(0)
    m = ZENODO_PATTERN.match(stem + ".npy")
    if m:
        return m["patient"]
    # Without a pattern, both eyes of one stem ("P12_OD", "P12_OS") group together.
    return _EYE_TOKEN.sub("", stem).strip("-_. ") or stem


def folder_samples(
    glaucoma_dir: str | Path,
    normal_dir: str | Path,
    *,
    patient_pattern: str | None = None,
) -> list[Sample]:
    """Samples from two folders of ``.npy`` volumes (label from the folder).

    Laterality comes from an OD/OS token in the file name; files without one are assumed to be
    right eyes (logged). The patient id is the ``patient`` group (or whole match) of
    ``patient_pattern`` searched in the file stem; by default it is the stem without its OD/OS
    token, so both eyes of one stem share a patient (Zenodo-style names give the 6-digit id).
    """
    pattern = re.compile(patient_pattern) if patient_pattern else None
    samples: list[Sample] = []
    assumed: list[str] = []
    for label, folder in ((1, glaucoma_dir), (0, normal_dir)):
        for path in _npy_files(Path(folder)):
            laterality = laterality_from_name(path.stem)
            if laterality is None:
                assumed.append(path.name)
                laterality = "R"
            samples.append(
                Sample(
                    source_id=str(path),
                    patient_id=_patient_from_name(path.stem, pattern),
                    label=label,
                    laterality=laterality,
                    path=path,
                )
            )
    if assumed:
        logger.warning(
            "%d files have no OD/OS token in their name; assumed right eyes (R), e.g. %s",
            len(assumed), assumed[0],
        )
    return samples


def read_labels_csv(path: str | Path) -> dict[str, dict[str, str]]:
    """Rows of a labels CSV (``SeriesInstanceUID,label[,patient_id]``) keyed by series UID.

    ``label`` accepts 1/0, glaucoma/normal, POAG/Normal, true/false (case-insensitive).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels CSV {path} does not exist")
    positive = {"1", "glaucoma", "poag", "true", "yes"}
    negative = {"0", "normal", "no glaucoma", "non-glaucoma", "false", "no"}
    rows: dict[str, dict[str, str]] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"SeriesInstanceUID", "label"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"labels CSV {path} lacks column(s) {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            uid = (row["SeriesInstanceUID"] or "").strip()
            value = (row["label"] or "").strip().lower()
            if value not in positive | negative:
                raise DataError(f"labels CSV {path} line {line}: label {row['label']!r} not 0/1")
            if uid in rows:
                raise DataError(f"labels CSV {path} line {line}: duplicate series {uid}")
            rows[uid] = {"label": "1" if value in positive else "0",
                         "patient_id": (row.get("patient_id") or "").strip()}
    return rows


def dicom_samples(folder: str | Path, labels_csv: str | Path) -> list[Sample]:
    """Samples from a folder of OCT DICOM files and a labels CSV keyed by SeriesInstanceUID.

    Each file is read once with :func:`operators.oct_volume.read_oct_volume` (laterality from
    ImageLaterality (0020,0062), patient from PatientID (0010,0020) unless the CSV gives
    ``patient_id``); voxels are re-read when a sample is loaded. Files that are not readable OCT
    volumes, and series without a label, are skipped with a warning.
    """
    from operators.oct_volume import OCTVolumeError, read_oct_volume  # lazy: no pydicom in model/

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"DICOM folder {folder} does not exist")
    labels = read_labels_csv(labels_csv)
    samples, unreadable, unlabelled = [], [], []
    seen_series: set[str] = set()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "DICOMDIR"):
        try:
            vol = read_oct_volume(path)
        except (OCTVolumeError, OSError) as exc:
            unreadable.append(f"{path.name}: {exc}")
            continue
        uid = str(vol.series_instance_uid)
        row = labels.get(uid)
        if row is None:
            unlabelled.append(path.name)
            continue
        seen_series.add(uid)
        samples.append(
            Sample(
                source_id=f"dicom:{uid}:{path}",
                patient_id=row["patient_id"] or str(vol.patient_id),
                label=int(row["label"]),
                laterality=vol.laterality,
                path=path,
                kind="dicom",
            )
        )
    if unreadable:
        logger.warning("skipped %d files that are not OCT volumes, e.g. %s",
                       len(unreadable), unreadable[0])
    if unlabelled:
        logger.warning("skipped %d OCT files whose series is not in %s, e.g. %s",
                       len(unlabelled), labels_csv, unlabelled[0])
    missing = sorted(set(labels) - seen_series)
    if missing:
        logger.warning("%d labelled series have no file under %s, e.g. %s",
                       len(missing), folder, missing[0])
    if not samples:
        raise DataError(f"no labelled OCT DICOM volume under {folder} (labels {labels_csv})")
    return samples


def phantom_samples(
    count: int,
    seed: int,
    *,
    shape: Sequence[int] = (64, 96, 56),
    glaucoma_fraction: float = 0.5,
    laterality: str = "both",
    signs: Sequence[str] | None = None,
) -> list[Sample]:
    """``count`` synthetic phantoms in memory; each phantom is its own patient.

    ``signs`` selects the glaucomatous signs (``model.phantoms.GLAUCOMA_SIGNS``, all by default).
    """
    from model.phantoms import GLAUCOMA_SIGNS, phantom_set

    return [
        Sample(
            source_id=f"phantom:{p.seed}",
            patient_id=f"phantom-{p.seed}",
            label=int(p.glaucoma),
            laterality=p.laterality,
            kind="memory",
            volume=p.volume,
            thinned_hemiretina=p.thinned_hemiretina,
        )
        for p in phantom_set(count, seed, shape=tuple(shape), glaucoma_fraction=glaucoma_fraction,
                             laterality=laterality,
                             signs=GLAUCOMA_SIGNS if signs is None else tuple(signs))
    ]


def write_phantom_folders(
    out_dir: str | Path, count: int, seed: int, *, shape: Sequence[int] = (64, 96, 56)
) -> tuple[Path, Path]:
    """Write phantoms as layout (b): ``out_dir/glaucoma``, ``out_dir/normal``, OD/OS in names."""
    from model.phantoms import phantom_set

    out = Path(out_dir)
    dirs = {True: out / "glaucoma", False: out / "normal"}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for p in phantom_set(count, seed, shape=tuple(shape)):
        eye = "OD" if p.laterality == "R" else "OS"
        np.save(dirs[p.glaucoma] / f"phantom{p.seed}_{eye}.npy", p.volume)
    return dirs[True], dirs[False]


# --------------------------------------------------------------------------------------------------
# Split


def _counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Train/val/test sizes for one stratum; val and test get at least one patient when n >= 3."""
    n_val = int(round(n * fractions[1]))
    n_test = int(round(n * fractions[2]))
    if n >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    n_val = min(n_val, n)
    n_test = min(n_test, n - n_val)
    return n - n_val - n_test, n_val, n_test


def split_by_patient(
    samples: Iterable[Sample],
    *,
    fractions: Sequence[float] = (0.65, 0.15, 0.20),
    seed: int = 0,
) -> dict[str, list[Sample]]:
    """Seeded, patient-grouped, label-stratified train/val/test split (D6).

    A patient is stratified by whether any of their volumes is glaucomatous. Patients are sorted
    before the seeded shuffle, so the split depends only on the data and the seed (D7).
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(
            f"split fractions must be three non-negative numbers summing to 1: {fractions}"
        )
    by_patient: dict[str, list[Sample]] = {}
    for s in samples:
        by_patient.setdefault(s.patient_id, []).append(s)
    rng = np.random.default_rng(seed)
    split_of: dict[str, str] = {}
    for stratum in (0, 1):
        patients = sorted(p for p, ss in by_patient.items() if max(s.label for s in ss) == stratum)
        order = [patients[i] for i in rng.permutation(len(patients))]
        n_train, n_val, _ = _counts(len(order), fractions)
        for i, patient in enumerate(order):
            split_of[patient] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    out: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    for patient in sorted(by_patient):
        out[split_of[patient]].extend(sorted(by_patient[patient], key=lambda s: s.source_id))
    return out


def describe_split(split: Mapping[str, Sequence[Sample]], **extra: Any) -> dict[str, Any]:
    """JSON-friendly record of a split (split.json): counts and every sample's identity."""
    return {
        **extra,
        "counts": {
            name: {"volumes": len(ss), "patients": len({s.patient_id for s in ss}),
                   "glaucoma": sum(s.label for s in ss)}
            for name, ss in split.items()
        },
        "samples": {name: [s.describe() for s in ss] for name, ss in split.items()},
    }


# --------------------------------------------------------------------------------------------------
# Dataset


class OCTDataset(torch.utils.data.Dataset):
    """Samples -> ``{"image": (1, S, D, W) float32, "label": int64, "index": int}`` on the grid.

    Pipeline: load + canonicalise -> resample to ``grid`` -> (train only) augment -> normalise.
    Augmentation draws from ``np.random.default_rng([seed, epoch, index])``, so it is reproducible
    whatever the worker layout; call :meth:`set_epoch` before each epoch.

    Args:
        samples: the samples.
        grid: model input grid ``(S, D, W)``.
        normalisation: bundle intensity normalisation spec.
        augment: apply 'g' and 'z' augmentation (training split only).
        s_flip: also flip S with p = 0.5 (ablation, off by default).
        seed: augmentation seed.
        cache: keep resampled (pre-augmentation) volumes in memory after the first load.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        grid: Sequence[int],
        normalisation: Mapping[str, Any],
        *,
        augment: bool = False,
        s_flip: bool = False,
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        self.samples = list(samples)
        self.grid = tuple(int(g) for g in grid)
        self.normalisation = dict(normalisation)
        self.augment = augment
        self.s_flip = s_flip
        self.seed = seed
        self.cache = cache
        self.epoch = 0
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw for ``epoch``."""
        self.epoch = int(epoch)

    def volume_on_grid(self, index: int) -> np.ndarray:
        """Canonical float32 volume resampled to the model grid (cached when enabled)."""
        if index in self._cache:
            return self._cache[index]
        volume = resample_volume(self.samples[index].load(), self.grid)
        if self.cache:
            self._cache[index] = volume
        return volume

    def __getitem__(self, index: int) -> dict[str, Any]:
        volume = self.volume_on_grid(index)
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            # Augmentation works on [0, 1]; the scale divisor is full scale (255 for 8-bit).
            value_max = self.normalisation.get("divisor", 255.0)
            volume = augment(volume, rng, s_flip=self.s_flip, value_max=value_max)
        image = normalise_intensity(volume, self.normalisation)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None],
            "label": torch.tensor(self.samples[index].label, dtype=torch.int64),
            "index": index,
        }
