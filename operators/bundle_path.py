"""Where the model bundle is (pure path logic, no torch import: the CLI checks it up front)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "model" / "bundles" / "aicnet3d_demo"
"""The bundled demo model, used when no model path is given."""

SDK_DEFAULT_MODEL_PATH = "models"
"""The App SDK's model path when neither ``-m`` nor ``HOLOSCAN_MODEL_PATH`` is set."""

_METADATA = Path("configs") / "metadata.json"


class BundleNotFoundError(FileNotFoundError):
    """No model bundle at the given path."""


def is_bundle(path: Path) -> bool:
    """A MONAI bundle folder: ``configs/metadata.json`` inside."""
    return (path / _METADATA).is_file()


def resolve_bundle(model_path: str | Path | None) -> Path:
    """The bundle folder to load.

    ``None``, or the SDK default ``models`` when no such folder exists, gives the demo bundle. A
    bundle folder is used as is; a folder holding exactly one bundle (the MAP layout
    ``/opt/holoscan/models/<name>/``) gives that bundle.

    Raises:
        BundleNotFoundError: nothing usable at ``model_path``.
    """
    if model_path is None or (
        str(model_path) == SDK_DEFAULT_MODEL_PATH and not Path(model_path).exists()
    ):
        path = DEFAULT_BUNDLE
    else:
        path = Path(model_path)
    if is_bundle(path):
        return path.resolve()
    if path.is_dir():
        bundles = sorted(p for p in path.iterdir() if p.is_dir() and is_bundle(p))
        if len(bundles) == 1:
            return bundles[0].resolve()
        if len(bundles) > 1:
            names = ", ".join(p.name for p in bundles)
            raise BundleNotFoundError(f"{path} holds several model bundles ({names}); pick one")
    raise BundleNotFoundError(f"no model bundle (configs/metadata.json) at {path}")
