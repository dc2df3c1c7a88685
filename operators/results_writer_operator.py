"""Final step: save each volume's DICOM outputs and (re)write ``results.json``.

Files: ``<output>/<source SOPInstanceUID>/{sr,seg,report}.dcm`` and ``<output>/results.json``
(one entry per volume, rewritten after each volume, so an interrupted run keeps what was done).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.equipment import OUTPUT_KINDS, AlgorithmInfo
from operators.steps import result_entry, save_outputs, write_results_json


class ResultsWriterOperator(Operator):
    """Inputs ``job`` and one Dataset (or ``None``) per output kind: ``sr``, ``seg``, ``report``.

    Args:
        fragment: the application.
        output_folder: where the files go.
        info: algorithm and application identity (results.json header).

    Attributes:
        entries: the results.json entries written so far.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args,
        output_folder: str | Path,
        info: AlgorithmInfo,
        **kwargs,
    ) -> None:
        # Attributes first: the base constructor calls setup().
        self.output_folder = Path(output_folder)
        self.info = info
        self.entries: list[dict[str, Any]] = []
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("job")
        for kind in OUTPUT_KINDS:
            spec.input(kind)

    def compute(self, op_input, op_output, context) -> None:
        job = op_input.receive("job")
        for kind in OUTPUT_KINDS:
            op_input.receive(kind)  # already in job.outputs; receiving waits for every writer
        save_outputs(job, self.output_folder)
        self.entries.append(result_entry(job, self.info))
        write_results_json(self.entries, self.output_folder, self.info)
        # Drop the volume, maps and datasets now: the graph holds one volume at a time.
        job.volume = job.dataset = job.prediction = None
        job.outputs.clear()
