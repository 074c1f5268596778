"""The simulated device a compiled model runs on: its programs partitioned, placed in memory and timed.

`SimulatedDevice` is built once per compile (or artifact load): it partitions both specializations over the
target's cores and SoCs, validates the plan, plans memory (and refuses a model that does not fit, with the numbers),
and times one call of each specialization with the cost model. Shapes are static, so every prefill chunk costs the
same and so does every decode step; `generate` multiplies them by the calls it makes, `estimate` by the calls a
prompt and a generation length imply. Nothing here reads weight data: it works on config-only (meta) programs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from qeff_compiler.backends.ai100.constants import figure_provenance
from qeff_compiler.backends.ai100.cost_model import StepTiming, time_step
from qeff_compiler.backends.ai100.devices import MAX_DEVICES, DeviceSpec, get_device
from qeff_compiler.backends.ai100.memory import MemoryPlan, check_fits, plan_memory
from qeff_compiler.backends.ai100.partition import PartitionPlan, partition_program, validate_plan
from qeff_compiler.backends.ai100.trace import write_trace
from qeff_compiler.backends.ai100.workload import program_workload
from qeff_compiler.errors import InvalidArgumentError, VerificationError
from qeff_compiler.ir.program import Program
from qeff_compiler.runtime.stats import LatencyStats


@dataclass(frozen=True)
class Target:
    """Where a model is compiled for: a device type, cores per SoC used, and SoCs (tensor parallel)."""

    device: str = "ai100-standard"
    #: AI cores used on each SoC; None = all of them
    num_cores: int | None = None
    num_devices: int = 1
    #: how SoCs exchange partial results over PCIe P2P: "fp16", or "mxint8" (8.25 bits per element)
    p2p_format: str = "fp16"

    def spec(self) -> DeviceSpec:
        return get_device(self.device)

    def cores(self) -> int:
        """The cores per SoC, checked against the device."""
        available = self.spec().cores_per_soc
        cores = available if self.num_cores is None else self.num_cores
        if not _positive_int(cores) or cores > available:
            raise InvalidArgumentError(f"num_cores must be 1..{available} on {self.device}, got {self.num_cores!r}")
        if not _positive_int(self.num_devices) or self.num_devices > MAX_DEVICES:
            raise InvalidArgumentError(
                f"num_devices must be a positive integer up to {MAX_DEVICES}, got {self.num_devices!r}"
            )
        return cores

    def describe(self) -> str:
        socs = f"{self.num_devices} SoC" + ("s" if self.num_devices > 1 else "")
        return f"{self.device}, {self.cores()} cores x {socs}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class SimulatedDevice:
    """A compiled model's prefill and decode programs on a target; a `DeviceClock` for `generate`."""

    def __init__(
        self, prefill: Program, decode: Program, target: Target, plans: Mapping[str, PartitionPlan] | None = None
    ) -> None:
        """`plans` (a loaded artifact's) are checked against the target and the programs instead of computed."""
        self.target = target
        self.spec = target.spec()
        cores = target.cores()
        self.plans: dict[str, PartitionPlan] = {}
        for name, program in (("prefill", prefill), ("decode", decode)):
            if plans is None:
                self.plans[name] = partition_program(program, cores, target.num_devices, target.p2p_format)
            else:
                self.plans[name] = plans[name]
                _check_plan_target(name, plans[name], cores, target)
            validate_plan(self.plans[name], program)
        self.memory: MemoryPlan = plan_memory(prefill, decode, self.plans["decode"], self.spec, _batch(decode))
        check_fits(self.memory)
        self.steps: dict[str, StepTiming] = {
            name: time_step(program_workload(program), self.plans[name], self.spec, self.memory.tier)
            for name, program in (("prefill", prefill), ("decode", decode))
        }
        self.prefill_len = _seq_len(prefill)
        self.ctx_len = _ctx_len(decode)
        self.batch_size = _batch(decode)
        self._programs = {"prefill": prefill, "decode": decode}
        self._bucket_steps: dict[tuple[str, int], StepTiming] = {}

    # the DeviceClock protocol of runtime.generate
    @property
    def device(self) -> str:
        return self.target.describe()

    @property
    def prefill_chunk_s(self) -> float:
        return self.steps["prefill"].seconds

    @property
    def decode_step_s(self) -> float:
        return self.steps["decode"].seconds

    def prefill_call_s(self, context: int) -> float:
        """Simulated seconds of one prefill call whose attention reads the first `context` cache positions."""
        return self._timed("prefill", context).seconds

    def decode_call_s(self, context: int) -> float:
        """Simulated seconds of one decode step whose attention reads the first `context` cache positions."""
        return self._timed("decode", context).seconds

    def _timed(self, name: str, context: int) -> StepTiming:
        """The step timing of a specialization at a context bucket, computed once per bucket."""
        if not 1 <= context <= self.ctx_len:
            raise InvalidArgumentError(f"context bucket {context} is outside 1..ctx_len={self.ctx_len}")
        if context == self.ctx_len:
            return self.steps[name]
        key = (name, context)
        if key not in self._bucket_steps:
            work = program_workload(self._programs[name], context_len=context)
            self._bucket_steps[key] = time_step(work, self.plans[name], self.spec, self.memory.tier)
        return self._bucket_steps[key]

    @property
    def provenance(self) -> dict[str, str]:
        """Whether this target's simulated decode and prefill/TTFT figures are calibrated, validated or assumed."""
        return figure_provenance(self.target.device, self.memory.tier, self.target.num_devices)

    def estimate(self, prompt_len: int, generation_len: int) -> LatencyStats:
        """The simulated figures of generating `generation_len` tokens after a `prompt_len` prompt, for every row
        of the compiled batch: ceil(prompt_len / prefill_len) prefill chunks, then one decode step per token after
        the first (which the prefill produces)."""
        for name, value in (("prompt_len", prompt_len), ("generation_len", generation_len)):
            if not _positive_int(value):
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
        if prompt_len + generation_len > self.ctx_len:
            raise InvalidArgumentError(
                f"prompt_len ({prompt_len}) + generation_len ({generation_len}) exceeds ctx_len={self.ctx_len}"
            )
        prefill_s = -(-prompt_len // self.prefill_len) * self.prefill_chunk_s
        return LatencyStats(
            prompt_tokens=(prompt_len,) * self.batch_size,
            generated_tokens=(generation_len,) * self.batch_size,
            device=self.device,
            ttft_s=prefill_s,
            prefill_s=prefill_s,
            token_latencies_s=(self.decode_step_s,) * (generation_len - 1),
        )

    def write_trace(self, path: str | Path, stats: LatencyStats) -> None:
        """A Chrome/Perfetto trace of the calls a generation made (its prefill chunks, then its decode steps)."""
        chunks = round(stats.prefill_s / self.prefill_chunk_s) if self.prefill_chunk_s else 0
        calls = [(f"prefill chunk {i}", self.steps["prefill"], self.plans["prefill"]) for i in range(chunks)]
        steps = len(stats.token_latencies_s)
        calls += [(f"decode step {i}", self.steps["decode"], self.plans["decode"]) for i in range(steps)]
        write_trace(path, calls)


def _check_plan_target(name: str, plan: PartitionPlan, cores: int, target: Target) -> None:
    planned = (plan.num_devices, plan.num_cores, plan.p2p_format)
    if planned != (target.num_devices, cores, target.p2p_format):
        raise VerificationError(
            f"the {name} partition plan is for (num_devices, num_cores, p2p_format) {planned}, the target is "
            f"{(target.num_devices, cores, target.p2p_format)}"
        )


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _spec_shape(program: Program, role: str) -> tuple[int, ...]:
    return next(s for s in program.inputs if s.role == role).shape


def _batch(program: Program) -> int:
    return _spec_shape(program, "input_ids")[0]


def _seq_len(program: Program) -> int:
    return _spec_shape(program, "input_ids")[1]


def _ctx_len(program: Program) -> int:
    return _spec_shape(program, "past_key")[2]
