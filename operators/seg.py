"""FRACTIONAL Segmentation of one OCT volume's explanation maps (CARE and Grad-CAM).

A Segmentation IOD (PS3.3 A.51) with Segmentation Type FRACTIONAL, Fractional Type PROBABILITY
and 8-bit values (max 255), on the source OPT's frame geometry: one SEG frame per source B-scan
and segment, the same Frame of Reference, per-frame Derivation Image references to the source
frames, so a viewer overlays the heat-maps on the B-scans.

Segments (Segmented Property Category DCM 130401 "Visual explanation"):

1. CARE, the channel attention representation: type DCM 130404 "Saliency";
2. Grad-CAM: type DCM 130403 "Gradient-weighted class activation".

Both with Segment Algorithm Type AUTOMATIC and Algorithm Family DCM 123110 Artificial Intelligence.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
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

VISUAL_EXPLANATION = Code("130401", "DCM", "Visual explanation")
SALIENCY = Code("130404", "DCM", "Saliency")
GRADCAM = Code("130403", "DCM", "Gradient-weighted class activation")
RETINA = Code("5665001", "SCT", "Retina")

SEGMENT_LABELS = ("CARE", "Grad-CAM")
"""Segment labels, in segment-number order (1, 2)."""

SERIES_DESCRIPTION = "Glaucoma AI heat-maps (SEG)"

# CIELab display colours: CARE orange, Grad-CAM magenta (distinct on greyscale B-scans).
_COLOURS = ((70.0, 40.0, 70.0), (55.0, 80.0, -30.0))


def maps_in_storage_order(volume: OCTVolume, *maps: np.ndarray) -> np.ndarray:
    """Stack (S, D, W) maps in spatial order into a (frames, rows, columns, n) storage-order array.

    SEG frame ``k`` must lie on source frame ``k``; spatially sorted frame ``i`` is stored at
    ``volume.frame_order[i]``.
    """
    stored = np.empty((*volume.voxels.shape, len(maps)), dtype=np.float32)
    for index, values in enumerate(maps):
        if np.shape(values) != volume.voxels.shape:
            raise ValueError(f"map shaped {np.shape(values)}, volume {volume.voxels.shape}")
        # Filled in place: a large cube's float maps are hundreds of MB each.
        stored[volume.frame_order, ..., index] = values
        np.clip(stored[..., index], 0.0, 1.0, out=stored[..., index])
    return stored


def build_seg(
    volume: OCTVolume,
    prediction: object,
    info: AlgorithmInfo,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.seg.Segmentation:
    """Build the FRACTIONAL SEG of one assessable volume.

    Args:
        volume: the source OCT volume.
        prediction: a ``model.predictor.Prediction``; its ``care`` and ``gradcam`` maps are
            (S, D, W) in [0, 1] on the volume's grid and orientation.
        info: algorithm and application identity.
        series_instance_uid: defaults to a UID derived from the source and ``info``.
        sop_instance_uid: likewise.

    Returns:
        The Segmentation (a pydicom Dataset subclass), not yet written to disk.
    """
    if volume.positions_mm is None or not volume.frame_of_reference_uid:
        # highdicom places each SEG frame with the source frame's Plane Position (Patient).
        raise ValueError(
            "the source OPT has no Frame of Reference or no per-frame plane positions: "
            "a SEG cannot be placed on its B-scans"
        )
    pixels = maps_in_storage_order(volume, prediction.care, prediction.gradcam)  # type: ignore[attr-defined]
    source = volume.dataset
    source_uid = volume.sop_instance_uid
    algorithm = hd.AlgorithmIdentificationSequence(
        name=info.model_name,
        family=codes.DCM.ArtificialIntelligence,
        version=info.model_version,
        source=info.manufacturer,
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=VISUAL_EXPLANATION,
            segmented_property_type=property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=info.output_uid(source_uid, f"seg-{label}", "tracking"),
            tracking_id=f"{label} map",
            anatomic_regions=[RETINA],
            display_color=hd.color.CIELabColor(*colour),
        )
        for number, (label, property_type, colour) in enumerate(
            zip(SEGMENT_LABELS, (SALIENCY, GRADCAM), _COLOURS, strict=True), start=1
        )
    ]
    seg = hd.seg.Segmentation(
        source_images=[tolerant_source(source)],
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid or info.output_uid(source_uid, "seg", "series"),
        series_number=output_series_number(source.get("SeriesNumber"), "seg"),
        sop_instance_uid=sop_instance_uid or info.output_uid(source_uid, "seg", "instance"),
        instance_number=1,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=255,
        content_label="GLAUCOMA_MAPS",
        content_description="CARE and Grad-CAM heat-maps of the glaucoma classifier",
        series_description=SERIES_DESCRIPTION,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        specific_character_set=output_character_set(source),
        **info.equipment(),
    )
    restore_patient_study(seg, source)
    return seg
