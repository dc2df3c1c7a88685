"""Write step: the Encapsulated PDF report (:func:`operators.pdf_report.build_pdf_report`): a
result page, or a page giving the reason a volume could not be assessed."""

from __future__ import annotations

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.equipment import AlgorithmInfo
from operators.steps import build_output


class PDFReportOperator(Operator):
    """Input ``job`` -> output ``dataset``: the Encapsulated PDF report, or ``None``.

    The Dataset is also kept in ``job.outputs["report"]``; the results writer saves it.

    Args:
        fragment: the application.
        info: algorithm and application identity for the equipment attributes.
    """

    def __init__(self, fragment: Fragment, *args, info: AlgorithmInfo, **kwargs) -> None:
        self.info = info  # before super().__init__, which calls setup()
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("job")
        spec.output("dataset")

    def compute(self, op_input, op_output, context) -> None:
        op_output.emit(build_output(op_input.receive("job"), "report", self.info), "dataset")
