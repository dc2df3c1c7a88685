"""Write synthetic OCT phantoms as DICOM Ophthalmic Tomography Image (OPT) instances.

The OPT IOD (PS3.3 A.52) stores a whole cube in one multi-frame instance, one frame per B-scan
(frames = S, Rows = D, Columns = W). This module builds such instances from
:class:`model.phantoms.Phantom` with pydicom only, as a volumetric cube
(``OphthalmicVolumetricPropertiesFlag`` YES, so Frame of Reference and plane position/orientation
are present), and writes the demo study: one patient, one study, an OD glaucomatous series and an
OS normal series.

Patient coordinates (LPS, PS3.3 C.7.6.2.1.1): columns (``W``) run along +x (towards the patient's
left, i.e. temporal to nasal in OD, nasal to temporal in OS), rows (``D``) along +y (posterior, into
the eye), and frames (``S``) step along -z (superior to inferior).

CLI: ``python -m monai_app.sample_study OUT_DIR [--seed N] [--shape S D W]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from pydicom.valuerep import format_number_as_ds

from model.phantoms import Phantom, make_phantom

__all__ = [
    "OPT_SOP_CLASS_UID",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "main",
    "phantom_to_opt_dataset",
    "write_sample_study",
]

#: Ophthalmic Tomography Image Storage (PS3.4 B.5).
OPT_SOP_CLASS_UID = UID("1.2.840.10008.5.1.4.1.1.77.1.5.4")

_NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
_ENCAPSULATED = (RLELossless, JPEG2000Lossless, JPEGLSLossless)
#: Transfer syntaxes the writer produces; all lossless, so LossyImageCompression stays "00".
SUPPORTED_TRANSFER_SYNTAXES: tuple[UID, ...] = _NATIVE + _ENCAPSULATED

_DEFAULT_ACQUISITION = dt.datetime(2025, 1, 6, 9, 30, 0)
_FRAME_DURATION_MS = 10.0  # one B-scan; a 100 kHz device scanning ~1000 A-scans
_J2K_MIN_SIZE = 32
_UID_NAMESPACE = "urn:monai-oct-glaucoma:sample-study"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    """A basic code sequence item (PS3.3 Table 8.8-1)."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters (PS3.5 6.2)."""
    return format_number_as_ds(float(value))


def _dt(value: dt.datetime) -> str:
    return value.strftime("%Y%m%d%H%M%S.%f")


def _derived_uid(*parts: object) -> UID:
    """Deterministic ``2.25.`` UID from the given parts (reproducible demo studies).

    A name-based (SHA-1) UUID as an integer, the UUID-derived UID form of PS3.5 B.2. pydicom's
    ``generate_uid(prefix=None, ...)`` ignores ``entropy_srcs`` and returns a random UUID.
    """
    name = "|".join(map(str, parts))
    return UID(f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, f'{_UID_NAMESPACE}/{name}').int}")


# CID 4209 anatomy, CID 4207 relative image position, CID 4272 scan pattern, CID 4210 device.
_RETINA = ("5665001", "SCT", "Retina")
_DISC_MACULA_CENTERED = ("111903", "DCM", "Disc-macula centered")
_CUBE = ("128279", "DCM", "Cube")
_OCT_SCANNER = ("392012008", "SCT", "Optical Coherence Tomography Scanner")


def _check_transfer_syntax(transfer_syntax: str) -> UID:
    uid = UID(transfer_syntax)
    if uid not in SUPPORTED_TRANSFER_SYNTAXES:
        names = ", ".join(ts.name for ts in SUPPORTED_TRANSFER_SYNTAXES)
        raise ValueError(f"unsupported transfer syntax {uid} ({uid.name}); use one of: {names}")
    return uid


def _check_frame_order(frame_order: Sequence[int] | None, n_frames: int) -> np.ndarray:
    """Storage index of each spatial frame (identity when None)."""
    if frame_order is None:
        return np.arange(n_frames)
    order = np.asarray(frame_order, dtype=int)
    if order.shape != (n_frames,) or not np.array_equal(np.sort(order), np.arange(n_frames)):
        raise ValueError(f"frame_order must be a permutation of range({n_frames})")
    return order


def _patient_study_series(ds: Dataset, phantom: Phantom, meta: dict, when: dt.datetime) -> None:
    """Patient, General Study, General/OPT Series, FoR and equipment modules (PS3.3 A.52.3)."""
    ds.PatientName = meta["patient_name"]
    ds.PatientID = meta["patient_id"]
    ds.PatientBirthDate = meta["patient_birth_date"]
    ds.PatientSex = meta["patient_sex"]

    ds.StudyInstanceUID = meta["study_instance_uid"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = meta["study_id"]
    ds.AccessionNumber = meta["accession_number"]
    ds.StudyDescription = "OCT glaucoma screening (synthetic)"

    # No series Laterality: ImageLaterality (Ocular Region Imaged) carries it (C.7.3.1, C.8.17.5).
    ds.Modality = "OPT"
    ds.SeriesInstanceUID = meta["series_instance_uid"]
    ds.SeriesNumber = meta["series_number"]
    eye = "OD" if phantom.laterality == "R" else "OS"
    ds.SeriesDescription = meta["series_description"] or f"OPT wide-field cube {eye} (phantom)"

    ds.FrameOfReferenceUID = meta["frame_of_reference_uid"]
    ds.PositionReferenceIndicator = ""

    # Enhanced General Equipment (C.7.5.2): these four are Type 1.
    ds.Manufacturer = "MONAI Deploy OCT glaucoma demo"
    ds.ManufacturerModelName = "Synthetic OCT phantom"
    ds.DeviceSerialNumber = f"PHANTOM-{phantom.seed}"
    ds.SoftwareVersions = "model.phantoms 1"


def _image_modules(ds: Dataset, phantom: Phantom, when: dt.datetime) -> None:
    """Image Pixel, OT Image, OT Acquisition Parameters, OT Parameters, Ocular Region Imaged."""
    n_frames, rows, cols = phantom.volume.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0

    # OT Image (C.8.17.4).
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber = 1
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = _dt(when)
    ds.AcquisitionDuration = n_frames * _FRAME_DURATION_MS / 1000.0  # seconds
    ds.PresentationLUTShape = "IDENTITY"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.OphthalmicVolumetricPropertiesFlag = "YES"
    # Type 2C: required (may be empty) when the image has an anatomic reference point.
    ds.OphthalmicAnatomicReferencePointXCoordinate = None
    ds.OphthalmicAnatomicReferencePointYCoordinate = None

    # OT Acquisition Parameters (C.8.17.6): Type 2, unknown for a phantom.
    ds.AxialLengthOfTheEye = None
    ds.HorizontalFieldOfView = None
    ds.RefractiveStateSequence = DicomSequence()
    ds.EmmetropicMagnification = None
    ds.IntraOcularPressure = None
    ds.PupilDilated = None

    # OT Parameters (C.8.17.7): a spectral-domain device around 840 nm.
    ds.AcquisitionDeviceTypeCodeSequence = DicomSequence([_code(*_OCT_SCANNER)])
    ds.LightPathFilterTypeStackCodeSequence = DicomSequence()
    ds.DetectorType = "CCD"
    ds.IlluminationWaveLength = 840.0  # nm
    ds.IlluminationPower = 0.7  # mW
    ds.IlluminationBandwidth = 50.0  # nm
    ds.DepthSpatialResolution = 7.0  # um
    ds.MaximumDepthDistortion = 1.0  # %
    ds.AlongScanSpatialResolution = 20.0  # um
    ds.MaximumAlongScanDistortion = 1.0
    ds.AcrossScanSpatialResolution = 20.0
    ds.MaximumAcrossScanDistortion = 1.0
    ds.ScanPatternTypeCodeSequence = DicomSequence([_code(*_CUBE)])

    # Ocular Region Imaged (C.8.17.5).
    ds.ImageLaterality = phantom.laterality
    ds.AnatomicRegionSequence = DicomSequence([_code(*_RETINA)])
    ds.RelativeImagePositionCodeSequence = DicomSequence([_code(*_DISC_MACULA_CENTERED)])

    # Acquisition Context (C.7.6.14): Type 2, nothing to record.
    ds.AcquisitionContextSequence = DicomSequence()


def _functional_groups(
    ds: Dataset, phantom: Phantom, order: np.ndarray, when: dt.datetime, dim_uid: UID
) -> None:
    """Multi-frame Functional Groups and Dimension modules (C.7.6.16, C.7.6.17).

    Per-frame items follow storage order; each carries the spatial position of its B-scan
    (InStackPositionNumber 1..S superior to inferior, ImagePositionPatient) so a reader can sort.
    """
    n_frames, rows, cols = phantom.volume.shape
    d_slice, d_axial, d_lateral = phantom.spacing_mm
    ds.NumberOfFrames = n_frames
    # PS3.3 A.52.4.3: OPT has no concatenations, but these Type 1 values are fixed at 0/1/1.
    ds.ConcatenationFrameOffsetNumber = 0
    ds.InConcatenationNumber = 1
    ds.InConcatenationTotalNumber = 1

    measures = Dataset()
    measures.PixelSpacing = [_ds(d_axial), _ds(d_lateral)]  # [between rows, between columns]
    measures.SliceThickness = _ds(d_slice)
    measures.SpacingBetweenSlices = _ds(d_slice)
    orientation = Dataset()
    orientation.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = DicomSequence([_code(*_RETINA)])
    anatomy.FrameLaterality = phantom.laterality
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.FrameAnatomySequence = DicomSequence([anatomy])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    # Centre the cube on the patient-coordinate origin; frames step inferior (-z).
    x0 = -(cols - 1) * d_lateral / 2
    z0 = (n_frames - 1) * d_slice / 2
    per_frame = [Dataset() for _ in range(n_frames)]
    for spatial, storage in enumerate(order):
        start = when + dt.timedelta(milliseconds=spatial * _FRAME_DURATION_MS)
        content = Dataset()
        content.FrameAcquisitionDateTime = _dt(start)
        content.FrameReferenceDateTime = _dt(start)
        content.FrameAcquisitionDuration = _FRAME_DURATION_MS
        content.StackID = "1"
        content.InStackPositionNumber = spatial + 1
        content.DimensionIndexValues = [spatial + 1]
        position = Dataset()
        position.ImagePositionPatient = [_ds(x0), "0", _ds(z0 - spatial * d_slice)]
        per_frame[storage].FrameContentSequence = DicomSequence([content])
        per_frame[storage].PlanePositionSequence = DicomSequence([position])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)

    organization = Dataset()
    organization.DimensionOrganizationUID = dim_uid
    ds.DimensionOrganizationSequence = DicomSequence([organization])
    index = Dataset()
    index.DimensionOrganizationUID = dim_uid
    index.DimensionIndexPointer = 0x00209057  # InStackPositionNumber
    index.FunctionalGroupPointer = 0x00209111  # FrameContentSequence
    index.DimensionDescriptionLabel = "In-Stack Position"
    ds.DimensionIndexSequence = DicomSequence([index])
    ds.DimensionOrganizationType = "3D"


def phantom_to_opt_dataset(
    phantom: Phantom,
    *,
    patient_id: str,
    patient_name: str,
    patient_birth_date: str,
    patient_sex: str,
    study_instance_uid: str,
    study_id: str,
    accession_number: str,
    series_number: int,
    frame_of_reference_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    frame_order: Sequence[int] | None = None,
    acquisition_datetime: dt.datetime | None = None,
    series_description: str | None = None,
) -> Dataset:
    """Build a complete Ophthalmic Tomography Image instance (PS3.3 A.52) from a phantom.

    Args:
        phantom: the cube; ``volume`` ``(S, D, W)`` becomes frames x Rows x Columns.
        patient_id, patient_name, patient_birth_date (``YYYYMMDD``), patient_sex (M/F/O):
            Patient module; any Unicode name works (SpecificCharacterSet ``ISO_IR 192``).
        study_instance_uid, study_id, accession_number: General Study module.
        series_number: General Series module.
        frame_of_reference_uid, sop_instance_uid, series_instance_uid: derived deterministically
            from the study UID, series number and phantom when None.
        transfer_syntax: one of :data:`SUPPORTED_TRANSFER_SYNTAXES` (all lossless); JPEG 2000
            needs Rows and Columns >= 32 (the encoder's fixed 6 wavelet resolutions).
        frame_order: ``frame_order[j]`` = storage index of spatial frame ``j`` (the convention of
            ``OCTVolume.frame_order``), to store frames shuffled; identity when None.
        acquisition_datetime: start of the acquisition (a fixed date when None, for
            reproducibility); frame times follow at 10 ms per B-scan.
        series_description: defaults to ``"OPT wide-field cube OD|OS (phantom)"``.

    Returns:
        The dataset with ``file_meta``, ready for ``save_as(path, enforce_file_format=True)``.
    """
    ts = _check_transfer_syntax(transfer_syntax)
    volume = np.asarray(phantom.volume)
    if volume.dtype != np.uint8 or volume.ndim != 3:
        raise ValueError(
            f"phantom.volume must be uint8 (S, D, W), got {volume.dtype} {volume.shape}"
        )
    order = _check_frame_order(frame_order, volume.shape[0])
    if ts == JPEG2000Lossless and min(volume.shape[1:]) < _J2K_MIN_SIZE:
        # pylibjpeg-openjpeg always encodes 6 DWT resolutions: 2**5 pixels per side at least.
        raise ValueError(f"JPEG 2000 encoding needs Rows and Columns >= {_J2K_MIN_SIZE}, "
                         f"got {volume.shape[1:]}")
    when = acquisition_datetime or _DEFAULT_ACQUISITION
    key = (study_instance_uid, series_number, phantom.seed, phantom.laterality, phantom.glaucoma,
           phantom.severity, volume.shape)
    meta = dict(
        patient_id=patient_id, patient_name=patient_name, patient_birth_date=patient_birth_date,
        patient_sex=patient_sex, study_instance_uid=study_instance_uid, study_id=study_id,
        accession_number=accession_number, series_number=series_number,
        series_description=series_description,
        series_instance_uid=series_instance_uid or _derived_uid(*key, "series"),
        frame_of_reference_uid=frame_of_reference_uid or _derived_uid(*key, "frame-of-reference"),
    )
    sop_uid = UID(sop_instance_uid or _derived_uid(*key, "instance"))

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = OPT_SOP_CLASS_UID
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = when.strftime("%Y%m%d")
    ds.InstanceCreationTime = when.strftime("%H%M%S")
    _patient_study_series(ds, phantom, meta, when)
    _image_modules(ds, phantom, when)
    _functional_groups(ds, phantom, order, when, _derived_uid(*key, "dimensions"))

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = OPT_SOP_CLASS_UID
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    # Storage position k holds spatial frame argsort(order)[k].
    stored = np.ascontiguousarray(volume[np.argsort(order)])
    if ts in _ENCAPSULATED:
        ds.compress(ts, stored, generate_instance_uid=False)
    else:
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = ts
    return ds


def write_sample_study(
    out_dir: str | Path,
    *,
    shape: tuple[int, int, int] = (64, 128, 96),
    seed: int = 2025,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[Path]:
    """Write the demo study: one patient, one study, two single-instance OPT series.

    ``OD_glaucoma.dcm`` holds a right eye with glaucomatous thinning (severity 0.8) and
    ``OS_normal.dcm`` a normal left eye. ``shape`` is the native (S, D, W) grid, on purpose not the
    model grid, so the app has to resample. All UIDs derive from ``seed``: the same seed writes
    identical files (for a given ``shape``).

    Returns:
        The paths written, OD first.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shape = tuple(int(n) for n in shape)
    study_uid = _derived_uid(seed, shape, "study")
    common = dict(
        patient_id=f"PHANTOM-{seed}", patient_name="Phantom^Demo", patient_birth_date="19600101",
        patient_sex="O", study_instance_uid=study_uid, study_id="1",
        accession_number=f"ACC{seed}"[:16], transfer_syntax=transfer_syntax,
    )
    eyes = [
        ("OD_glaucoma.dcm", make_phantom(seed, glaucoma=True, laterality="R", shape=shape,
                                         severity=0.8)),
        ("OS_normal.dcm", make_phantom(seed + 1, glaucoma=False, laterality="L", shape=shape)),
    ]
    paths = []
    for number, (name, phantom) in enumerate(eyes, start=1):
        ds = phantom_to_opt_dataset(
            phantom, **common, series_number=number,
            series_instance_uid=_derived_uid(seed, shape, name, "series"),
            sop_instance_uid=_derived_uid(seed, shape, name, "instance"),
            frame_of_reference_uid=_derived_uid(seed, shape, name, "frame-of-reference"),
        )
        path = out / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


_TRANSFER_SYNTAX_NAMES = {
    "explicit": ExplicitVRLittleEndian, "implicit": ImplicitVRLittleEndian,
    "deflated": DeflatedExplicitVRLittleEndian, "rle": RLELossless,
    "jpeg2000": JPEG2000Lossless, "jpegls": JPEGLSLossless,
}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: write the demo study and print the file paths."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_app.sample_study",
        description="Write a synthetic OCT study (OD glaucoma + OS normal) as DICOM OPT files.",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 128, 96),
                        metavar=("S", "D", "W"), help="native grid: B-scans, depth, A-scans")
    parser.add_argument("--transfer-syntax", choices=sorted(_TRANSFER_SYNTAX_NAMES),
                        default="explicit", help="lossless transfer syntax of the files")
    args = parser.parse_args(argv)
    paths = write_sample_study(args.out_dir, shape=tuple(args.shape), seed=args.seed,
                               transfer_syntax=_TRANSFER_SYNTAX_NAMES[args.transfer_syntax])
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
