"""Cost model of a Cloud AI 100: the simulated time of every op of a program step, from first principles.

Per op, on each SoC, the busiest core decides (the partition plan says what share of the op it holds):

    memory     = bytes the SoC streams (its weight shards as stored + KV cache read/written) / (tier bandwidth x eff)
    compute    = tensor-unit FLOPs of the busiest core / (its peak for the datatype x COMPUTE_EFFICIENCY)
    decompress = MXFP6 elements of the busiest core / the core's MXFP6 decompression rate (vector unit, below)
    vector     = vector-unit elements of the busiest core / the core's vector rate (below)
    op time    = max(memory, compute + decompress + vector) + OP_OVERHEAD_S + transfers

Memory streaming overlaps the cores' work (the DMA engines fetch the next tile while the cores run), so an op is
bandwidth- or core-bound, whichever is slower: batch-1 decode reads every weight once per token and comes out
bandwidth-bound; prefill multiplies the FLOPs by the chunk length and comes out compute-bound; MXFP6 weights cut
the bytes by 2.56x versus fp16, but their decompression on the vector unit then bounds decode. Transfers: NoC
traffic between cores at the NoC bandwidth, PCIe P2P all-reduces between SoCs at the P2P bandwidth plus a latency.

The vector unit is derived, not fitted: VECTOR_FP16_LANES lanes per clock at the clock the card's FP16 peak implies
(`DeviceSpec.core_clock_hz`); decompressing one MXFP6 element costs MXFP6_DECOMPRESS_VECTOR_OPS_PER_ELEMENT vector
operations (an instruction count, see its comment). On ai100-standard that is 64 x 0.96 GHz / 8 = 7.7e9 elements/s
per core.

The tier is where the plan keeps the weights: DDR, or on-chip VTCM when a SoC's shards and cache fit there.

Every constant is listed with its status (calibrated, validated or assumed), source and derivation in
`constants.py` (rendered into docs/backend.md). Two are calibrated, on GPT-J-6B on ai100-standard only (batch 1,
prompt 1024, generate 1024, ctx 2048: 8.08 tok/s fp16, 13.9 MXFP6): DDR_EFFICIENCY and OP_OVERHEAD_S, solved together
by `python -m bench.cost_model_calibration --fit`. Every other published point is validation; that command prints
the residuals of both sets, and `tests/test_cost_model.py` asserts each point's band.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qeff_compiler.backends.ai100.devices import DeviceSpec
from qeff_compiler.backends.ai100.plan import PartitionPlan, Transfer
from qeff_compiler.backends.ai100.workload import OpWork

#: calibrated: sustained share of the DDR bandwidth (fitted with OP_OVERHEAD_S to GPT-J-6B fp16 and MXFP6 decode)
DDR_EFFICIENCY = 0.7705
#: calibrated: fixed cost per op per program call, launch and core synchronisation (fitted with DDR_EFFICIENCY)
OP_OVERHEAD_S = 1.81e-5
#: assumed: share of the tensor unit's peak sustained by large matmuls (validated by MLPerf BERT throughput)
COMPUTE_EFFICIENCY = 0.6
#: assumed: fp16 lanes of one core's vector unit per clock (a 1024-bit vector register holds 64 fp16 values)
VECTOR_FP16_LANES = 64
#: assumed: vector operations to turn one packed MXFP6 element into fp16 (per 64-lane vector: widen the packed bytes,
#: shift, mask, two table lookups E2M3 -> fp16, broadcast the block scale, multiply, store: 8)
MXFP6_DECOMPRESS_VECTOR_OPS_PER_ELEMENT = 8
#: NoCs per SoC [arch]; the on-chip tier streams over all of them (3 x 186 GB/s), an assumption
NOCS_PER_SOC = 3
#: assumed: latency of one PCIe P2P transfer
P2P_LATENCY_S = 5e-6


def vector_elements_per_s_per_core(device: DeviceSpec) -> float:
    """fp16 elements one core's vector unit processes per second: lanes x the clock the FP16 peak implies."""
    return VECTOR_FP16_LANES * device.core_clock_hz


def mxfp6_decompress_elements_per_s_per_core(device: DeviceSpec) -> float:
    """MXFP6 elements one core decompresses to fp16 per second: its vector rate / operations per element."""
    return vector_elements_per_s_per_core(device) / MXFP6_DECOMPRESS_VECTOR_OPS_PER_ELEMENT


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
    #: what the op is, by layer-independent role: a matmul's weight ("ffn.up_proj", "lm_head"), "attention", or a
    #: vector op's ATen name ("layer_norm", "gelu", "add")
    label: str = ""
    #: the parts of `core_s`: tensor unit, MXFP6 decompression, vector unit
    compute_s: float = 0.0
    decompress_s: float = 0.0
    vector_s: float = 0.0
    #: the fixed cost charged per op and call (`OP_OVERHEAD_S`)
    overhead_s: float = 0.0

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
    decompress = op.decompress_elements * core / mxfp6_decompress_elements_per_s_per_core(device)
    vector = op.vector_elements * core / vector_elements_per_s_per_core(device)
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
        label=op.label,
        compute_s=compute,
        decompress_s=decompress,
        vector_s=vector,
        overhead_s=OP_OVERHEAD_S,
    )


def _transfer_seconds(transfer: Transfer, device: DeviceSpec) -> float:
    """A ring collective: each participant sends its share of the payload over the NoC (between the cores of a SoC)
    or over PCIe P2P (between SoCs, plus a latency)."""
    if transfer.link == "noc":
        return transfer.bytes_per_participant / device.noc_bytes_per_s
    return transfer.bytes_per_participant / device.pcie_p2p_bytes_per_s + P2P_LATENCY_S
