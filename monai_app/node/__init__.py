"""DICOM node: receives OCT series from a PACS, runs the glaucoma pipeline, sends results back.

Run it with ``python -m monai_app.node --config node.yaml`` (see ``deploy/node.example.yaml``).
"""

from monai_app.node.config import NodeConfig, load_config
from monai_app.node.service import DicomNode

__all__ = ["DicomNode", "NodeConfig", "load_config"]
