"""AI-CNet3D model package: network, phantoms, training, bundle and predictor.

Names are imported lazily on first access (PEP 562), so ``import model`` stays cheap and does not
pull in torch until a name that needs it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AICNet3D": "network",
    "AICNet3DOutput": "network",
    "Prediction": "predictor",
    "Predictor": "predictor",
    "load_predictor": "predictor",
    "BundleMetadata": "bundle",
    "BundleError": "bundle",
    "save_bundle": "bundle",
    "load_bundle": "bundle",
    "Phantom": "phantoms",
    "make_phantom": "phantoms",
    "phantom_set": "phantoms",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from model.bundle import BundleError, BundleMetadata, load_bundle, save_bundle  # noqa: F401
    from model.network import AICNet3D, AICNet3DOutput  # noqa: F401
    from model.phantoms import Phantom, make_phantom, phantom_set  # noqa: F401
    from model.predictor import Prediction, Predictor, load_predictor  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
