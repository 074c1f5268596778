"""ONNX Runtime host engine: run a Program's ONNX emit (the artifact's files) with ONNX Runtime on this CPU.

The reference executor (`ir.interpret`) dispatches every graph node from Python, which costs a few microseconds
per op: on small models a decode step is mostly dispatch. A CPU user who wants throughput runs the same program
through ONNX Runtime instead: the ONNX files the artifact ships (`backends.onnx_export`, custom ops as ONNX
functions) on its CPU execution provider. The numerics are the lowered program's, computed by another engine:
equal to the reference executor up to float rounding (fp32 logits within ~1e-5; tested in tests/test_engines.py),
not bit for bit. The simulated device figures do not depend on the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from qeff_compiler.ir.interpret import check_inputs
from qeff_compiler.ir.program import Program


def session_options(threads: int | None) -> ort.SessionOptions:
    """ONNX Runtime options for one engine session: `threads` intra-op threads (default: torch's count), no
    inter-op pool, and no spin-waiting after a run, so its threads never compete with torch's between steps
    (`runtime.threads`)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxRuntimeExecutor:
    """An ONNX Runtime session over `onnx_file` (the emit of `program`), called like `HostExecutor`."""

    def __init__(
        self,
        program: Program,
        onnx_file: Path | bytes | None,
        threads: int | None = None,
        initializers: Mapping[str, np.ndarray] | None = None,
        *,
        session: ort.InferenceSession | None = None,
    ) -> None:
        """`onnx_file` is a path, or the graph's bytes with its external `initializers` given as arrays (the
        session then reads no file: `backends.verified_onnx`); or `session` is given (one session serving both
        specializations of the hand-off graph)."""
        self.program = program
        self._initializers = dict(initializers or {})  # ONNX Runtime uses these arrays' memory: keep them alive
        if session is None:
            options = session_options(threads)
            if self._initializers:
                values = [ort.OrtValue.ortvalue_from_numpy(array) for array in self._initializers.values()]
                options.add_external_initializers(list(self._initializers), values)
            assert onnx_file is not None, "an ONNX file or a session"
            source = onnx_file if isinstance(onnx_file, bytes) else str(onnx_file)
            session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self._session = session
        self._output_names = [spec.name for spec in program.outputs]
        #: graph inputs the program does not have, fed on every call (the hand-off's num_logits_to_keep)
        self.extra_feeds: dict[str, np.ndarray] = {}

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run on `inputs` (by input spec name); returns the outputs by output spec name (zero-copy both ways)."""
        check_inputs(self.program, inputs)
        feed = {name: np.ascontiguousarray(value.numpy()) for name, value in inputs.items()} | self.extra_feeds
        results = self._session.run(self._output_names, feed)
        return {name: torch.from_numpy(value) for name, value in zip(self._output_names, results, strict=True)}
