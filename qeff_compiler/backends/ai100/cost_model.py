"""Cost model of a Cloud AI 100: the simulated time of every op of a program step, from first principles.

Per op, on each SoC, the busiest core decides (the partition plan says what share of the op it holds):

    memory     = bytes the SoC streams (its weight shards as stored + KV cache read/written) / (tier bandwidth x eff)
    compute    = tensor-unit FLOPs of the busiest core / (its peak for the datatype x COMPUTE_EFFICIENCY)
    decompress = MXFP6 elements of the busiest core / MXFP6_DECOMPRESS_ELEMENTS_PER_S_PER_CORE
    vector     = vector-unit elements of the busiest core / VECTOR_ELEMENTS_PER_S_PER_CORE
    op time    = max(memory, compute + decompress + vector) + OP_OVERHEAD_S + transfers

Memory streaming overlaps the cores' work (the DMA engines fetch the next tile while the cores run), so an op is
bandwidth- or core-bound, whichever is slower: batch-1 decode reads every weight once per token and comes out
bandwidth-bound; prefill multiplies the FLOPs by the chunk length and comes out compute-bound; MXFP6 weights cut
the bytes by 2.56x versus fp16, but their decompression on the vector unit then bounds decode. Transfers: NoC
traffic between cores at the NoC bandwidth, PCIe P2P all-reduces between SoCs at the P2P bandwidth plus a latency.

The tier is where the plan keeps the weights: DDR, or on-chip VTCM when a SoC's shards and cache fit there.

Constants. Two are fitted, each to one published figure, on one model only (Qualcomm's MX blog,
AI 100 Standard, GPT-J-6B, batch 1, prompt 1024, generate 1024, ctx 2048):
- DDR_EFFICIENCY: fp16 decode 8.08 tok/s. Fitted 0.7475: 102 GB/s sustained of the 137 GB/s peak.
- MXFP6_DECOMPRESS_ELEMENTS_PER_S_PER_CORE: MXFP6 decode 13.9 tok/s. Fitted 7.28e9 elements/s per core, about
  7 elements per cycle at a ~1 GHz clock: MXFP6 decode is decompression-bound, which is why MXFP6 gains 1.7x over
  fp16 on GPT-J while it moves 2.56x fewer weight bytes.
`python -m bench.cost_model_calibration --fit` redoes the fit (bisection on each constant in turn).
OPT-2.7B (fp16 15.44, MXFP6 27.72 tok/s) and OPT-13B (MXFP6 6.98; fp16 does not fit) are validation points the
constants were not fitted to; `tests/test_cost_model.py` checks all of them, and `qeffc estimate` prints them.
The others are stated assumptions, not fitted (no published figure isolates them); they barely move decode:
- COMPUTE_EFFICIENCY 0.6: share of the tensor unit's peak a large matmul sustains (sets prefill / TTFT);
- VECTOR_ELEMENTS_PER_S_PER_CORE 64e9: 1024-bit vector unit, 64 fp16 lanes, ~1 GHz;
- NOCS_PER_SOC 3: the on-chip tier's bandwidth is the SoC's three NoCs together (3 x 186 GB/s);
- OP_OVERHEAD_S 2 us per op (launch and core synchronisation); P2P_LATENCY_S 5 us per PCIe transfer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qeff_compiler.backends.ai100.devices import DeviceSpec
from qeff_compiler.backends.ai100.partition import PartitionPlan, Transfer
from qeff_compiler.backends.ai100.workload import OpWork

#: fitted: sustained share of the DDR bandwidth (GPT-J-6B fp16 decode, 8.08 tok/s on ai100-standard)
DDR_EFFICIENCY = 0.7475
#: fitted: MXFP6 → fp16 elements one core's vector unit decompresses per second (GPT-J-6B MXFP6 decode, 13.9 tok/s)
MXFP6_DECOMPRESS_ELEMENTS_PER_S_PER_CORE = 7.28e9
#: assumed: share of the tensor unit's peak sustained by large matmuls
COMPUTE_EFFICIENCY = 0.6
#: assumed: vector-unit elements per second per core (64 fp16 lanes at ~1 GHz)
VECTOR_ELEMENTS_PER_S_PER_CORE = 64e9
#: NoCs per SoC [arch]; the on-chip tier streams over all of them (3 x 186 GB/s), an assumption
NOCS_PER_SOC = 3
#: assumed: fixed cost per op per step (launch, core synchronisation)
OP_OVERHEAD_S = 2e-6
#: assumed: latency of one PCIe P2P transfer
P2P_LATENCY_S = 5e-6


@dataclass(frozen=True)
class OpTiming:
    """Simulated time of one op in one step, and what bounds it."""

    node: str
    kind: str
    layer: int | None
    seconds: float
    memory_s: float
    core_s: float
    transfer_s: float

    @property
    def bound(self) -> str:
        """"memory" or "core" (compute + decompression + vector), whichever set the op's time."""
        return "memory" if self.memory_s >= self.core_s else "core"


@dataclass(frozen=True)
class StepTiming:
    """Simulated time of one call of a program (one prefill chunk or one decode step)."""

    ops: tuple[OpTiming, ...]

    @property
    def seconds(self) -> float:
        return sum(op.seconds for op in self.ops)


def time_step(work: Sequence[OpWork], plan: PartitionPlan, device: DeviceSpec, tier: str) -> StepTiming:
    """The simulated time of one program call whose ops are `work`, partitioned by `plan`, weights in `tier`."""
    bandwidth = tier_bandwidth(device, tier)
    return StepTiming(tuple(_time_op(op, plan, device, bandwidth) for op in work))


def tier_bandwidth(device: DeviceSpec, tier: str) -> float:
    """Sustained bytes/s one SoC streams weights and cache from: DDR, or the on-chip VTCM over its NoCs."""
    if tier == "ddr":
        return device.ddr_bytes_per_s_per_soc * DDR_EFFICIENCY
    if tier == "vtcm":
        return NOCS_PER_SOC * device.noc_bytes_per_s
    raise ValueError(f"unknown memory tier {tier!r}")


def _time_op(op: OpWork, plan: PartitionPlan, device: DeviceSpec, bandwidth: float) -> OpTiming:
    core, soc = plan.core_share(op.node), plan.device_share(op.node)
    peak = device.peak_int8_ops_per_core if op.compute == "int8" else device.peak_fp16_flops_per_core
    memory = (op.weight_bytes + op.kv_read_bytes + op.kv_write_bytes) * soc / bandwidth
    compute = op.flops * core / (peak * COMPUTE_EFFICIENCY)
    decompress = op.decompress_elements * core / MXFP6_DECOMPRESS_ELEMENTS_PER_S_PER_CORE
    vector = op.vector_elements * core / VECTOR_ELEMENTS_PER_S_PER_CORE
    transfer = sum(_transfer_seconds(t, device) for t in plan.transfers_for(op.node))
    core_time = compute + decompress + vector
    return OpTiming(
        node=op.node,
        kind=op.kind,
        layer=op.layer,
        seconds=max(memory, core_time) + OP_OVERHEAD_S + transfer,
        memory_s=memory,
        core_s=core_time,
        transfer_s=transfer,
    )


def _transfer_seconds(transfer: Transfer, device: DeviceSpec) -> float:
    """A ring collective: each participant sends its share of the payload over the NoC (between the cores of a SoC)
    or over PCIe P2P (between SoCs, plus a latency)."""
    if transfer.link == "noc":
        return transfer.bytes_per_participant / device.noc_bytes_per_s
    return transfer.bytes_per_participant / device.pcie_p2p_bytes_per_s + P2P_LATENCY_S
