"""Stage the folders that `monai-deploy package` turns into the MONAI Application Package.

    python deploy/stage_map.py build/map [--torch cpu|cuda] [--bundle model/bundles/aicnet3d_demo]

writes::

    build/map/app/__main__.py        the MAP entry point (`python3 /opt/holoscan/app`)
    build/map/app/monai_app/ operators/ model/   the application's packages (no model weights)
    build/map/app/requirements.txt   the pinned runtime requirements (+ CPU torch index)
    build/map/models/<bundle>/       the model bundle (-> /opt/holoscan/models/<bundle>)

The MAP runs its app folder as a script, so the app needs its own ``__main__.py`` and every
package it imports beside it; the bundle goes to ``models/`` where ``operators.bundle_path``
finds it through HOLOSCAN_MODEL_PATH (a folder holding exactly one bundle).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("monai_app", "operators", "model")
DEFAULT_BUNDLE = REPO / "model" / "bundles" / "aicnet3d_demo"
#: pip option line that makes `torch==X` resolve to the CPU wheel (X+cpu) instead of the CUDA one.
CPU_TORCH_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"

ENTRY_POINT = '''"""MAP entry point: the MAP runs `python3 /opt/holoscan/app` (this folder)."""

import runpy

runpy.run_module("monai_app", run_name="__main__", alter_sys=True)
'''


def _ignore(directory: str, names: list[str]) -> set[str]:
    skipped = {n for n in names if n in ("__pycache__", "bundles") or n.endswith(".pyc")}
    return skipped


def stage(out: Path, bundle: Path = DEFAULT_BUNDLE, torch: str = "cpu") -> dict[str, Path]:
    """Write the staging folders; returns {"app": ..., "models": ..., "config": app.yaml}."""
    out = Path(out)
    if not (bundle / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"no model bundle (configs/metadata.json) at {bundle}")
    resolved = out.resolve()
    if resolved in (REPO, *REPO.parents) or resolved in (Path.home(), Path("/")):
        raise ValueError(f"refusing to replace {resolved}: stage into an empty or build folder")
    shutil.rmtree(out, ignore_errors=True)
    app = out / "app"
    app.mkdir(parents=True)
    (app / "__main__.py").write_text(ENTRY_POINT)
    for package in PACKAGES:
        shutil.copytree(REPO / package, app / package, ignore=_ignore)
    lines = (REPO / "requirements.txt").read_text().splitlines()
    if torch == "cpu":
        lines = [CPU_TORCH_INDEX, *lines]
    (app / "requirements.txt").write_text("\n".join(lines) + "\n")
    models = out / "models"
    shutil.copytree(bundle, models / bundle.name, ignore=_ignore)
    return {"app": app, "models": models, "config": REPO / "app.yaml"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--torch", choices=["cpu", "cuda"], default="cpu",
                        help="cpu: CPU-only torch wheel (smaller image); cuda: PyPI's CUDA wheel")
    args = parser.parse_args(argv)
    paths = stage(args.out, args.bundle, args.torch)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
