"""The hand-off graph as the fast CPU engine: one ONNX Runtime session runs a compiled fp32 model's prefill and decode.

The graph is fp32 with the cache updated by `CtxScatter` at the written slots, so for an fp32 compile (fp32 KV
cache) its numerics are the program's, up to float summation order. Other precisions keep the emulation files
(`backends.onnx_export`), which reproduce the device's roundings exactly. Models compiled in this process export
the graph once to a private temporary directory; a loaded artifact runs its own files.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from qeff_compiler.backends.onnxruntime_host import OnnxRuntimeExecutor, session_options
from qeff_compiler.backends.qaic.graph import NUM_LOGITS_TO_KEEP, emit_handoff
from qeff_compiler.backends.qaic.handoff import ONNX, check_handoff, handoff_model
from qeff_compiler.errors import HandoffError
from qeff_compiler.ir.program import Program

if TYPE_CHECKING:
    from qeff_compiler.compiler import CompiledModel


def runs_handoff_graph(model: CompiledModel) -> bool:
    """Whether the onnxruntime engine runs `model` through the hand-off graph: an fp32 compile with an fp32 cache,
    compiled in this process (a loaded artifact runs its own files), that the hand-off can express."""
    options = model.options
    if options.precision != "fp32" or options.kv_cache_dtype is not None or model.artifact_directory is not None:
        return False
    try:
        check_handoff(model)
    except HandoffError:
        return False
    return True


class HandoffSession:
    """The hand-off graph of `model` exported to a temporary directory (removed with this object) and one ONNX
    Runtime session over it, tuned for speed: all graph optimizations, `threads` (default: torch's count)."""

    def __init__(self, model: CompiledModel, threads: int | None = None) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="qeff-handoff-")
        path = Path(self._directory.name) / ONNX
        emit_handoff(handoff_model(model), path)
        options = session_options(threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class HandoffExecutor(OnnxRuntimeExecutor):
    """An executor over the shared hand-off session (which it keeps alive, temporary directory included)."""

    def __init__(self, program: Program, shared: HandoffSession) -> None:
        super().__init__(program, None, session=shared.session)
        self._shared = shared
        if NUM_LOGITS_TO_KEEP in {i.name for i in shared.session.get_inputs()}:  # a speculative target's graph
            (logits,) = [s for s in program.outputs if s.role == "logits"]
            self.extra_feeds[NUM_LOGITS_TO_KEEP] = np.zeros((logits.shape[1], 1), dtype=np.int64)


def handoff_executors(model: CompiledModel, threads: int | None = None) -> tuple[HandoffExecutor, HandoffExecutor]:
    """(prefill, decode) executors sharing one session over the hand-off graph."""
    shared = HandoffSession(model, threads)
    return HandoffExecutor(model.prefill, shared), HandoffExecutor(model.decode, shared)
