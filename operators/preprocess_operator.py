"""Preprocess step: a left eye mirrored to the right-eye layout, resampled to the bundle's input
grid and intensity-normalised as the bundle declares (``Predictor.prepare``)."""

from __future__ import annotations

from monai.deploy.core import Fragment, Operator, OperatorSpec

from model.predictor import Predictor
from operators.steps import preprocess


class PreprocessOperator(Operator):
    """Input ``job`` -> output ``job`` holding the model input tensor.

    Args:
        fragment: the application.
        predictor: the loaded model (``model.predictor.load_predictor``).
    """

    def __init__(self, fragment: Fragment, *args, predictor: Predictor, **kwargs) -> None:
        self.predictor = predictor  # before super().__init__, which calls setup()
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("job")
        spec.output("job")

    def compute(self, op_input, op_output, context) -> None:
        op_output.emit(preprocess(op_input.receive("job"), self.predictor), "job")
