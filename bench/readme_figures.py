"""Make the README's pictures from a finished run of the application (``make demo``).

- ``docs/images/report_page.png``: page 1 of the PDF inside the first ``report.dcm`` (pdftoppm);
- ``docs/images/seg_overlay.png``: the key B-scan of the first assessable volume with the CARE and
  Grad-CAM segments of its ``seg.dcm``, read back with highdicom as a viewer would.

Usage::

    python bench/readme_figures.py [OUTPUT_DIR] [--out docs/images]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import highdicom as hd
import matplotlib
import numpy as np
import pydicom

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def report_page(report_dcm: Path, png: Path) -> None:
    """Render page 1 of the encapsulated PDF to ``png`` at 80 dpi."""
    pdf = pydicom.dcmread(report_dcm).EncapsulatedDocument
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "report.pdf"
        source.write_bytes(pdf)
        subprocess.run(["pdftoppm", "-png", "-r", "80", "-f", "1", "-l", "1", "-singlefile",
                        str(source), str(png.with_suffix(""))], check=True)


def seg_overlay(source_dcm: Path, seg_dcm: Path, png: Path) -> None:
    """Overlay both SEG segments on the B-scan where Grad-CAM peaks, as read back from DICOM."""
    source = pydicom.dcmread(source_dcm)
    seg = hd.seg.segread(seg_dcm)
    frames = source.pixel_array
    sop = source.SOPInstanceUID
    maps = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=sop, source_frame_numbers=list(range(1, len(frames) + 1)),
        rescale_fractional=True,
    )  # (frames, rows, columns, segments)
    frame = int(np.argmax(maps[..., 1].sum(axis=(1, 2))))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), constrained_layout=True)
    for ax, index in zip(axes, (0, 1), strict=True):
        description = seg.get_segment_description(index + 1)
        ax.imshow(frames[frame], cmap="gray", aspect="auto")
        ax.imshow(np.ma.masked_less(maps[frame, ..., index], 0.05), cmap="inferno", alpha=0.5,
                  vmin=0, vmax=1, aspect="auto")
        ax.set_title(f"SEG segment {index + 1}: {description.segment_label}, frame {frame + 1}")
        ax.axis("off")
    fig.savefig(png, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, nargs="?", default=ROOT / "output")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/images")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    entries = json.loads((args.output / "results.json").read_text())["results"]
    entry = max((e for e in entries if e["assessable"]), key=lambda e: e["probability"])
    outputs = {kind: args.output / name for kind, name in entry["outputs"].items()}
    source = next(p for p in sorted(Path(ROOT / "sample_study").rglob("*.dcm"))
                  if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                  == entry["sop_instance_uid"])
    report_page(outputs["report"], args.out / "report_page.png")
    seg_overlay(source, outputs["seg"], args.out / "seg_overlay.png")
    print(f"wrote {args.out}/report_page.png and {args.out}/seg_overlay.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
