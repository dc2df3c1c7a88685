"""TID 1500 Measurement Report (Comprehensive 3D SR) of one OCT volume's glaucoma result.

Content tree (PS3.16 TID 1500 > TID 1501 Measurement Group), one group per volume:

- Tracking Identifier (TID 4108) and Algorithm Identification (TID 4019: model name, model
  version, application and threshold as parameters, family DCM 123110 Artificial Intelligence);
- Finding Site: SCT 81016008 Optic nerve head with laterality SCT 24028007 Right / 7771000 Left;
- Source Image for Measurement Group: the OPT instance;
- Finding (DCM 121071) = SCT 23986001 Glaucoma;
- Qualitative Evaluation Glaucoma = SCT 52101004 Present / 272519000 Absent, or SCT 373068000
  Undetermined for a volume that could not be assessed;
- Measurement "Probability" (DCM 122157), UCUM "1": P(glaucoma). DCM 122157 is used instead of
  DCM 111012 "Certainty of Finding" because the value is the probability of glaucoma whatever the
  stated finding; a certainty of an "Absent" finding would read inverted;
- for a volume that could not be assessed, no probability, and a TEXT Comment (DCM 121106)
  holding the reason.

The document is Explicit VR Little Endian, in the source's patient and study, in its own series.
"""

from __future__ import annotations

import datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian

from operators.equipment import (
    AlgorithmInfo,
    output_character_set,
    output_series_number,
    restore_patient_study,
    tolerant_source,
)
from operators.oct_volume import OCTVolume

GLAUCOMA = Code("23986001", "SCT", "Glaucoma")
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("272519000", "SCT", "Absent")
UNDETERMINED = Code("373068000", "SCT", "Undetermined")
OPTIC_NERVE_HEAD = Code("81016008", "SCT", "Optic nerve head")
RIGHT = Code("24028007", "SCT", "Right")
LEFT = Code("7771000", "SCT", "Left")
PROBABILITY = Code("122157", "DCM", "Probability")
COMMENT = Code("121106", "DCM", "Comment")
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")
UNITLESS = Code("1", "UCUM", "no units")

SERIES_DESCRIPTION = "Glaucoma AI result (SR)"


def build_sr(
    source: OCTVolume | Dataset,
    outcome: object,
    info: AlgorithmInfo,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 SR of one volume.

    Args:
        source: the OCT volume, or the OPT Dataset alone when the volume could not be read.
        outcome: a ``model.predictor.Prediction`` (probability, label, glaucoma), or the
            "not assessable" reason as a string.
        info: algorithm and application identity.
        series_instance_uid: defaults to a UID derived from the source and ``info``.
        sop_instance_uid: likewise.

    Returns:
        The SR document (a pydicom Dataset subclass), not yet written to disk.
    """
    dataset = source.dataset if isinstance(source, OCTVolume) else source
    source_uid = str(dataset.SOPInstanceUID)
    laterality = _laterality(source)
    group = _measurement_group(dataset, outcome, info, laterality)
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(info),
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=[group],
        title=codes.cid7021.ImagingMeasurementReport,
    )
    now = datetime.datetime.now()
    sr = hd.sr.Comprehensive3DSR(
        evidence=[tolerant_source(dataset)],
        content=report[0],
        series_instance_uid=series_instance_uid or info.output_uid(source_uid, "sr", "series"),
        series_number=output_series_number(dataset.get("SeriesNumber"), "sr"),
        sop_instance_uid=sop_instance_uid or info.output_uid(source_uid, "sr", "instance"),
        instance_number=1,
        is_complete=True,
        is_final=False,  # an algorithm's result, not verified by a person
        is_verified=False,
        series_description=SERIES_DESCRIPTION,
        content_date=now.date(),
        content_time=now.time(),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        specific_character_set=output_character_set(dataset),
        **info.equipment(),
    )
    restore_patient_study(sr, dataset)
    return sr


def _laterality(source: OCTVolume | Dataset) -> str | None:
    if isinstance(source, OCTVolume):
        return source.laterality
    value = str(source.get("ImageLaterality", "") or "").upper()
    return value if value in ("R", "L") else None


def _observation_context(info: AlgorithmInfo) -> hd.sr.ObservationContext:
    """Device observer (TID 1004): the application."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=info.output_uid("device", info.app_name, "observer"),
        name=info.app_name,
        manufacturer_name=info.manufacturer,
        model_name=f"{info.model_name} {info.model_version}"[:64],
        serial_number=info.device_serial_number,
    )
    return hd.sr.ObservationContext(
        observer_person_context=None,
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device,
            observer_identifying_attributes=device,
        ),
    )


def _measurement_group(
    dataset: Dataset, outcome: object, info: AlgorithmInfo, laterality: str | None
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    assessable = not isinstance(outcome, str)
    source_uid = str(dataset.SOPInstanceUID)
    side = {"R": RIGHT, "L": LEFT}.get(laterality or "")
    measurements = None
    if assessable:
        value = PRESENT if bool(outcome.glaucoma) else ABSENT  # type: ignore[attr-defined]
        measurements = [
            hd.sr.Measurement(
                name=PROBABILITY,
                value=round(float(outcome.probability), 6),  # type: ignore[attr-defined]
                unit=UNITLESS,
            )
        ]
    else:
        value = UNDETERMINED
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=info.output_uid(source_uid, "sr", "tracking"),
            identifier=f"Glaucoma assessment, {_eye_name(laterality)}",
        ),
        finding_type=GLAUCOMA,
        algorithm_id=hd.sr.AlgorithmIdentification(
            name=info.model_name,
            version=info.model_version,
            parameters=[
                f"application: {info.app_name} {info.app_version}",
                f"decision threshold: {info.threshold:g}",
            ],
            family=codes.DCM.ArtificialIntelligence,
            manufacturer=info.manufacturer,
        ),
        finding_sites=[hd.sr.FindingSite(anatomic_location=OPTIC_NERVE_HEAD, laterality=side)],
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=GLAUCOMA, value=value)],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(dataset)],
    )
    if not assessable:
        reason = hd.sr.TextContentItem(
            name=COMMENT,
            value=f"Not assessable: {outcome}"[:1024],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        group[0].ContentSequence.append(reason)
    return group


def _eye_name(laterality: str | None) -> str:
    return {"R": "right eye (OD)", "L": "left eye (OS)"}.get(laterality or "", "unknown eye")
