"""Inference on one OCT volume: probability plus CARE and Grad-CAM maps on the input grid.

Pipeline (each step timed): canonicalise laterality (flip W for a left eye, D8) -> resample to the
bundle's grid -> normalise intensity -> ``AICNet3D.explain`` under ``torch.inference_mode`` ->
upsample both maps to the input grid, clip to [0, 1] and mirror them back for a left eye.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.bundle import BundleMetadata, load_bundle
from model.transforms import canonicalise, normalise_intensity, resample_tensor, restore_map

GLAUCOMA_LABEL = "glaucoma"
NORMAL_LABEL = "no glaucoma"


@dataclass(frozen=True)
class Prediction:
    """Result for one volume.

    Attributes:
        probability: P(glaucoma).
        label: ``"glaucoma"`` or ``"no glaucoma"`` (probability >= the bundle threshold).
        glaucoma: the label as a bool.
        care: float32 CARE map shaped like the input volume, input orientation, in [0, 1].
        gradcam: float32 Grad-CAM map, same geometry.
        model_name: bundle name.
        model_version: bundle version.
        timings: seconds for "preprocess", "inference", "postprocess".
    """

    probability: float
    label: str
    glaucoma: bool
    care: np.ndarray = field(repr=False)
    gradcam: np.ndarray = field(repr=False)
    model_name: str
    model_version: str
    timings: dict[str, float]


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Predictor:
    """Callable wrapper around a loaded bundle.

    Args:
        net: an :class:`model.network.AICNet3D` (put in eval mode here).
        metadata: the bundle metadata (grid, normalisation, threshold, name, version).
        device: torch device; None picks CUDA when available, else CPU.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        metadata: BundleMetadata,
        device: str | torch.device | None = None,
    ) -> None:
        self.device = _resolve_device(device)
        self.net = net.to(self.device).eval()
        self.metadata = metadata
        # BatchNorm/attention modules are stateless in eval, but one lock keeps concurrent callers
        # (e.g. a DICOM node's worker threads) from interleaving on one GPU stream.
        self._lock = threading.Lock()

    def prepare(self, volume: np.ndarray, laterality: str) -> torch.Tensor:
        """Canonicalise, resample to the bundle grid and normalise: ``(1, 1, *grid)`` on device."""
        if volume.ndim != 3:
            raise ValueError(f"volume must be 3-D (S, D, W), got shape {volume.shape}")
        canonical = canonicalise(volume, laterality)
        tensor = torch.from_numpy(np.ascontiguousarray(canonical, dtype=np.float32))
        tensor = tensor.to(self.device)[None, None]
        tensor = resample_tensor(tensor, self.metadata.input_grid)
        return normalise_intensity(tensor, self.metadata.intensity_normalisation)

    def infer(self, tensor: torch.Tensor) -> tuple[float, np.ndarray, np.ndarray]:
        """P(glaucoma), CARE and Grad-CAM (float32 numpy, model map grid, canonical orientation)."""
        with self._lock, torch.inference_mode():
            prob, care, gradcam = self.net.explain(tensor)
        return (
            float(prob[0]),
            care[0].float().cpu().numpy(),
            gradcam[0].float().cpu().numpy(),
        )

    def restore(self, map_small: np.ndarray, shape: tuple[int, ...], laterality: str) -> np.ndarray:
        """Upsample a map to the input grid ``shape`` and the input orientation, in [0, 1]."""
        return restore_map(map_small, shape, laterality)

    def __call__(self, volume: np.ndarray, laterality: str) -> Prediction:
        """Predict one ``(S, D, W)`` volume of the given laterality (``"R"`` or ``"L"``)."""
        t0 = time.perf_counter()
        tensor = self.prepare(volume, laterality)
        t1 = time.perf_counter()
        probability, care, gradcam = self.infer(tensor)
        t2 = time.perf_counter()
        care_full = self.restore(care, volume.shape, laterality)
        gradcam_full = self.restore(gradcam, volume.shape, laterality)
        t3 = time.perf_counter()
        glaucoma = probability >= self.metadata.threshold
        return Prediction(
            probability=probability,
            label=GLAUCOMA_LABEL if glaucoma else NORMAL_LABEL,
            glaucoma=bool(glaucoma),
            care=care_full,
            gradcam=gradcam_full,
            model_name=self.metadata.name,
            model_version=self.metadata.version,
            timings={"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": t3 - t2},
        )


@functools.lru_cache(maxsize=8)
def _cached_predictor(path: str, device: str, _stamp: tuple[int, ...]) -> Predictor:
    net, metadata = load_bundle(path, device="cpu")
    return Predictor(net, metadata, device)


def load_predictor(bundle_dir: str | Path, device: str | None = None) -> Predictor:
    """Load a bundle as a :class:`Predictor`; CPU by default, CUDA when available and not given.

    Cached on (resolved path, device, modification times of the weights and configs), so an app
    calling it per study loads the model once, and a re-trained bundle at the same path is reloaded.
    """
    root = Path(bundle_dir).resolve()
    dev = str(_resolve_device(device))
    files = ("models/model.pt", "configs/metadata.json", "configs/inference.json")
    try:
        stamp = tuple((root / f).stat().st_mtime_ns for f in files)
    except OSError:
        stamp = ()  # load_bundle raises the precise BundleError
    return _cached_predictor(str(root), dev, stamp)
