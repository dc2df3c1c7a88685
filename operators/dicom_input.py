"""Find the OCT volumes in an input folder (pure pydicom, no SDK import: the CLI checks its input
with it before paying for the SDK and torch imports).

Every file under the folder is tried, recursively, in sorted path order. A file that is not
processed is reported with its reason (a :class:`SkippedFile`, logged and listed under
``skipped`` in results.json): not DICOM or unreadable, another SOP class (fundus photo, CT, SR,
...), a duplicate instance, not a regular file. Symbolic links are never followed out of the
folder: linked directories are not descended into, and a linked file counts only if its target
lies inside the folder. Two files holding the same SOP Instance UID count once: the larger file
(a truncated copy is the smaller), the first in path order on a tie.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from operators.oct_volume import OPT_SOP_CLASS_UID

logger = logging.getLogger(__name__)

_HEADER_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]

OUT_OF_FOLDER = "symbolic link out of the input folder"
"""Reason given for a link whose target lies outside the input folder (never read)."""


class NoOCTInputError(RuntimeError):
    """The input holds no Ophthalmic Tomography Image instance; nothing is processed."""


@dataclass(frozen=True)
class SkippedFile:
    """A file under the input that is not processed, and why."""

    path: Path
    reason: str


@dataclass
class InputScan:
    """What :func:`scan_input` found: the OPT files to process and the files skipped."""

    root: Path
    files: list[Path] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    def skipped_entries(self) -> list[dict[str, str]]:
        """The ``skipped`` list of results.json: ``{"source_file", "reason"}``, paths relative
        to the input folder."""
        return [
            {"source_file": _relative(s.path, self.root), "reason": s.reason} for s in self.skipped
        ]


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path``, all symbolic links resolved, lies inside ``folder`` (resolved too)."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def _walk(root: Path) -> Iterator[tuple[Path, str | None]]:
    """(path, None) for each regular file under ``root``, (path, reason) for what is passed over."""
    real_root = root.resolve()
    for folder, subfolders, names in os.walk(root, followlinks=False):
        for name in sorted(subfolders):
            linked = Path(folder) / name
            # Not descended into either way; one pointing inside is reached by its real path.
            if linked.is_symlink() and not linked.resolve().is_relative_to(real_root):
                yield linked, OUT_OF_FOLDER
        subfolders.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_symlink() and not path.resolve().is_relative_to(real_root):
                yield path, OUT_OF_FOLDER
            elif not path.is_file():  # a FIFO or device would block or never end
                yield path, "not a regular file"
            else:
                yield path, None


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
    return [path for path, reason in _walk(root) if reason is None]


def _header_reason(path: Path) -> tuple[str | None, str]:
    """(reason the file is skipped or None, SOP Instance UID) from its header alone."""
    try:
        with warnings.catch_warnings():  # pydicom's parser notes: the reason says it
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        meta = getattr(header, "file_meta", None)
        sop_class = str(
            header.get("SOPClassUID")  # a DICOMDIR has it in its file meta only
            or (meta.get("MediaStorageSOPClassUID", "") if meta is not None else "")
        ).strip()
        sop_instance = str(header.get("SOPInstanceUID", "") or "").strip()
    except InvalidDicomError:
        return "unreadable file: not DICOM (no 'DICM' prefix after the 128-byte preamble)", ""
    except Exception as exc:  # pydicom raises many types on broken files
        return f"unreadable DICOM header ({type(exc).__name__}: {exc})", ""
    if not sop_class:
        return "no SOPClassUID (0008,0016): not a readable DICOM instance", sop_instance
    if sop_class != OPT_SOP_CLASS_UID:
        name = UID(sop_class).name
        kind = f"{sop_class} ({name})" if name != sop_class else sop_class
        return f"not an OCT volume: SOP class {kind}", sop_instance
    return None, sop_instance


def scan_input(input_path: str | Path) -> InputScan:
    """The OPT files under ``input_path`` (one per SOP Instance UID, in path order) and the
    files skipped, each logged with its reason.

    Raises:
        FileNotFoundError: ``input_path`` does not exist.
    """
    root = Path(input_path)
    if not root.exists():
        raise FileNotFoundError(f"input {root} does not exist")
    scan = InputScan(root=root if root.is_dir() else root.parent)
    walked = [(root, None)] if root.is_file() else list(_walk(root))
    chosen: dict[str, Path] = {}
    for path, reason in walked:
        uid = ""
        if reason is None:
            reason, uid = _header_reason(path)
        if reason is not None:
            _skip(scan, path, reason)
            continue
        key = uid or str(path)  # a missing UID is reported later, per file
        first = chosen.get(key)
        if first is None:
            chosen[key] = path
            scan.files.append(path)
        elif path.stat().st_size > first.stat().st_size:  # a truncated copy is the smaller
            chosen[key] = path
            scan.files[scan.files.index(first)] = path
            _skip(scan, first, f"duplicate SOPInstanceUID: {_relative(path, scan.root)} is used")
        else:
            _skip(scan, path, f"duplicate SOPInstanceUID: {_relative(first, scan.root)} is used")
    return scan


def _skip(scan: InputScan, path: Path, reason: str) -> None:
    scan.skipped.append(SkippedFile(path, reason))
    if reason.startswith("not an OCT volume"):
        logger.info("Ignoring %s: %s", path, reason)
    else:
        logger.warning("Skipping %s: %s", path, reason)


def find_oct_files(input_path: str | Path) -> list[Path]:
    """The OPT files under ``input_path``, one per SOP Instance UID, in path order.

    Raises:
        FileNotFoundError: ``input_path`` does not exist.
    """
    return scan_input(input_path).files


def require_oct_input(input_path: str | Path) -> InputScan:
    """:func:`scan_input`, raising :class:`NoOCTInputError` when it finds no OPT file."""
    scan = scan_input(input_path)
    if not scan.files:
        raise NoOCTInputError(
            f"no OCT volume (DICOM Ophthalmic Tomography Image, SOP Class {OPT_SOP_CLASS_UID}) "
            f"found in {input_path}"
        )
    return scan


def require_oct_files(input_path: str | Path) -> list[Path]:
    """:func:`find_oct_files`, raising :class:`NoOCTInputError` when it finds nothing."""
    return require_oct_input(input_path).files
