"""The memory plan: what each SoC holds (weights, KV cache, activations), which tier serves it, and whether it fits.

Per SoC, from the partition plan and the two specializations' shapes (no weight data is read):
- weights: the SoC's shards as stored (fp16 values, int8 codes + scales, packed MXFP6 + scales), replicated
  weights counted on every SoC that holds a copy;
- KV cache: the SoC's heads of every layer at the cache's storage width (MXINT8: 8.25 bits per element, although
  the program's tensors hold the dequantized values);
- activations: the working set, modelled as the largest single op's activations (inputs and outputs, fp16, the
  device's activation type) over both specializations;
- per core: the VTCM working set of the largest op, modelled as the core's weight tile of that op (its own shards
  plus the SoC-shared copies the op reads), its slice of the op's KV cache and the op's activations, whole. An
  upper bound: the device compiler streams larger tiles from DDR.
Tier: "vtcm" when a SoC's weights + KV cache fit in the VTCM of the cores the plan uses (8 MiB each), else "ddr"
(LPDDR4x). `fits`: every SoC's weights + KV cache + activations within its DDR.

`check_fits` refuses a plan that does not fit with the numbers per SoC and the alternatives: the smallest
num_devices at the same precision and the precisions that fit on the same SoC count, estimated arithmetically from
parameter counts (fp16 2 B, int8 ~1 B, mxfp6 6.25/8 B per matmul parameter; replicated weights as they are; the KV
cache split over the SoCs), not from a re-compile.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from transformers import MptConfig

from qeff_compiler.backends.ai100.devices import MAX_DEVICES, DeviceSpec, get_device
from qeff_compiler.backends.ai100.layouts import logical_weights, reads_matmul_weight, reads_table
from qeff_compiler.backends.ai100.plan import PartitionPlan
from qeff_compiler.backends.ai100.workload import program_workload
from qeff_compiler.errors import InvalidArgumentError, ModelDoesNotFitError
from qeff_compiler.ir.graph_utils import weight_only_nodes
from qeff_compiler.ir.ops import SCHEMES
from qeff_compiler.ir.program import BINDING, Program
from qeff_compiler.numerics.mx import mx_storage_bits_per_element

#: bytes of one device activation element (fp16)
ACTIVATION_BYTES = 2
#: stored bytes per matmul parameter, for the fit estimates (int8 ignores its per-row scales: ~1 B)
BYTES_PER_PARAMETER = {
    "fp32": 4.0,
    "fp16": 2.0,
    "int8": 1.0,
    "w8a8": 1.0,
    "mxfp6": mx_storage_bits_per_element("fp6_e2m3") / 8,
}
#: precisions suggested when a model does not fit, most accurate first
_ALTERNATIVES = ("fp16", "int8", "mxfp6")


@dataclass(frozen=True)
class SocMemory:
    """One SoC's share of the model, in bytes."""

    device: int
    weight_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    #: DDR of the SoC
    capacity_bytes: int
    #: VTCM of the cores the plan uses on the SoC
    vtcm_bytes: int
    #: the largest per-core working set of one op, and that op
    peak_core_bytes: int
    peak_core_op: str

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.kv_cache_bytes + self.activation_bytes

    @property
    def tier(self) -> str:
        return "vtcm" if self.weight_bytes + self.kv_cache_bytes <= self.vtcm_bytes else "ddr"

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.capacity_bytes


@dataclass(frozen=True)
class ModelSize:
    """What the fit estimates scale with."""

    #: logical elements of the matmul weights (split over SoCs; their bytes depend on the precision)
    matmul_parameters: int
    #: per SoC: weights every SoC holds whole (norms, alibi_slopes, an untied embedding table), as stored
    replicated_bytes: int
    #: elements of an embedding table that is the lm_head's weight: a quantized lm_head leaves an fp16 copy per SoC
    tied_embedding_parameters: int
    #: the whole KV cache (all SoCs) at its storage width
    kv_cache_bytes: int


@dataclass(frozen=True)
class MemoryPlan:
    """Memory per SoC of a partitioned model on one device type."""

    device: str
    num_devices: int
    num_cores: int
    batch_size: int
    precision: str
    socs: tuple[SocMemory, ...]
    model: ModelSize

    @property
    def tier(self) -> str:
        """Where the weights and cache live: "vtcm" when every SoC's fit in its cores' VTCM, else "ddr"."""
        return "vtcm" if all(soc.tier == "vtcm" for soc in self.socs) else "ddr"

    @property
    def fits(self) -> bool:
        return all(soc.fits for soc in self.socs)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.update(tier=self.tier, fits=self.fits)
        return data


def plan_memory(
    prefill: Program, decode: Program, plan: PartitionPlan, device: DeviceSpec | str, batch_size: int | None = None
) -> MemoryPlan:
    """The memory plan of a compiled model's two specializations partitioned by `plan` on `device`.

    `batch_size` (default: the programs') scales the KV cache and activations for a what-if at another batch.
    """
    spec = get_device(device) if isinstance(device, str) else device
    program_batch = _batch(decode)
    batch = program_batch if batch_size is None else batch_size
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
    if plan.num_cores > spec.cores_per_soc:
        raise InvalidArgumentError(
            f"the plan uses {plan.num_cores} cores per SoC; {spec.name} has {spec.cores_per_soc}"
        )
    scale = batch / program_batch
    activations = {
        name: _activation_bytes(program, scale) for name, program in (("prefill", prefill), ("decode", decode))
    }
    working_set = max(max(per_op.values(), default=0) for per_op in activations.values())
    socs = tuple(
        _soc_memory(plan, spec, device_index, scale, working_set, activations)
        for device_index in range(plan.num_devices)
    )
    return MemoryPlan(
        device=spec.name,
        num_devices=plan.num_devices,
        num_cores=plan.num_cores,
        batch_size=batch,
        precision=_precision(decode),
        socs=socs,
        model=_model_size(decode, plan, scale),
    )


def _soc_memory(
    plan: PartitionPlan,
    spec: DeviceSpec,
    device: int,
    scale: float,
    working_set: int,
    activations: dict[str, dict[str, int]],
) -> SocMemory:
    peak_bytes, peak_op = _peak_core(plan, device, scale, activations)
    return SocMemory(
        device=device,
        weight_bytes=plan.weight_bytes(device),
        kv_cache_bytes=math.ceil(plan.kv_cache_bytes(device) * scale),
        activation_bytes=working_set,
        capacity_bytes=spec.ddr_bytes_per_soc,
        vtcm_bytes=plan.num_cores * spec.vtcm_bytes_per_core,
        peak_core_bytes=peak_bytes,
        peak_core_op=peak_op,
    )


def _peak_core(
    plan: PartitionPlan, device: int, scale: float, activations: dict[str, dict[str, int]]
) -> tuple[int, str]:
    """The largest per-core working set of one op on SoC `device`: weight tile + KV slice + activations."""
    best, best_op = 0, ""
    for op in plan.ops:
        shards = [s for s in plan.op_shards(op.node) if s.device == device]
        shared = sum(s.nbytes for s in shards if s.core is None)
        tiles = [shared + sum(s.nbytes for s in shards if s.core == core) for core in range(plan.num_cores)]
        kv = 0
        if op.kv_heads:
            kv = math.ceil(-(-op.kv_heads[device] // plan.num_cores) * op.kv_bytes_per_head * scale)
        size = max(tiles) + kv + max(per_op.get(op.node, 0) for per_op in activations.values())
        if size > best:
            best, best_op = size, op.node
    return best, best_op


def check_fits(memory: MemoryPlan) -> None:
    """Raise `ModelDoesNotFitError` when a SoC's weights + KV cache + activations exceed its DDR, naming needed
    vs available bytes per SoC and the alternatives that would fit (estimated from parameter counts)."""
    if memory.fits:
        return
    spec = get_device(memory.device)
    needs = "; ".join(
        f"SoC {soc.device} needs {_gb(soc.total_bytes)} (weights {_gb(soc.weight_bytes)} + KV cache "
        f"{_gb(soc.kv_cache_bytes)} + activations {_gb(soc.activation_bytes)}) but has {_gb(soc.capacity_bytes)} of DDR"
        for soc in memory.socs
        if not soc.fits
    )
    raise ModelDoesNotFitError(
        f"model does not fit on {memory.device} ({memory.num_devices} SoC x {memory.num_cores} cores, "
        f"{memory.precision}, batch {memory.batch_size}): {needs}. {_alternatives(memory, spec)}"
    )


def check_kv_cache_fits(
    config: MptConfig, batch_size: int, ctx_len: int, cache_bits: float, device: DeviceSpec, num_devices: int
) -> None:
    """Refuse, before anything is traced, a batch_size and ctx_len whose KV cache alone exceeds the DDR of all
    SoCs: an absurd batch fails at once instead of tracing and allocating host caches of that size."""
    cache_bytes = 2 * config.n_layers * batch_size * ctx_len * config.d_model * cache_bits / 8
    capacity = device.ddr_bytes_per_soc * num_devices
    if cache_bytes > capacity:
        largest = int(capacity // (2 * config.n_layers * ctx_len * config.d_model * cache_bits / 8))
        raise ModelDoesNotFitError(
            f"batch_size={batch_size} does not fit: its KV cache alone (ctx_len={ctx_len}) needs {_gb(cache_bytes)}, "
            f"more than the {_gb(capacity)} of DDR of {num_devices} SoC of {device.name}; at most batch_size={largest} "
            f"fits the cache (before weights), or lower ctx_len, use kv_cache_dtype=mxint8 or more SoCs"
        )


def weights_lower_bound(
    config: MptConfig, precision: str, batch_size: int, ctx_len: int, cache_bits: float, num_devices: int
) -> tuple[int, float]:
    """(matmul parameters, bytes per SoC) of the matmul weights and KV cache alone, split evenly: a lower bound of
    any memory plan's busiest SoC (it leaves out replicated weights, activations and an uneven split)."""
    per_layer = 12 * config.d_model**2  # Wqkv 3d², out_proj d², up_proj and down_proj 4d² each (HF's fixed FFN)
    parameters = config.n_layers * per_layer + config.vocab_size * config.d_model  # + lm_head
    cache_bytes = 2 * config.n_layers * batch_size * ctx_len * config.d_model * cache_bits / 8
    return parameters, (parameters * BYTES_PER_PARAMETER[precision] + cache_bytes) / num_devices


def check_weights_fit(
    config: MptConfig,
    precision: str,
    batch_size: int,
    ctx_len: int,
    cache_bits: float,
    device: DeviceSpec,
    num_devices: int,
) -> None:
    """Refuse, before anything is traced, a model whose matmul weights and KV cache alone exceed the DDR of each
    SoC (`weights_lower_bound`): it never refuses a model the memory plan would accept, and a 30B model on one
    SoC is refused in milliseconds instead of after its plan."""

    def per_soc(precision: str, devices: int) -> float:
        return weights_lower_bound(config, precision, batch_size, ctx_len, cache_bits, devices)[1]

    capacity = device.ddr_bytes_per_soc
    if per_soc(precision, num_devices) <= capacity:
        return
    parameters = weights_lower_bound(config, precision, batch_size, ctx_len, cache_bits, num_devices)[0]
    devices = next((n for n in range(1, MAX_DEVICES + 1) if per_soc(precision, n) <= capacity), None)
    smaller = [p for p in _ALTERNATIVES if per_soc(p, num_devices) <= capacity]
    hints = [f"num_devices={devices} at {precision}" if devices else f"{precision} fits on no {device.name} count"]
    hints += [f"precision {p} on {num_devices} SoC(s)" for p in smaller]
    raise ModelDoesNotFitError(
        f"model does not fit on {device.name} ({num_devices} SoC, {precision}, batch {batch_size}, ctx_len "
        f"{ctx_len}): its {parameters / 1e9:.2f} B matmul parameters ({BYTES_PER_PARAMETER[precision]:g} B each) and "
        f"KV cache alone need ~{_gb(per_soc(precision, num_devices))} per SoC, more than its {_gb(capacity)} of DDR "
        f"(estimated from parameter counts, before tracing); would fit by the same estimate: {'; '.join(hints)}"
    )


def estimate_soc_bytes(memory: MemoryPlan, precision: str, num_devices: int) -> float:
    """Estimated bytes per SoC of the same model at `precision` over `num_devices` SoCs (see the module docstring)."""
    size = memory.model
    tied_copy = size.tied_embedding_parameters * 2 if precision not in ("fp32", "fp16") else 0
    activations = max(soc.activation_bytes for soc in memory.socs)
    split = (size.matmul_parameters * BYTES_PER_PARAMETER[precision] + size.kv_cache_bytes) / num_devices
    return split + size.replicated_bytes + tied_copy + activations


def _alternatives(memory: MemoryPlan, spec: DeviceSpec) -> str:
    """The smallest SoC count at the same precision, and the smaller precisions that fit on as many SoCs."""
    capacity, current = spec.ddr_bytes_per_soc, memory.precision
    devices = _smallest_devices(memory, current, capacity)
    if devices is None:
        by_devices = f"{current} does not fit on up to {MAX_DEVICES} SoCs of {spec.name}"
    else:
        per_soc = _gb(estimate_soc_bytes(memory, current, devices))
        by_devices = f"num_devices={devices} would fit at {current} (~{per_soc} per SoC)"
    return (
        "Estimated from parameter counts (fp16 2 B, int8 ~1 B, mxfp6 0.78 B per matmul parameter, plus the KV cache "
        f"split over the SoCs): {by_devices}{_by_precision(memory, capacity)}."
    )


def _by_precision(memory: MemoryPlan, capacity: int) -> str:
    smaller = [p for p in _ALTERNATIVES if BYTES_PER_PARAMETER[p] < BYTES_PER_PARAMETER[memory.precision]]
    if not smaller:
        return ""
    sizes = {p: estimate_soc_bytes(memory, p, memory.num_devices) for p in smaller}
    fitting = [p for p in smaller if sizes[p] <= capacity]
    if fitting:
        listed = ", ".join(f"{p} (~{_gb(sizes[p])} per SoC)" for p in fitting)
        return f"; on {memory.num_devices} SoC(s) precision {listed} would fit"
    least = smaller[-1]
    devices = _smallest_devices(memory, least, capacity)
    where = f"from num_devices={devices}" if devices else f"on none up to {MAX_DEVICES} SoCs"
    return (
        f"; no precision fits on {memory.num_devices} SoC(s) ({least} needs ~{_gb(sizes[least])} per SoC); "
        f"{least} fits {where}"
    )


def _smallest_devices(memory: MemoryPlan, precision: str, capacity: int) -> int | None:
    fitting = (n for n in range(1, MAX_DEVICES + 1) if estimate_soc_bytes(memory, precision, n) <= capacity)
    return next(fitting, None)


def _gb(size: float) -> str:
    return f"{size / 1e9:.2f} GB"


# reading the programs --------------------------------------------------------------------------------------------


def _batch(program: Program) -> int:
    return next(s for s in program.inputs if s.role == "input_ids").shape[0]


def _activation_bytes(program: Program, scale: float) -> dict[str, int]:
    """Per device op: the fp16 bytes of its activation inputs (not weights, not the cache) and its output."""
    nodes = {node.name: node for node in program.graph.nodes}
    weight_only = weight_only_nodes(program.graph)
    cache_inputs = {s.name for s in program.inputs if s.role in ("past_key", "past_value")}
    caches = {n for n in program.graph.find_nodes(op="placeholder") if n.meta[BINDING][1] in cache_inputs}
    sizes = {}
    for op in program_workload(program):
        node = nodes[op.node]
        inputs = [n for n in node.all_input_nodes if n not in weight_only and n not in caches]
        output = node.meta["val"][0] if isinstance(node.meta["val"], (tuple, list)) else node.meta["val"]
        elements = sum(_float_numel(n.meta.get("val")) for n in inputs) + _float_numel(output)
        sizes[op.node] = math.ceil(elements * ACTIVATION_BYTES * scale)
    return sizes


def _float_numel(value: object) -> int:
    return value.numel() if isinstance(value, torch.Tensor) and value.is_floating_point() else 0


def _precision(program: Program) -> str:
    """The weight precision of a program, from its stored parts (the most compressed format present)."""
    names = list(program.weight_placeholders().values())
    for scheme in SCHEMES:  # the most compressed first: a w8a8 program holds int8 parts too
        if any(name.endswith(f".{scheme.values_part.suffix}") for name in names):
            return scheme.name
    dtypes = {program.weights[name].dtype for name in names}
    return "fp32" if torch.float32 in dtypes and torch.float16 not in dtypes else "fp16"


def _model_size(program: Program, plan: PartitionPlan, scale: float) -> ModelSize:
    """Parameter counts by kind, read from the program's matmul, attention and embedding ops."""
    matmuls: dict[str, int] = {}
    tables: dict[str, int] = {}
    parts: set[str] = set()
    for node in program.graph.nodes:
        if node.op != "call_function" or not reads_matmul_weight(node.target):
            continue
        target = tables if reads_table(node.target) else matmuls
        for weight in logical_weights(node):
            target[weight.main.name] = weight.shape[0] * weight.shape[1]
            parts.update(part.name for part in weight.parts)
    tied = {t: n for t, n in tables.items() if any(m == t or m.startswith(t + ".") for m in matmuls)}
    return ModelSize(
        matmul_parameters=sum(matmuls.values()),
        replicated_bytes=sum(
            program.weights[name].nbytes
            for name in plan.replicas
            if name not in parts or name in tables and name not in tied
        ),
        tied_embedding_parameters=sum(tied.values()),
        kv_cache_bytes=math.ceil(sum(plan.kv_cache_bytes(d) for d in range(plan.num_devices)) * scale),
    )
