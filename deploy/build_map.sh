#!/usr/bin/env bash
# Build the MONAI Application Package (MAP) with holoscan-cli 4.2.0's `monai-deploy package`.
#
#   make map                       # or: bash deploy/build_map.sh
#   TAG=oct-glaucoma:0.1.0 TORCH=cpu SOURCE=artifacts.json bash deploy/build_map.sh
#
# Needs Docker with buildx and internet access (nvcr.io base image, apt, PyPI). Without Docker the
# script stages the build folders and stops; tests/test_packaging.py runs the packager up to the
# Docker build (Dockerfile, app.json, pkg.json) in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
TAG=${TAG:-oct-glaucoma:0.1.0}
TORCH=${TORCH:-cpu}          # cpu: CPU torch wheel; cuda: PyPI's CUDA wheel (larger image)
STAGE=${STAGE:-build/map}
BUNDLE=${BUNDLE:-model/bundles/aicnet3d_demo}

"$PY" deploy/stage_map.py "$STAGE" --torch "$TORCH" --bundle "$BUNDLE"

if ! docker buildx version >/dev/null 2>&1; then
  echo "docker buildx is not available: staged $STAGE but cannot build the image." >&2
  echo "The packaging dry run (no Docker) is: $PY -m pytest tests/test_packaging.py" >&2
  exit 1
fi

args=(package "$STAGE/app" -c app.yaml -m "$STAGE/models" -t "$TAG" --platform x86_64 -l INFO)
# Offline or pinned artifact sources: a local copy of holoscan-cli's releases/4.2.0/artifacts.json.
if [ -n "${SOURCE:-}" ]; then args+=(--source "$SOURCE"); fi
# The packager of the same environment as $PY (the venv's), else the one on PATH.
packager="$(dirname "$PY")/monai-deploy"
[ -x "$packager" ] || packager=monai-deploy
"$packager" "${args[@]}"
echo "Built ${TAG%%:*}-x64-workstation-dgpu-linux-amd64:${TAG##*:}"
