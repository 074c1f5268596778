"""Deterministic sample inputs for a Program, generated from its input specs by role.

The pass manager's numeric check runs the program before and after each pass on the same samples, so the same
seed must give the same values for inputs that both programs share.
"""

from __future__ import annotations

import torch

from qeff_compiler.ir.program import Program, TensorSpec


def sample_inputs(program: Program, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random but valid inputs: uniform token ids, every position valid (0..s-1), empty (zero) caches; row i
    in slot i (`batch_index`) and the smallest context bucket holding every position (`comp_ctx_lengths`).

    With an empty cache and positions 0..s-1 a stateful program computes what the stateless one does, so the
    numeric check can compare programs across the kv-cache rewrite.
    """
    generator = torch.Generator().manual_seed(seed)
    return {spec.name: _sample(spec, program, generator) for spec in program.inputs}


def _sample(spec: TensorSpec, program: Program, generator: torch.Generator) -> torch.Tensor:
    if spec.role == "input_ids":
        return torch.randint(0, program.config.vocab_size, spec.shape, generator=generator, dtype=spec.dtype)
    if spec.role == "position_ids":
        batch, seq_len = spec.shape
        return torch.arange(seq_len, dtype=spec.dtype).expand(batch, seq_len).contiguous()
    if spec.role in ("past_key", "past_value"):
        return torch.zeros(spec.shape, dtype=spec.dtype)
    if spec.role == "batch_index":  # row i uses slot i: the slots a program without batch_index writes
        return torch.arange(spec.shape[0], dtype=spec.dtype)[:, None]
    if spec.role == "comp_ctx_lengths":  # the smallest bucket holding positions 0..s-1
        (ids,) = [s for s in program.inputs if s.role == "input_ids"]
        return torch.zeros(ids.shape[1], dtype=spec.dtype)
    raise NotImplementedError(f"no sample generator for inputs of role {spec.role!r} ({spec.name})")
