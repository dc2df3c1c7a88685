"""MONAI Bundle save/load for AI-CNet3D.

Layout (MONAI Bundle specification)::

    DIR/configs/metadata.json   description, versions, network_data_format (input grid, intensity
                                normalisation, laterality canonicalisation, outputs), intended use,
                                training data, and an "aicnet3d" section (threshold, consistency,
                                training, evaluation, figures)
    DIR/configs/inference.json  MONAI config: network_def (_target_ + AICNet3D kwargs), checkpoint
    DIR/models/model.pt         the network's state_dict
    DIR/docs/README.md          model card (+ evaluation figures)

Each fact lives in one file: the network's kwargs in inference.json ``network_def``, everything else
in metadata.json. The loader parses both as plain JSON (no ``$`` expressions are evaluated, and
monai itself is not imported), checks every key it needs and raises :class:`BundleError` naming the
file and key otherwise. ``monai.bundle.ConfigParser`` reads the same files (tested).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from model.transforms import DEFAULT_NORMALISATION, validate_normalisation

METADATA_FILE = Path("configs/metadata.json")
INFERENCE_FILE = Path("configs/inference.json")
WEIGHTS_FILE = Path("models/model.pt")
NETWORK_TARGET = "model.network.AICNet3D"
SCHEMA_URL = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
    "0.8.1/meta_schema_20240725.json"
)
LATERALITY_CANONICALISATION = (
    "right-eye (OD) layout: a left eye (OS, ImageLaterality L) is mirrored along W before the "
    "network; output maps are mirrored back"
)
DEFAULT_INTENDED_USE = (
    "Research demonstration of the AI-CNet3D re-implementation. NOT for clinical use: not a "
    "medical device, not validated on patient data."
)
DEFAULT_TRAINING_DATA = (
    "Synthetic OCT phantoms only (model.phantoms); never trained or validated on patient data."
)


class BundleError(ValueError):
    """A bundle folder is missing or invalid; the message names the file and key."""


@dataclass(frozen=True)
class BundleMetadata:
    """What a predictor needs to know about a trained AI-CNet3D bundle.

    Attributes:
        name: model name (also the DICOM algorithm name).
        version: model version (semantic version string).
        input_grid: model input grid ``(S, D, W)``; every volume is resampled to it.
        network_kwargs: :class:`model.network.AICNet3D` constructor arguments.
        intensity_normalisation: spec for :func:`model.transforms.normalise_intensity`.
        threshold: P(glaucoma) at or above which the label is "glaucoma".
        intended_use: intended-use statement.
        training_data: description of the training data.
        description: longer model description.
        authors: authors.
        copyright: copyright line.
        changelog: version -> change note.
        consistency: stage-2 setup, e.g. ``{"criterion": "mse", "weight": 0.75}``; None for a
            classification-only (stage-1) model.
        training: training settings (seed, epochs, data, ...), free-form JSON.
        evaluation: held-out evaluation summary, free-form JSON.
        figures: bundle-relative paths of evaluation figures (e.g. ``docs/evaluation.png``).
        monai_version: MONAI version at save time (filled by :func:`save_bundle` when empty).
        pytorch_version: PyTorch version at save time (likewise).
    """

    name: str
    version: str
    input_grid: tuple[int, int, int]
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    intensity_normalisation: dict[str, Any] = field(
        default_factory=lambda: dict(DEFAULT_NORMALISATION)
    )
    threshold: float = 0.5
    intended_use: str = DEFAULT_INTENDED_USE
    training_data: str = DEFAULT_TRAINING_DATA
    description: str = (
        "AI-CNet3D: 3D CNN with hemiretinal cross-attention classifying glaucoma from OCT volumes, "
        "with CARE (channel attention representation) and Grad-CAM explanation maps."
    )
    authors: str = "AI-CNet3D MONAI Deploy re-implementation contributors"
    copyright: str = "Copyright (c) AI-CNet3D MONAI Deploy re-implementation contributors"
    changelog: dict[str, str] = field(default_factory=dict)
    consistency: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    figures: tuple[str, ...] = ()
    monai_version: str = ""
    pytorch_version: str = ""

    @property
    def map_grid(self) -> tuple[int, int, int]:
        """Grid of the CARE / Grad-CAM maps (input grid / 2^(1 + number of attention blocks))."""
        factor = 2 ** (1 + len(self.network_kwargs.get("attention_after", (2, 4))))
        return tuple(g // factor for g in self.input_grid)  # type: ignore[return-value]

    def to_metadata_json(self) -> dict[str, Any]:
        """The ``configs/metadata.json`` document."""
        s, d, w = self.input_grid
        map_shape = list(self.map_grid)
        map_format = {
            "type": "image",
            "format": "heatmap",
            "num_channels": 1,
            "spatial_shape": map_shape,
            "dtype": "float32",
            "value_range": [0, 1],
            "is_patch_data": False,
            "channel_def": {},
            "note": "restored to the input grid and orientation by the predictor",
        }
        return {
            "schema": SCHEMA_URL,
            "name": self.name,
            "version": self.version,
            "changelog": self.changelog or {self.version: "initial version"},
            "monai_version": self.monai_version,
            "pytorch_version": self.pytorch_version,
            "numpy_version": _version("numpy"),
            "required_packages_version": {},
            "task": "Glaucoma classification of 3-D OCT volumes with CARE and Grad-CAM maps",
            "description": self.description,
            "authors": self.authors,
            "copyright": self.copyright,
            "intended_use": self.intended_use,
            "training_data": self.training_data,
            "data_type": "numpy (S, D, W) OCT volume; DICOM OPT via the MONAI Deploy app",
            "image_classes": "single-channel OCT intensity, (S, D, W) = (B-scans, depth, A-scans)",
            "label_classes": "0 = no glaucoma, 1 = glaucoma",
            "pred_classes": "0 = no glaucoma, 1 = glaucoma",
            "references": [
                "Kenia, Li, Srivastava, Thakoor. AI-CNet3D. MELBA 3 (2025) 402-424, "
                "doi:10.59275/j.melba.2025-8d4c"
            ],
            "network_data_format": {
                "inputs": {
                    "image": {
                        "type": "image",
                        "format": "magnitude",
                        "modality": "OCT",
                        "num_channels": 1,
                        "spatial_shape": [s, d, w],
                        "dtype": "float32",
                        "value_range": [0, 255],
                        "is_patch_data": False,
                        "channel_def": {"0": "image"},
                        "axes": ["S (B-scan, superior to inferior)", "D (axial depth)",
                                 "W (lateral A-scan)"],
                        "resampling": "trilinear to spatial_shape",
                        "intensity_normalisation": self.intensity_normalisation,
                        "laterality_canonicalisation": LATERALITY_CANONICALISATION,
                    }
                },
                "outputs": {
                    "pred": {
                        "type": "probabilities",
                        "format": "classes",
                        "num_channels": 2,
                        "spatial_shape": [2],
                        "dtype": "float32",
                        "value_range": [0, 1],
                        "is_patch_data": False,
                        "channel_def": {"0": "no glaucoma", "1": "glaucoma"},
                    },
                    "care": {**map_format, "channel_def": {"0": "CARE"}},
                    "gradcam": {**map_format, "channel_def": {"0": "Grad-CAM"}},
                },
            },
            "aicnet3d": {
                "threshold": self.threshold,
                "consistency": self.consistency,
                "training": self.training,
                "evaluation": self.evaluation,
                "figures": list(self.figures),
            },
        }

    def to_inference_json(self) -> dict[str, Any]:
        """The ``configs/inference.json`` MONAI config (network definition and checkpoint)."""
        return {
            "imports": ["$import torch", "$import model.predictor"],
            "bundle_root": ".",
            "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
            "network_def": {"_target_": NETWORK_TARGET, **_jsonable(self.network_kwargs)},
            "network": "$@network_def.to(@device)",
            "checkpoint": "$@bundle_root + '/models/model.pt'",
            "initialize": [
                "$@network.load_state_dict(torch.load(@checkpoint, map_location=@device, "
                "weights_only=True))",
                "$@network.eval()",
            ],
            "predictor": "$model.predictor.load_predictor(@bundle_root)",
        }


def _version(package: str) -> str:
    try:
        return package_version(package)
    except PackageNotFoundError:
        return "unknown"


def _jsonable(value: Any) -> Any:
    """Tuples -> lists, recursively (JSON has no tuples)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _get(doc: Mapping[str, Any], dotted: str, where: Path, kind: type | tuple[type, ...]) -> Any:
    node: Any = doc
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            raise BundleError(f"{where}: missing key '{dotted}'")
        node = node[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(node, kinds) or (isinstance(node, bool) and bool not in kinds):
        raise BundleError(f"{where}: key '{dotted}' must be {kind}, got {type(node).__name__}")
    return node


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"bundle file {path} is missing")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise BundleError(f"{path}: expected a JSON object")
    return doc


def _grid(value: Any, where: Path, key: str) -> tuple[int, int, int]:
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise BundleError(f"{where}: key '{key}' must be three positive integers, got {value!r}")
    return tuple(value)  # type: ignore[return-value]


def read_metadata(bundle_dir: str | Path) -> BundleMetadata:
    """Read and validate a bundle's configs (no weights, no torch import)."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(f"bundle folder {root} does not exist")
    meta_path, infer_path = root / METADATA_FILE, root / INFERENCE_FILE
    meta, infer = _read_json(meta_path), _read_json(infer_path)
    image_key = "network_data_format.inputs.image"
    grid = _grid(_get(meta, f"{image_key}.spatial_shape", meta_path, list), meta_path,
                 f"{image_key}.spatial_shape")
    norm = _get(meta, f"{image_key}.intensity_normalisation", meta_path, dict)
    try:
        norm = validate_normalisation(norm)
    except ValueError as exc:
        raise BundleError(f"{meta_path}: key '{image_key}.intensity_normalisation': {exc}") from exc
    section = _get(meta, "aicnet3d", meta_path, dict)
    threshold = float(_get(meta, "aicnet3d.threshold", meta_path, (int, float)))
    if not 0.0 < threshold < 1.0:
        raise BundleError(
            f"{meta_path}: key 'aicnet3d.threshold' must lie in (0, 1), got {threshold}"
        )
    consistency = section.get("consistency")
    if consistency is not None and not isinstance(consistency, dict):
        raise BundleError(f"{meta_path}: key 'aicnet3d.consistency' must be an object or null")

    network_def = dict(_get(infer, "network_def", infer_path, dict))
    target = network_def.pop("_target_", None)
    if target != NETWORK_TARGET:
        raise BundleError(
            f"{infer_path}: key 'network_def._target_' must be '{NETWORK_TARGET}', got {target!r}"
        )
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in network_def.items()}
    if "input_size" in kwargs and tuple(kwargs["input_size"]) != grid:
        raise BundleError(
            f"{infer_path}: key 'network_def.input_size' {list(kwargs['input_size'])} differs from "
            f"{meta_path.name} '{image_key}.spatial_shape' {list(grid)}"
        )
    factor = 2 ** (1 + len(kwargs.get("attention_after", (2, 4))))
    if any(g % factor for g in grid):
        raise BundleError(f"{meta_path}: key '{image_key}.spatial_shape' {list(grid)} must divide "
                          f"by {factor}")
    return BundleMetadata(
        name=_get(meta, "name", meta_path, str),
        version=_get(meta, "version", meta_path, str),
        input_grid=grid,
        network_kwargs=kwargs,
        intensity_normalisation=norm,
        threshold=threshold,
        intended_use=_get(meta, "intended_use", meta_path, str),
        training_data=_get(meta, "training_data", meta_path, str),
        description=str(meta.get("description", "")),
        authors=str(meta.get("authors", "")),
        copyright=str(meta.get("copyright", "")),
        changelog=dict(meta.get("changelog", {})),
        consistency=consistency,
        training=dict(section.get("training") or {}),
        evaluation=dict(section.get("evaluation") or {}),
        figures=tuple(section.get("figures") or ()),
        monai_version=str(meta.get("monai_version", "")),
        pytorch_version=str(meta.get("pytorch_version", "")),
    )


def _evaluation_table(value: Any) -> list[str]:
    """Markdown for one evaluation entry: a metric table when it has ``metrics``, else JSON."""
    if not isinstance(value, Mapping) or not isinstance(value.get("metrics"), Mapping):
        return ["```json", json.dumps(value, indent=1), "```"]
    rows = [f"n = {value.get('n', '?')}", "", "| metric | value | 95 % CI |", "|---|---|---|"]
    for name, entry in value["metrics"].items():
        lo, hi = entry.get("ci95", (float("nan"), float("nan")))
        rows.append(f"| {name} | {entry['value']:.3f} | {lo:.3f}–{hi:.3f} |")
    for name, entry in (value.get("interpretability") or {}).items():
        if isinstance(entry, float):
            rows.append(f"| {name} | {entry:.3f} | |")
    return rows


def _model_card(metadata: BundleMetadata) -> str:
    lines = [
        f"# {metadata.name} {metadata.version}",
        "",
        metadata.description,
        "",
        f"**Intended use.** {metadata.intended_use}",
        "",
        f"**Training data.** {metadata.training_data}",
        "",
        f"Input: one OCT volume (S, D, W), resampled to {list(metadata.input_grid)}; intensity "
        f"normalisation {json.dumps(metadata.intensity_normalisation)}; "
        f"{LATERALITY_CANONICALISATION}.",
        "",
        f"Output: P(glaucoma) (label 'glaucoma' at >= {metadata.threshold}), CARE and Grad-CAM "
        f"maps on {list(metadata.map_grid)}, restored to the input grid.",
        "",
        f"Network: `{NETWORK_TARGET}` {json.dumps(_jsonable(metadata.network_kwargs))}",
        f"Consistency fine-tuning: {json.dumps(metadata.consistency)}",
    ]
    if metadata.evaluation:
        lines += ["", "## Evaluation"]
        for key, value in metadata.evaluation.items():
            lines += ["", f"### {key}", ""]
            lines += _evaluation_table(value)
    lines += [f"![{Path(f).stem}]({Path(f).relative_to('docs')})" for f in metadata.figures
              if f.startswith("docs/")]
    return "\n".join(lines) + "\n"


def save_bundle(
    net: Any,
    metadata: BundleMetadata,
    bundle_dir: str | Path,
    *,
    figures: Sequence[str | Path] = (),
) -> Path:
    """Write ``net`` (an AICNet3D) and ``metadata`` as a MONAI bundle under ``bundle_dir``.

    ``figures`` are copied to ``docs/`` and listed in the metadata. Existing config and weight files
    are overwritten. Returns the bundle folder.
    """
    import torch

    root = Path(bundle_dir)
    for sub in ("configs", "models", "docs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    copied = list(metadata.figures)
    for fig in figures:
        fig = Path(fig)
        shutil.copyfile(fig, root / "docs" / fig.name)
        if f"docs/{fig.name}" not in copied:
            copied.append(f"docs/{fig.name}")
    metadata = replace(
        metadata,
        figures=tuple(copied),
        network_kwargs={**metadata.network_kwargs, "input_size": tuple(metadata.input_grid)},
        monai_version=metadata.monai_version or _version("monai"),
        pytorch_version=metadata.pytorch_version or torch.__version__.split("+")[0],
    )
    validate_normalisation(metadata.intensity_normalisation)
    (root / METADATA_FILE).write_text(json.dumps(metadata.to_metadata_json(), indent=2) + "\n")
    (root / INFERENCE_FILE).write_text(json.dumps(metadata.to_inference_json(), indent=2) + "\n")
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    torch.save(state, root / WEIGHTS_FILE)
    (root / "docs" / "README.md").write_text(_model_card(metadata))
    read_metadata(root)  # what we wrote must load
    return root


def load_bundle(bundle_dir: str | Path, device: str | Any = "cpu") -> tuple[Any, BundleMetadata]:
    """Load a bundle: ``(AICNet3D in eval mode on device, BundleMetadata)``.

    Raises:
        BundleError: missing/invalid file or key, or weights that do not fit the network.
    """
    import torch

    from model.network import AICNet3D

    root = Path(bundle_dir)
    metadata = read_metadata(root)
    weights = root / WEIGHTS_FILE
    if not weights.is_file():
        raise BundleError(f"bundle file {weights} is missing")
    try:
        net = AICNet3D(**metadata.network_kwargs)
    except (TypeError, ValueError) as exc:
        raise BundleError(
            f"{root / INFERENCE_FILE}: invalid 'network_def' arguments: {exc}"
        ) from exc
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise BundleError(f"{weights}: cannot read weights ({exc})") from exc
    if not isinstance(state, Mapping):
        raise BundleError(f"{weights}: expected a state_dict, got {type(state).__name__}")
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise BundleError(f"{weights}: weights do not fit network_def: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise BundleError(
            f"{weights}: weights do not fit network_def: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return net.to(device).eval(), metadata


def metadata_dict(metadata: BundleMetadata) -> dict[str, Any]:
    """Plain-dict view of ``metadata`` (for logs and reports)."""
    return _jsonable(asdict(metadata))
