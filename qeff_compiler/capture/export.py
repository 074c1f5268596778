"""Trace HF's MPT into an ATen-level FX graph with torch.export, at one static example shape.

The model traced is always a meta-device copy built from the config, so tracing costs no weight memory at any
scale; the real weights stay in the weight store and are bound to the graph's weight placeholders by name.
Non-strict export is used because `torch.fx.symbolic_trace` cannot follow HF's MPT.
"""

from __future__ import annotations

import torch
import torch.fx
from torch.export.graph_signature import InputKind
from transformers import MptConfig

from qeff_compiler.capture.sources import CAPTURE_DTYPE, build_meta_model
from qeff_compiler.errors import CaptureError
from qeff_compiler.ir.program import BINDING, TensorSpec

_WRAPPED = "model"


class _LogitsOnly(torch.nn.Module):
    """Calls HF's model without its cache and returns the logits tensor alone."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def export_mpt(
    config: MptConfig, batch_size: int, seq_len: int
) -> tuple[torch.fx.GraphModule, tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The lifted graph `(weights..., input_ids) -> (logits,)` with placeholder bindings, and its I/O specs."""
    example = torch.zeros((batch_size, seq_len), dtype=torch.int64, device="meta")
    # A validated config always traces; a failure here is a compiler bug and keeps torch's own traceback.
    exported = torch.export.export(_LogitsOnly(build_meta_model(config)), (example,), strict=False)
    graph_module = torch.fx.GraphModule(torch.nn.Module(), exported.graph)
    _bind_placeholders(graph_module, exported.graph_signature.input_specs)
    _move_constructors_to_host(graph_module)
    inputs = (TensorSpec("input_ids", (batch_size, seq_len), torch.int64, role="input_ids"),)
    outputs = (TensorSpec("logits", (batch_size, seq_len, config.vocab_size), CAPTURE_DTYPE, role="logits"),)
    return graph_module, inputs, outputs


def _bind_placeholders(graph_module: torch.fx.GraphModule, input_specs: list) -> None:
    placeholders = graph_module.graph.find_nodes(op="placeholder")
    for node, spec in zip(placeholders, input_specs, strict=True):
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
            node.meta[BINDING] = ("weight", spec.target.removeprefix(f"{_WRAPPED}."))
        elif spec.kind == InputKind.USER_INPUT:
            node.meta[BINDING] = ("input", spec.arg.name)
        else:
            raise CaptureError(f"unexpected {spec.kind.name} input {spec.arg.name!r} in the exported MPT graph")


def _move_constructors_to_host(graph_module: torch.fx.GraphModule) -> None:
    """Tensors the graph creates (arange, zeros) were traced on the meta device; the host runs them on CPU."""
    host = torch.device("cpu")
    for node in graph_module.graph.nodes:
        device = node.kwargs.get("device")
        if isinstance(device, torch.device) and device.type == "meta":
            node.kwargs = {**node.kwargs, "device": host}
    graph_module.recompile()
