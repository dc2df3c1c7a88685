"""Write step: the TID 1500 Structured Report of each volume (:func:`operators.sr.build_sr`),
assessable or not."""

from __future__ import annotations

from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.equipment import AlgorithmInfo
from operators.steps import build_output


class SRWriterOperator(Operator):
    """Input ``job`` -> output ``dataset``: the Comprehensive 3D SR, or ``None``.

    The Dataset is also kept in ``job.outputs["sr"]``; the results writer saves it.

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
        op_output.emit(build_output(op_input.receive("job"), "sr", self.info), "dataset")
