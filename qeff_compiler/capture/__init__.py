"""Capture: an MPT model (object, HF directory, or config alone) → a `Program` traced by torch.export."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qeff_compiler.errors import InvalidArgumentError

if TYPE_CHECKING:
    from qeff_compiler.capture.sources import ModelSource, ResolvedModel, resolve_model
    from qeff_compiler.ir.program import Program

#: example sequence length of a plain capture; compile() captures at its own prefill/decode lengths
DEFAULT_CAPTURE_SEQ_LEN = 8


def capture(model: ModelSource, *, batch_size: int = 1, seq_len: int | None = None) -> Program:
    """Trace `model` at the static shape [batch_size, seq_len] into an fp32 `Program`.

    `model` is an HF `MptForCausalLM`, a local HF directory (config.json + safetensors) or an `MptConfig`
    (weights on the meta device: 7B/30B shapes capture in seconds without allocating them).
    """
    from qeff_compiler.capture.sources import resolve_model

    return capture_resolved(resolve_model(model), batch_size=batch_size, seq_len=seq_len)


def capture_resolved(resolved: ResolvedModel, *, batch_size: int = 1, seq_len: int | None = None) -> Program:
    """`capture` for a model already resolved (compile captures one model at several shapes)."""
    from qeff_compiler.capture.bounds import check_call_size
    from qeff_compiler.capture.export import export_mpt
    from qeff_compiler.ir.program import Program

    max_seq_len = resolved.config.max_seq_len
    if seq_len is None:
        seq_len = min(DEFAULT_CAPTURE_SEQ_LEN, max_seq_len)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("seq_len", seq_len)
    if seq_len > max_seq_len:
        raise InvalidArgumentError(f"seq_len={seq_len} exceeds the model's max_seq_len={max_seq_len}")
    check_call_size(resolved.config, batch_size, seq_len)
    graph_module, inputs, outputs = export_mpt(resolved.config, batch_size, seq_len)
    return Program(graph_module, resolved.weights, resolved.config, inputs, outputs, frozenset({"captured"}))

def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")


def __getattr__(name: str) -> Any:
    """`ModelSource`, `ResolvedModel` and `resolve_model` load torch and transformers: imported on first use (PEP 562)
    so that light modules of this package (`presets`) can be read without them."""
    if name in ("ModelSource", "ResolvedModel", "resolve_model"):
        from qeff_compiler.capture import sources

        return getattr(sources, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_CAPTURE_SEQ_LEN", "ModelSource", "ResolvedModel", "capture", "capture_resolved", "resolve_model"]
