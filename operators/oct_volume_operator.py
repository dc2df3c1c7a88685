"""OCT volume step: frames in true spatial order, spacing and laterality from the functional
groups, compressed pixel data decoded (:func:`operators.oct_volume.read_oct_volume`).

A volume that cannot be assessed leaves the job with a reason; the later steps report it as
"not assessable" and the other volumes go on.
"""

from __future__ import annotations

from monai.deploy.core import Operator, OperatorSpec

from operators.steps import build_volume


class OCTVolumeOperator(Operator):
    """Input ``job`` -> output ``job`` with ``volume`` set (or ``reason``)."""

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("job")
        spec.output("job")

    def compute(self, op_input, op_output, context) -> None:
        op_output.emit(build_volume(op_input.receive("job")), "job")
