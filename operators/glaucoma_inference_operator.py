"""Inference step: P(glaucoma), label, CARE and Grad-CAM, the maps brought back to the source
grid and orientation (``Predictor.infer`` + ``Predictor.restore``).

The model is loaded once per process (:func:`operators.steps.load_model`:
``model.predictor.load_predictor`` is cached on the bundle path and file times), so repeated
in-process runs (the DICOM node) reuse it.
"""

from __future__ import annotations

from monai.deploy.core import Fragment, Operator, OperatorSpec

from model.predictor import Predictor
from operators.steps import infer, load_model

__all__ = ["GlaucomaInferenceOperator", "load_model"]


class GlaucomaInferenceOperator(Operator):
    """Input ``job`` -> output ``job`` with ``prediction`` set.

    Args:
        fragment: the application.
        predictor: the loaded model.
    """

    def __init__(self, fragment: Fragment, *args, predictor: Predictor, **kwargs) -> None:
        self.predictor = predictor  # before super().__init__, which calls setup()
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("job")
        spec.output("job")

    def compute(self, op_input, op_output, context) -> None:
        op_output.emit(infer(op_input.receive("job"), self.predictor), "job")
