"""Load step: the source operator, one OPT file read per tick.

The application finds the OPT files first (:func:`operators.dicom_input.require_oct_files`:
recursive, unreadable files skipped with a warning, other SOP classes ignored, no symbolic link
followed out of the folder) and gives this operator a ``CountCondition`` of that many ticks, so
the volumes stream through the graph one at a time and memory holds one volume. The SDK's
``DICOMDataLoaderOperator`` + ``DICOMSeriesToVolumeOperator`` are not used: they mishandle
multi-frame OPT (frame order, spacing, laterality).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.steps import VolumeJob, read_instance


class DICOMLoaderOperator(Operator):
    """Emits one :class:`operators.steps.VolumeJob` per OPT file, with the file read.

    Named output: ``job``. Give it ``CountCondition(fragment, len(files))``.

    Args:
        fragment: the application.
        files: the OPT files, in processing order.
        input_folder: the input folder (to name files relative to it in results).
    """

    def __init__(
        self,
        fragment: Fragment,
        *args,
        files: Sequence[str | Path],
        input_folder: str | Path,
        **kwargs,
    ) -> None:
        # Attributes first: the base constructor calls setup().
        self.files = [Path(f) for f in files]
        self.input_folder = Path(input_folder)
        self._next = 0
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("job")

    def compute(self, op_input, op_output, context) -> None:
        index = self._next
        self._next += 1
        job = VolumeJob(
            path=self.files[index],
            index=index + 1,
            total=len(self.files),
            input_root=self.input_folder,
        )
        op_output.emit(read_instance(job), "job")
