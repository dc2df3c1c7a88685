"""Find the OCT volumes in an input folder (pure pydicom, no SDK import: the CLI checks its input
with it before paying for the SDK and torch imports).

Every file under the folder is tried, recursively, in sorted path order. A file that pydicom
cannot read is skipped with a warning naming it; a readable DICOM file of another SOP class
(fundus photo, CT, SR, ...) is ignored. Symbolic links are never followed out of the folder:
linked directories are not descended into, and a linked file counts only if its target lies
inside the folder. Two files holding the same SOP Instance UID count once (the first in path
order).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import pydicom

from operators.oct_volume import OPT_SOP_CLASS_UID

logger = logging.getLogger(__name__)

_HEADER_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]


class NoOCTInputError(RuntimeError):
    """The input holds no Ophthalmic Tomography Image instance; nothing is processed."""


def candidate_files(input_path: str | Path) -> list[Path]:
    """Regular files under ``input_path`` (or the file itself), sorted, never leaving the folder.

    Raises:
        FileNotFoundError: ``input_path`` does not exist.
    """
    root = Path(input_path)
    if not root.exists():
        raise FileNotFoundError(f"input {root} does not exist")
    if root.is_file():
        return [root]
    real_root = root.resolve()
    files = []
    for folder, subfolders, names in os.walk(root, followlinks=False):
        subfolders.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(real_root):
                    logger.warning("Skipping %s: symbolic link out of the input folder", path)
                    continue
                if not target.is_file():
                    continue
            elif not path.is_file():
                continue
            files.append(path)
    return files


def find_oct_files(input_path: str | Path) -> list[Path]:
    """The OPT files under ``input_path``, one per SOP Instance UID, in path order.

    Unreadable files are skipped with a warning; other SOP classes are ignored (logged at debug).

    Raises:
        FileNotFoundError: ``input_path`` does not exist.
    """
    found: list[Path] = []
    seen: dict[str, Path] = {}
    for path in candidate_files(input_path):
        try:
            with warnings.catch_warnings():  # pydicom's parser notes: the warning below says it
                warnings.simplefilter("ignore")
                header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
            meta = getattr(header, "file_meta", None)
            sop_class = str(
                header.get("SOPClassUID")  # a DICOMDIR has it in its file meta only
                or (meta.get("MediaStorageSOPClassUID", "") if meta is not None else "")
            )
            sop_instance = str(header.get("SOPInstanceUID", ""))
        except Exception as exc:  # pydicom raises many types on non-DICOM or broken files
            logger.warning("Skipping %s: not a readable DICOM file (%s)", path, exc)
            continue
        if not sop_class:
            logger.warning("Skipping %s: no SOPClassUID, not a readable DICOM instance", path)
            continue
        if sop_class != OPT_SOP_CLASS_UID:
            logger.debug("Ignoring %s: SOP class %s is not OPT", path, sop_class or "(none)")
            continue
        key = sop_instance or str(path)  # a missing UID is reported later, per file
        if key in seen:
            logger.warning("Skipping %s: same SOPInstanceUID as %s", path, seen[key])
            continue
        seen[key] = path
        found.append(path)
    return found


def require_oct_files(input_path: str | Path) -> list[Path]:
    """:func:`find_oct_files`, raising :class:`NoOCTInputError` when it finds nothing."""
    files = find_oct_files(input_path)
    if not files:
        raise NoOCTInputError(
            f"no OCT volume (DICOM Ophthalmic Tomography Image, SOP Class {OPT_SOP_CLASS_UID}) "
            f"found in {input_path}"
        )
    return files
