"""The MONAI Deploy application: OCT DICOM in; TID 1500 SR, heat-map SEG and PDF report out.

Wiring only; each step is an operator in ``operators/``::

    dicom_loader_op -> oct_volume_op -> preprocess_op -> inference_op
    inference_op -> sr_writer_op, seg_writer_op, pdf_report_op -> results_writer_op
    inference_op -> results_writer_op (the job itself)

The loader ticks once per OPT file (``CountCondition``), so volumes stream through one by one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, init_app_context

from operators.bundle_path import resolve_bundle
from operators.dicom_input import require_oct_files
from operators.dicom_loader_operator import DICOMLoaderOperator
from operators.equipment import APP_NAME, APP_VERSION, OUTPUT_KINDS, AlgorithmInfo
from operators.glaucoma_inference_operator import GlaucomaInferenceOperator
from operators.oct_volume_operator import OCTVolumeOperator
from operators.pdf_report_operator import PDFReportOperator
from operators.preprocess_operator import PreprocessOperator
from operators.results_writer_operator import ResultsWriterOperator
from operators.seg_writer_operator import SEGWriterOperator
from operators.sr_writer_operator import SRWriterOperator
from operators.steps import load_model, quiet_library_logs, warm_up


class OCTGlaucomaApp(Application):
    """Glaucoma detection on OCT volumes.

    Paths come from the SDK's command line and environment (``-i``/``HOLOSCAN_INPUT_PATH``,
    ``-o``/``HOLOSCAN_OUTPUT_PATH``, ``-m``/``HOLOSCAN_MODEL_PATH``) unless given here.

    Args:
        argv: the command line, ``[python, program, *flags]`` (holoscan drops the first item).
        input_path, output_path, model_path: explicit paths (in-process use); they skip the
            SDK's argument parsing and logging set-up.
        files: the OPT files, if already found (else found in ``compose``).

    Attributes:
        results: the results.json entries, filled by ``run()``.
    """

    name = APP_NAME
    version = APP_VERSION

    def __init__(
        self,
        argv: Sequence[str] | None = None,
        *,
        input_path: str | Path | None = None,
        output_path: str | Path | None = None,
        model_path: str | Path | None = None,
        files: Sequence[Path] | None = None,
    ) -> None:
        self._paths = (input_path, output_path, model_path)
        self._files = list(files) if files is not None else None
        self._results_op: ResultsWriterOperator | None = None
        super().__init__(list(argv) if argv is not None else None)

    @property
    def results(self) -> list[dict[str, Any]]:
        """One entry per processed volume (as in results.json)."""
        return list(self._results_op.entries) if self._results_op is not None else []

    def compose(self) -> None:
        input_path, output_path, model_path = self._paths
        if input_path is None or output_path is None:
            # The SDK's model factory warns that a bundle's configs/ folder is "not treated as
            # NamedModel"; the bundle is loaded by model.predictor, not by the factory.
            logging.getLogger("monai.deploy.core.models").setLevel(logging.ERROR)
            context = init_app_context(self.argv)
            input_path = input_path or context.input_path
            output_path = output_path or context.output_path
            model_path = model_path or context.model_path
        quiet_library_logs()
        files = self._files if self._files else require_oct_files(input_path)
        input_folder = Path(input_path) if Path(input_path).is_dir() else Path(input_path).parent
        predictor = load_model(resolve_bundle(model_path))
        warm_up()
        info = AlgorithmInfo.from_metadata(predictor.metadata)

        loader = DICOMLoaderOperator(
            self,
            CountCondition(self, len(files)),
            files=files,
            input_folder=input_folder,
            name="dicom_loader_op",
        )
        volume = OCTVolumeOperator(self, name="oct_volume_op")
        prepare = PreprocessOperator(self, predictor=predictor, name="preprocess_op")
        inference = GlaucomaInferenceOperator(self, predictor=predictor, name="inference_op")
        writers = {
            "sr": SRWriterOperator(self, info=info, name="sr_writer_op"),
            "seg": SEGWriterOperator(self, info=info, name="seg_writer_op"),
            "report": PDFReportOperator(self, info=info, name="pdf_report_op"),
        }
        results = ResultsWriterOperator(
            self, output_folder=output_path, info=info, name="results_writer_op"
        )
        self._results_op = results

        self.add_flow(loader, volume, {("job", "job")})
        self.add_flow(volume, prepare, {("job", "job")})
        self.add_flow(prepare, inference, {("job", "job")})
        for kind in OUTPUT_KINDS:
            self.add_flow(inference, writers[kind], {("job", "job")})
            self.add_flow(writers[kind], results, {("dataset", kind)})
        self.add_flow(inference, results, {("job", "job")})
