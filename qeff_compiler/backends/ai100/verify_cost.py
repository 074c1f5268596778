"""The simulated cost of one token of a speculative-decoding target, from its K+1-position verify step.

A target compiled with `num_speculative_tokens=K` has no single-token decode program, yet its speed-up is
measured against one. The verify step's work splits into what each position costs (tensor-unit FLOPs, vector
elements, activations moved, KV bytes written: linear in the positions) and what the call costs once (weights
read, MXFP6 decompressed, the KV cache read); dividing the former by K+1 gives the single-token step on the same
partition plan and memory tier. `tests/test_speculative.py` checks it against a plain compile's decode step.
"""

from __future__ import annotations

import dataclasses

from qeff_compiler.backends.ai100.cost_model import time_step
from qeff_compiler.backends.ai100.devices import DeviceSpec
from qeff_compiler.backends.ai100.partition import PartitionPlan
from qeff_compiler.backends.ai100.workload import OpWork, program_workload
from qeff_compiler.ir.program import Program


def per_position_workload(work: list[OpWork], positions: int) -> list[OpWork]:
    """`work` of a call over `positions` positions per row, as one position's call."""
    return [
        dataclasses.replace(
            op,
            flops=op.flops / positions,
            vector_elements=op.vector_elements // positions,
            kv_write_bytes=op.kv_write_bytes // positions,
            activation_bytes=op.activation_bytes // positions,
        )
        for op in work
    ]


def single_token_step_s(verify: Program, plan: PartitionPlan, device: DeviceSpec, tier: str) -> float:
    """Simulated seconds of one plain decode step of the model whose verify program is `verify`."""
    (ids,) = [s for s in verify.inputs if s.role == "input_ids"]
    work = per_position_workload(program_workload(verify), ids.shape[1])
    return time_step(work, plan, device, tier).seconds
