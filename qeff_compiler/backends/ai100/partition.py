"""The partition plan: which SoC and core holds which slice of every weight, and the traffic the splits imply.

Tensor parallelism, as data. Across `num_devices` SoCs (PCIe P2P between them):
- attention by heads: SoC d gets a contiguous group of heads, i.e. those heads' rows of Wqkv's q, k and v blocks,
  the matching columns of out_proj and that slice of the KV cache; the SoCs' partial outputs are all-reduced;
- the FFN by channels: up_proj rows and down_proj columns over the same channel ranges (the GELU between them
  stays on its SoC); the partial outputs of down_proj are all-reduced;
- every other matmul (lm_head) by output rows (vocabulary); the outputs are all-gathered;
- weights nobody splits sensibly are replicated, one copy per SoC: norm weights, `alibi_slopes`, and an
  embedding table only the lookup reads (the fp16 copy a quantized tied lm_head leaves behind, or an untied one).
Within each SoC across `num_cores` cores (NoC between them):
- matmuls by output channel (rows of the SoC's slice), outputs all-gathered;
- attention by heads (rows of Wqkv, columns of out_proj), partial outputs all-reduced;
- an embedding table by vocabulary rows, each core looking up the ids it holds; a table that is also the lm_head's
  weight (tied, unquantized) is read where the lm_head's shards lie;
- a replicated weight is one copy per SoC that all its cores read (`Shard.core` None).
Heads, channels and rows are dealt out balanced; when they do not divide, the first cores (and SoCs) get one more:
32 heads on 14 cores run 3,3,3,3,2,... and `core_share` reports the busiest core, 3/32. Heads or channels fewer
than cores leave cores (or SoCs) idle.

Quantized weights. A matmul weight is a logical [out, in] matrix held by stored parts: fp16/fp32 values; int8
codes [out, in] + scales [out]; packed MXFP6 [out, 3·ceil(in/4)] + E8M0 scales [out, ceil(in/32)]; w8a8 codes
[out, in] + scales [out] + smoothing factors [in] + a scalar activation scale. Every part is sliced with its
weight: rows move with their output channel; the columns of packed MXFP6 are cut only at whole 32-element blocks
(24 packed bytes and one scale). FFN channels are dealt in blocks of 32 for an MXFP6 down_proj; where a head
boundary would cut a block (small head_dim), out_proj is split by output channel instead, after an all-gather of
the attention context. A part that does not vary along the split axis (the scales [out] of a column-split weight,
the smoothing factors of a row-split one, the scalar) is one copy per SoC, or per SoC for all its cores.

Shares. `core_share(op)` is the largest fraction of the op's whole work (all SoCs) on one core; `device_share(op)`
the largest fraction on one SoC. Matmuls count weight elements, attention heads; vector ops run on every SoC
(device share 1, except the FFN's GELU, which runs on its SoC's channels) split over cores by their last dimension.

Transfers (one program call): activations cross links as fp16 (the device's activation type), PCIe transfers as
MXINT8 (8.25 bits per element) with `p2p_format="mxint8"`. `Transfer.bytes` is the payload (the tensor gathered
or reduced); `bytes_per_participant` what each participant sends in a ring collective.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx

from qeff_compiler.backends.ai100.workload import OpWork, program_workload
from qeff_compiler.errors import InvalidArgumentError, PartitionError, VerificationError
from qeff_compiler.ir.graph_utils import weight_only_nodes
from qeff_compiler.ir.program import BINDING, Program
from qeff_compiler.ir.quant_ops import DEQUANTIZE_INT8, DEQUANTIZE_MXFP6, LINEAR_W8A8, LINEAR_W8A16
from qeff_compiler.numerics.mx import BLOCK_SIZE, mx_storage_bits_per_element
from qeff_compiler.passes.patch_attention import ATTENTION, ATTENTION_KV

aten = torch.ops.aten
Range = tuple[int, int]
#: a box of a logical weight: (rows, cols), each [start, stop)
Box = tuple[Range, Range]

#: bits per element of PCIe P2P activations, per `p2p_format`
P2P_FORMATS: dict[str, float] = {"fp16": 16.0, "mxint8": mx_storage_bits_per_element("int8")}
#: activations cross the NoC as fp16
NOC_BITS = 16.0
#: logical axes (0 rows = output channels, 1 cols = input channels) a stored part varies along, per layout
PART_AXES: dict[str, tuple[int, ...]] = {
    "matrix": (0, 1),
    "packed": (0, 1),
    "mxscale": (0, 1),
    "rows": (0,),
    "cols": (1,),
    "scalar": (),
}
#: (dequantize op, operand index) → layout of the stored part read there
_CHAIN_LAYOUTS = {
    (DEQUANTIZE_MXFP6, 0): "packed",
    (DEQUANTIZE_MXFP6, 1): "mxscale",
    (DEQUANTIZE_INT8, 0): "matrix",
    (DEQUANTIZE_INT8, 1): "rows",
    (aten._to_copy.default, 0): "matrix",
}
#: operand index → part layout of the quantized linears, whose weight parts are operands of their own
_FIXED_LAYOUTS = {LINEAR_W8A16: {1: "matrix", 2: "rows"}, LINEAR_W8A8: {1: "cols", 2: "scalar", 3: "matrix", 4: "rows"}}
#: operands of ops whose weight is one float value computed from stored parts (casts, dequantize ops)
_CHAIN_OPERANDS = {aten.linear.default: (1,), ATTENTION: (1, 2), ATTENTION_KV: (1, 2), aten.embedding.default: (0,)}
#: ops that read a matmul weight (or an embedding table) `logical_weights` understands
WEIGHTED_OPS = frozenset(_FIXED_LAYOUTS) | frozenset(_CHAIN_OPERANDS)
#: ops an FFN's channel split passes through unchanged (elementwise, one activation operand)
_CHANNELWISE = frozenset({aten._to_copy.default, aten.gelu.default})


# the plan as data ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """One slice of one stored weight part on one core (or, core None, one copy a whole SoC's cores read)."""

    weight: str
    device: int
    core: int | None
    #: [start, stop) per dimension of the stored tensor
    ranges: tuple[Range, ...]
    nbytes: int


@dataclass(frozen=True)
class Transfer:
    """One collective an op's split implies per program call. Unpacks as (link, bytes) for the cost model."""

    #: "noc" (between the cores of each SoC) or "pcie" (P2P between SoCs)
    link: str
    #: "all_gather" (every participant needs every slice) or "all_reduce" (partial sums)
    pattern: str
    #: what moves: "output" of the op, or the attention "context" before a row-split out_proj
    tensor: str
    elements: int
    bits_per_element: float
    participants: int

    @property
    def bytes(self) -> float:
        """The payload: the gathered or reduced tensor (per SoC for the NoC)."""
        return self.elements * self.bits_per_element / 8

    @property
    def bytes_per_participant(self) -> float:
        """What each participant sends in a ring collective: (p-1)/p of the payload, twice for an all-reduce."""
        ring = (self.participants - 1) / self.participants
        return (2 if self.pattern == "all_reduce" else 1) * ring * self.bytes

    def __iter__(self) -> Iterator[object]:
        return iter((self.link, self.bytes))


@dataclass(frozen=True)
class OpPlan:
    """How one device op (a `program_workload` node) is split."""

    node: str
    kind: str
    #: stored weight parts the op reads
    weights: tuple[str, ...]
    device_share: float
    core_share: float
    transfers: tuple[Transfer, ...] = ()
    #: attention with a cache: heads of the cache each SoC holds
    kv_heads: tuple[int, ...] = ()
    #: bytes of one head's keys and values over the whole cache, at the storage width (MXINT8: 8.25 bits)
    kv_bytes_per_head: int = 0


@dataclass(frozen=True)
class PartitionPlan:
    """Where every weight slice of a program lives and how each op is split; see the module docstring."""

    num_devices: int
    num_cores: int
    p2p_format: str
    shards: tuple[Shard, ...]
    #: stored parts every listed SoC holds whole (once per SoC); every other part is held once in all
    replicas: Mapping[str, tuple[int, ...]]
    ops: tuple[OpPlan, ...]

    @functools.cached_property
    def _ops(self) -> dict[str, OpPlan]:
        return {op.node: op for op in self.ops}

    @functools.cached_property
    def _by_weight(self) -> dict[str, list[Shard]]:
        found: dict[str, list[Shard]] = {}
        for shard in self.shards:
            found.setdefault(shard.weight, []).append(shard)
        return found

    def op(self, node: str) -> OpPlan:
        try:
            return self._ops[node]
        except KeyError:
            raise InvalidArgumentError(f"the partition plan has no op {node!r}") from None

    def core_share(self, node: str) -> float:
        return self.op(node).core_share

    def device_share(self, node: str) -> float:
        return self.op(node).device_share

    def transfers_for(self, node: str) -> tuple[Transfer, ...]:
        return self.op(node).transfers

    def weight_shards(self, weight: str) -> list[Shard]:
        """The shards of one stored part (empty for a weight the plan does not place)."""
        return self._by_weight.get(weight, [])

    def op_shards(self, node: str) -> tuple[Shard, ...]:
        return tuple(shard for name in self.op(node).weights for shard in self.weight_shards(name))

    def weight_bytes(self, device: int, core: int | None = None) -> int:
        """Stored weight bytes on SoC `device`; with `core`, only that core's own shards (not the SoC's shared copies)."""
        return sum(
            shard.nbytes for shard in self.shards if shard.device == device and (core is None or shard.core == core)
        )

    def kv_cache_bytes(self, device: int) -> int:
        """KV cache bytes SoC `device` holds (its heads of every layer), at the cache's storage width."""
        return sum(op.kv_heads[device] * op.kv_bytes_per_head for op in self.ops if op.kv_heads)

    def to_dict(self) -> dict[str, object]:
        """A JSON-able form for the artifact manifest: ranges, not element lists."""
        return {
            "num_devices": self.num_devices,
            "num_cores": self.num_cores,
            "p2p_format": self.p2p_format,
            "shards": [[s.weight, s.device, s.core, [list(r) for r in s.ranges], s.nbytes] for s in self.shards],
            "replicas": {name: list(devices) for name, devices in self.replicas.items()},
            "ops": [_op_to_dict(op) for op in self.ops],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PartitionPlan:
        return cls(
            num_devices=int(data["num_devices"]),
            num_cores=int(data["num_cores"]),
            p2p_format=str(data["p2p_format"]),
            shards=tuple(
                Shard(weight, device, core, tuple((int(a), int(b)) for a, b in ranges), nbytes)
                for weight, device, core, ranges, nbytes in data["shards"]
            ),
            replicas={name: tuple(devices) for name, devices in data["replicas"].items()},
            ops=tuple(_op_from_dict(op) for op in data["ops"]),
        )


def _op_to_dict(op: OpPlan) -> dict[str, object]:
    return {
        "node": op.node,
        "kind": op.kind,
        "weights": list(op.weights),
        "device_share": op.device_share,
        "core_share": op.core_share,
        "transfers": [
            [t.link, t.pattern, t.tensor, t.elements, t.bits_per_element, t.participants] for t in op.transfers
        ],
        "kv_heads": list(op.kv_heads),
        "kv_bytes_per_head": op.kv_bytes_per_head,
    }


def _op_from_dict(data: Mapping[str, object]) -> OpPlan:
    return OpPlan(
        node=data["node"],
        kind=data["kind"],
        weights=tuple(data["weights"]),
        device_share=float(data["device_share"]),
        core_share=float(data["core_share"]),
        transfers=tuple(Transfer(*fields) for fields in data["transfers"]),
        kv_heads=tuple(data["kv_heads"]),
        kv_bytes_per_head=int(data["kv_bytes_per_head"]),
    )


# logical weights: a matmul weight and the stored parts that hold it ------------------------------------------------


@dataclass(frozen=True)
class WeightPart:
    """A stored tensor holding (part of) a logical weight, and how it maps onto the logical [out, in] matrix."""

    name: str
    layout: str
    placeholder: torch.fx.Node


@dataclass(frozen=True)
class LogicalWeight:
    """A weight [out, in] as its consumer computes with it; `operands` are the consumer's arguments that read it."""

    shape: tuple[int, int]
    parts: tuple[WeightPart, ...]
    operands: tuple[int, ...]

    @property
    def main(self) -> WeightPart:
        """The part holding the values (plain, codes or packed MXFP6); its shards define the weight's boxes."""
        return next(p for p in self.parts if p.layout in ("matrix", "packed"))

    @property
    def packed(self) -> bool:
        return any(p.layout == "packed" for p in self.parts)


def logical_weights(node: torch.fx.Node) -> tuple[LogicalWeight, ...]:
    """The matmul weights of a linear, fused attention (Wqkv, out_proj) or embedding lookup (the table)."""
    if node.target in _FIXED_LAYOUTS:
        layouts = _FIXED_LAYOUTS[node.target]
        parts = [
            WeightPart(p.meta[BINDING][1], layout, p)
            for index, layout in layouts.items()
            for p in _weight_placeholders(node.args[index])
        ]
        codes = next(p for p in parts if p.layout == "matrix")
        return (LogicalWeight(tuple(codes.placeholder.meta["val"].shape), tuple(parts), tuple(layouts)),)
    if node.target not in _CHAIN_OPERANDS:
        raise PartitionError(f"{node.name}: {node.target} has no matmul weight the partitioner knows")
    return tuple(_chain_weight(node.args[index], index, node) for index in _CHAIN_OPERANDS[node.target])


def _chain_weight(operand: object, index: int, consumer: torch.fx.Node) -> LogicalWeight:
    """The weight behind a float operand computed from weights alone (casts and dequantize ops)."""
    if not isinstance(operand, torch.fx.Node):
        raise PartitionError(f"{consumer.name}: operand {index} is not a graph value")
    parts = []
    for placeholder in _weight_placeholders(operand):
        if placeholder is operand:
            layout = "matrix"
        else:
            user = next(u for u in placeholder.users if _feeds(u, operand))
            layout = _CHAIN_LAYOUTS.get((user.target, user.args.index(placeholder)))
            if layout is None:
                raise PartitionError(
                    f"{consumer.name}: weight {placeholder.meta[BINDING][1]!r} reaches operand {index} through "
                    f"{user.target}, which the partitioner cannot slice"
                )
        parts.append(WeightPart(placeholder.meta[BINDING][1], layout, placeholder))
    return LogicalWeight(tuple(operand.meta["val"].shape), tuple(parts), (index,))


def _weight_placeholders(operand: object) -> list[torch.fx.Node]:
    """The weight placeholders `operand` is computed from, by weight name; it must depend on nothing else."""
    if not isinstance(operand, torch.fx.Node):
        return []
    found: dict[torch.fx.Node, None] = {}
    stack = [operand]
    while stack:
        node = stack.pop()
        if node.op == "placeholder":
            if node.meta[BINDING][0] != "weight":
                raise PartitionError(f"{operand.name} reads input {node.name!r}; a weight operand must not")
            found[node] = None
        else:
            stack.extend(node.all_input_nodes)
    return sorted(found, key=lambda n: n.meta[BINDING][1])


def _feeds(node: torch.fx.Node, target: torch.fx.Node) -> bool:
    """Whether `target` is `node` or computed from it."""
    stack, seen = [target], set()
    while stack:
        current = stack.pop()
        if current is node:
            return True
        if current not in seen:
            seen.add(current)
            stack.extend(current.all_input_nodes)
    return False


def project(layout: str, box: Box, shape: tuple[int, int]) -> tuple[Range, ...]:
    """The ranges of a stored part (of `layout`) that hold the logical box `box` of a weight of `shape`."""
    rows, (c0, c1) = box
    cols = shape[1]
    if layout in ("packed", "mxscale") and (c0 % BLOCK_SIZE or (c1 % BLOCK_SIZE and c1 != cols)):
        raise PartitionError(f"columns [{c0}, {c1}) of a {cols}-column MXFP6 weight cut a {BLOCK_SIZE}-element block")
    if layout == "packed":
        return rows, (c0 // 4 * 3, 3 * -(-cols // 4) if c1 == cols else c1 // 4 * 3)
    if layout == "mxscale":
        return rows, (c0 // BLOCK_SIZE, -(-c1 // BLOCK_SIZE))
    by_axis = {"matrix": (rows, (c0, c1)), "rows": (rows,), "cols": ((c0, c1),), "scalar": ()}
    return by_axis[layout]


def logical_box(main: WeightPart, ranges: Sequence[Range], shape: tuple[int, int]) -> Box:
    """Inverse of `project` for a main part (plain/codes or packed MXFP6): the logical box a shard holds."""
    rows, (b0, b1) = ranges
    if main.layout == "packed":
        return tuple(rows), (b0 // 3 * 4, min(b1 // 3 * 4, shape[1]))
    return tuple(rows), (b0, b1)


# partitioning ------------------------------------------------------------------------------------------------------


def partition_program(
    program: Program, num_cores: int, num_devices: int = 1, p2p_format: str = "fp16"
) -> PartitionPlan:
    """Split `program` over `num_cores` cores of each of `num_devices` SoCs (see the module docstring).

    Reads shapes only, so it works on config-only (meta) programs. Transfers depend on the rows a call processes:
    make one plan per specialization (prefill, decode); their weight shards are the same.
    """
    for name, value in (("num_cores", num_cores), ("num_devices", num_devices)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    check_p2p_format(p2p_format)
    return _Planner(program, num_cores, num_devices, p2p_format).plan()


def check_p2p_format(p2p_format: str) -> None:
    """Raise `InvalidArgumentError` for a SoC-to-SoC format that is not in P2P_FORMATS."""
    if p2p_format not in P2P_FORMATS:
        raise InvalidArgumentError(f"p2p_format={p2p_format!r} is not one of {', '.join(P2P_FORMATS)}")


def balanced(total: int, parts: int, granule: int = 1) -> list[Range]:
    """`total` units in `parts` contiguous ranges, dealt in granules; the first ranges get one granule more."""
    granules = -(-total // granule)
    base, extra = divmod(granules, parts)
    ranges, start = [], 0
    for index in range(parts):
        stop = start + base + (index < extra)
        ranges.append((min(start * granule, total), min(stop * granule, total)))
        start = stop
    return ranges


@dataclass(frozen=True)
class _Split:
    """Where one logical weight's boxes go, and along which logical axis SoCs and cores divide it."""

    device_axis: int | None
    core_axis: int | None
    #: (device, core) → logical boxes; cores without work are absent
    boxes: dict[tuple[int, int], list[Box]]


_LINEARS = (aten.linear.default, LINEAR_W8A16, LINEAR_W8A8)


class _Planner:
    """Builds a PartitionPlan: matmul and attention ops place their weights first (an embedding may read a tied
    lm_head's shards), then vector ops, then every weight still unplaced is replicated."""

    def __init__(self, program: Program, num_cores: int, num_devices: int, p2p_format: str) -> None:
        self.program, self.cores, self.devices = program, num_cores, num_devices
        self.p2p_format, self.p2p_bits = p2p_format, P2P_FORMATS[p2p_format]
        self.nodes = {node.name: node for node in program.graph.nodes}
        self.weight_only = weight_only_nodes(program.graph)
        self.shards: list[Shard] = []
        self.replicas: dict[str, tuple[int, ...]] = {}
        #: stored part → the split that placed it (a tied weight read by two ops is placed once)
        self.placed: dict[str, _Split] = {}
        #: FFN first matmul → its channel ranges per SoC; the ops after it up to the second matmul → the same
        self.ffn_first: dict[str, list[Range]] = {}
        self.ffn_rest: dict[str, list[Range]] = {}
        self._find_ffns()

    def plan(self) -> PartitionPlan:
        work = program_workload(self.program)
        ops: dict[str, OpPlan] = {}
        for op in work:
            if op.kind == "attention":
                ops[op.node] = self._attention(op, self.nodes[op.node])
            elif op.kind == "matmul":
                ops[op.node] = self._matmul(op, self.nodes[op.node])
        for op in work:
            if op.kind == "vector":
                ops[op.node] = self._vector(op, self.nodes[op.node])
        for name in self.program.weight_placeholders().values():
            self._replicate(name)
        return PartitionPlan(
            num_devices=self.devices,
            num_cores=self.cores,
            p2p_format=self.p2p_format,
            shards=tuple(self.shards),
            replicas=dict(self.replicas),
            ops=tuple(ops[op.node] for op in work),
        )

    # ops -----------------------------------------------------------------------------------------------------

    def _attention(self, op: OpWork, node: torch.fx.Node) -> OpPlan:
        wqkv, out_proj = logical_weights(node)
        heads = op.parallel_units
        head_dim = wqkv.shape[0] // 3 // heads
        device_heads = balanced(heads, self.devices)
        core_heads = self._deal(device_heads)
        self._place(
            wqkv, _Split(0, 0, {key: _qkv_boxes(r, heads, head_dim, wqkv.shape[1]) for key, r in core_heads.items()})
        )
        out_split, gathered = self._out_proj_split(out_proj, device_heads, core_heads, head_dim)
        self._place(out_proj, out_split)
        busiest = max(_size(r) for r in device_heads)
        kv_heads, kv_per_head = (), 0
        if node.target == ATTENTION_KV:
            kv_heads, kv_per_head = tuple(_size(r) for r in device_heads), _kv_bytes_per_head(node)
        return OpPlan(
            node=op.node,
            kind=op.kind,
            weights=self._op_weights(node),
            device_share=busiest / heads,
            core_share=max(_size(r) for r in core_heads.values()) / heads,
            transfers=self._attention_transfers(out_split, gathered, _rows(node), busiest * head_dim, out_proj.shape),
            kv_heads=kv_heads,
            kv_bytes_per_head=kv_per_head,
        )

    def _out_proj_split(
        self,
        out_proj: LogicalWeight,
        device_heads: list[Range],
        core_heads: dict[tuple[int, int], Range],
        head_dim: int,
    ) -> tuple[_Split, tuple[bool, bool]]:
        """out_proj by its heads' columns where the parts allow it, else by output channel; and whether the
        context must be all-gathered first (across SoCs, within each SoC)."""
        rows, cols = out_proj.shape
        device_cols = [(a * head_dim, b * head_dim) for a, b in device_heads]
        if not _cuttable(out_proj, device_cols):
            return _Split(0, 0, self._row_boxes(balanced(rows, self.devices), [(0, cols)] * self.devices)), (True, True)
        core_cols = {key: (a * head_dim, b * head_dim) for key, (a, b) in core_heads.items()}
        if _cuttable(out_proj, list(core_cols.values())):
            return _Split(1, 1, {key: [((0, rows), c)] for key, c in core_cols.items()}), (False, False)
        return _Split(1, 0, self._row_boxes([(0, rows)] * self.devices, device_cols)), (False, True)

    def _attention_transfers(
        self, split: _Split, gathered: tuple[bool, bool], rows: int, soc_context: int, out_shape: tuple[int, int]
    ) -> tuple[Transfer, ...]:
        across, within = gathered
        d_out, context = out_shape
        cores, transfers = _busiest_cores(split), []
        if cores > 1 and within:
            transfers.append(Transfer("noc", "all_gather", "context", rows * soc_context, NOC_BITS, cores))
        if cores > 1:
            pattern = "all_gather" if split.core_axis == 0 else "all_reduce"
            transfers.append(Transfer("noc", pattern, "output", rows * _soc_rows(split), NOC_BITS, cores))
        if self.devices > 1 and across:
            transfers.append(Transfer("pcie", "all_gather", "context", rows * context, self.p2p_bits, self.devices))
        if self.devices > 1:
            pattern = "all_gather" if split.device_axis == 0 else "all_reduce"
            transfers.append(Transfer("pcie", pattern, "output", rows * d_out, self.p2p_bits, self.devices))
        return tuple(transfers)

    def _matmul(self, op: OpWork, node: torch.fx.Node) -> OpPlan:
        (weight,) = logical_weights(node)
        out, cols = weight.shape
        if node.name in self.ffn_rest:  # the FFN's second matmul: its SoC's channels are its input columns
            split = _Split(1, 0, self._row_boxes([(0, out)] * self.devices, self.ffn_rest[node.name]))
        else:
            device_rows = self.ffn_first.get(node.name) or balanced(out, self.devices)
            split = _Split(0, 0, self._row_boxes(device_rows, [(0, cols)] * self.devices))
        self._place(weight, split)
        return OpPlan(
            node=op.node,
            kind=op.kind,
            weights=self._op_weights(node),
            device_share=_area_share(split, weight.shape, by_device=True),
            core_share=_area_share(split, weight.shape, by_device=False),
            transfers=self._matmul_transfers(node, split, out),
        )

    def _matmul_transfers(self, node: torch.fx.Node, split: _Split, out: int) -> tuple[Transfer, ...]:
        """Outputs all-gathered over each SoC's cores. Across SoCs an FFN's first matmul keeps its channels (the
        second reads them where they are), the second all-reduces, any other matmul all-gathers."""
        rows, cores, transfers = _rows(node), _busiest_cores(split), []
        if cores > 1:
            transfers.append(Transfer("noc", "all_gather", "output", rows * _soc_rows(split), NOC_BITS, cores))
        if self.devices > 1 and node.name not in self.ffn_first:
            pattern = "all_reduce" if split.device_axis == 1 else "all_gather"
            transfers.append(Transfer("pcie", pattern, "output", rows * out, self.p2p_bits, self.devices))
        return tuple(transfers)

    def _vector(self, op: OpWork, node: torch.fx.Node) -> OpPlan:
        units = op.parallel_units
        transfers = self._embedding(node) if node.target == aten.embedding.default else ()
        if node.name in self.ffn_rest:  # between an FFN's matmuls: each SoC works on its channels
            channels = [_size(r) for r in self.ffn_rest[node.name]]
            device_share, core_share = max(channels) / units, max(-(-c // self.cores) for c in channels) / units
        else:
            device_share, core_share = 1.0, -(-units // self.cores) / units
        return OpPlan(op.node, op.kind, self._op_weights(node), device_share, core_share, transfers)

    def _embedding(self, node: torch.fx.Node) -> tuple[Transfer, ...]:
        """Place an embedding-only table (a copy per SoC, vocabulary rows over its cores); a table that is a tied
        lm_head's weight stays where the lm_head put it. Each row looked up is gathered from the core holding it."""
        (table,) = logical_weights(node)
        vocab, width = table.shape
        split = self.placed.get(table.main.name)
        if split is None:
            split = _Split(None, 0, self._row_boxes([(0, vocab)] * self.devices, [(0, width)] * self.devices))
            self._place(table, split)
        elements, cores, transfers = node.meta["val"].numel(), _busiest_cores(split), []
        if cores > 1:
            transfers.append(Transfer("noc", "all_gather", "output", elements, NOC_BITS, cores))
        if self.devices > 1 and split.device_axis is not None:
            transfers.append(Transfer("pcie", "all_gather", "output", elements, self.p2p_bits, self.devices))
        return tuple(transfers)

    # placing weights -----------------------------------------------------------------------------------------

    def _place(self, weight: LogicalWeight, split: _Split) -> None:
        """Shards of every stored part of `weight` per `split`. A part that does not vary along the SoC axis is one
        whole copy per SoC using the weight; one that does not vary along the core axis is shared by the cores."""
        for part in weight.parts:
            if part.name in self.placed:
                if self.placed[part.name] != split:
                    raise PartitionError(f"weight {part.name!r} is read by ops that split it differently")
                continue
            self.placed[part.name] = split
            axes = PART_AXES[part.layout]
            users = sorted({device for device, _ in split.boxes})
            if split.device_axis not in axes:
                self.replicas[part.name] = tuple(users)
            for device in users:
                self._place_on_device(part, weight.shape, split, device, shared=split.core_axis not in axes)

    def _place_on_device(
        self, part: WeightPart, shape: tuple[int, int], split: _Split, device: int, shared: bool
    ) -> None:
        per_core: dict[int | None, list[tuple[Range, ...]]] = {}
        for (d, core), boxes in split.boxes.items():
            if d != device:
                continue
            held = per_core.setdefault(None if shared else core, [])
            held.extend(r for r in (project(part.layout, box, shape) for box in boxes) if r not in held)
        for core, held in per_core.items():
            self.shards.extend(
                Shard(part.name, device, core, ranges, self._nbytes(part.name, ranges)) for ranges in held
            )

    def _replicate(self, name: str) -> None:
        """A weight no op split (norms, alibi_slopes): one whole copy per SoC, read by all its cores."""
        if name in self.placed:
            return
        spec = self.program.weights[name]
        ranges = tuple((0, size) for size in spec.shape)
        self.placed[name] = _Split(None, None, {})
        self.replicas[name] = tuple(range(self.devices))
        self.shards.extend(Shard(name, d, None, ranges, spec.nbytes) for d in range(self.devices))

    def _nbytes(self, name: str, ranges: tuple[Range, ...]) -> int:
        return math.prod(b - a for a, b in ranges) * self.program.weights[name].dtype.itemsize

    # helpers -------------------------------------------------------------------------------------------------

    def _find_ffns(self) -> None:
        """FFN pairs: a matmul whose input comes, through channelwise ops only, from another matmul (not itself the
        second of a pair). Both use the same channel ranges per SoC: blocks of 32 when the second is MXFP6."""
        for node in self.program.graph.nodes:
            if node.op != "call_function" or node.target not in _LINEARS:
                continue
            between, source = [], node.args[0]
            while isinstance(source, torch.fx.Node) and source.target in _CHANNELWISE:
                between.append(source)
                source = source.args[0]
            if isinstance(source, torch.fx.Node) and source.target in _LINEARS and source.name not in self.ffn_rest:
                (second,) = logical_weights(node)
                channels = balanced(second.shape[1], self.devices, BLOCK_SIZE if second.packed else 1)
                self.ffn_first[source.name] = channels
                self.ffn_rest.update({member.name: channels for member in (*between, node)})

    def _deal(self, device_ranges: Sequence[Range]) -> dict[tuple[int, int], Range]:
        """Each SoC's range dealt over its cores (balanced, contiguous); cores left without work are absent."""
        dealt = {}
        for device, outer in enumerate(device_ranges):
            for core, inner in enumerate(balanced(_size(outer), self.cores)):
                if _size(inner):
                    dealt[device, core] = _offset(inner, outer)
        return dealt

    def _row_boxes(
        self, device_rows: Sequence[Range], device_cols: Sequence[Range]
    ) -> dict[tuple[int, int], list[Box]]:
        """Each SoC's rows dealt over its cores, all with the SoC's columns (an SoC without columns gets nothing)."""
        return {
            (d, c): [(rows, device_cols[d])]
            for (d, c), rows in self._deal(device_rows).items()
            if _size(device_cols[d])
        }

    def _op_weights(self, node: torch.fx.Node) -> tuple[str, ...]:
        """The stored weights an op reads (through casts and dequantize ops)."""
        names: dict[str, None] = {}
        stack = [n for n in node.all_input_nodes if n in self.weight_only]
        while stack:
            current = stack.pop()
            if current.op == "placeholder":
                names[current.meta[BINDING][1]] = None
            stack.extend(current.all_input_nodes)
        return tuple(sorted(names))


def _cuttable(weight: LogicalWeight, col_ranges: Sequence[Range]) -> bool:
    """Whether every column range can be cut from the weight's parts (MXFP6: whole 32-element blocks)."""
    cols = weight.shape[1]
    return not weight.packed or all(
        a % BLOCK_SIZE == 0 and (b % BLOCK_SIZE == 0 or b == cols) for a, b in col_ranges if b > a
    )


def _busiest_cores(split: _Split) -> int:
    """Cores holding part of the weight on the SoC with the most."""
    counts: dict[int, int] = {}
    for device, _ in split.boxes:
        counts[device] = counts.get(device, 0) + 1
    return max(counts.values(), default=0)


def _soc_rows(split: _Split) -> int:
    """The most output rows one SoC produces (the union of its cores' row ranges)."""
    per_device: dict[int, set[Range]] = {}
    for (device, _), boxes in split.boxes.items():
        per_device.setdefault(device, set()).update(rows for rows, _ in boxes)
    return max(_union_size(ranges) for ranges in per_device.values())


def _union_size(ranges: set[Range]) -> int:
    total, reach = 0, None
    for a, b in sorted(ranges):
        if reach is None or a >= reach:
            total, reach = total + b - a, b
        elif b > reach:
            total, reach = total + b - reach, b
    return total


def _area_share(split: _Split, shape: tuple[int, int], by_device: bool) -> float:
    """The largest fraction of the weight's elements on one SoC (or core)."""
    areas: dict[object, int] = {}
    for (device, core), boxes in split.boxes.items():
        key = device if by_device else (device, core)
        areas[key] = areas.get(key, 0) + sum(_size(r) * _size(c) for r, c in boxes)
    return max(areas.values()) / (shape[0] * shape[1])


def _rows(node: torch.fx.Node) -> int:
    """Rows (batch x sequence) of an op's activation input."""
    return math.prod(node.args[0].meta["val"].shape[:-1])


def _qkv_boxes(heads: Range, n_heads: int, head_dim: int, cols: int) -> list[Box]:
    """Rows of Wqkv [3·n_heads·head_dim, d] for a head range: one box in each of the q, k and v blocks."""
    block = n_heads * head_dim
    return [((k * block + heads[0] * head_dim, k * block + heads[1] * head_dim), (0, cols)) for k in range(3)]


def _kv_bytes_per_head(node: torch.fx.Node) -> int:
    """Keys and values of one head over the whole cache [batch, ctx, head_dim] as the device stores them: MXINT8
    one byte per element plus one E8M0 scale per 32 along head_dim, else the cache tensor's dtype."""
    cache = node.args[5].meta["val"]
    batch, _, ctx, head_dim = cache.shape
    if node.kwargs.get("kv_cache_format") == "mxint8":
        per_token = head_dim + -(-head_dim // BLOCK_SIZE)
    else:
        per_token = head_dim * cache.element_size()
    return 2 * batch * ctx * per_token


def _offset(inner: Range, outer: Range) -> Range:
    return outer[0] + inner[0], outer[0] + inner[1]


def _size(r: Range) -> int:
    return r[1] - r[0]


# validation --------------------------------------------------------------------------------------------------------


def validate_plan(plan: PartitionPlan, program: Program) -> None:
    """Check that every weight element the program reads is held exactly once per replica: a replicated part once
    on each SoC listed for it (and nowhere else), any other part once over all SoCs; shards within bounds, sized
    right, of known weights; every device op planned. Raises VerificationError naming the weight and the problem."""
    read = set(program.weight_placeholders().values())
    unknown = sorted({s.weight for s in plan.shards} - read)
    if unknown:
        raise VerificationError(f"partition plan has shards of weights the program does not read: {unknown[:5]}")
    for shard in plan.shards:
        _check_shard(shard, program, plan)
    for name in sorted(read):
        shards = plan.weight_shards(name)
        shape = program.weights[name].shape
        if name in plan.replicas:
            holders = plan.replicas[name]
            strays = sorted({s.device for s in shards} - set(holders))
            if strays or not holders:
                raise VerificationError(
                    f"weight {name!r}: replicated on SoCs {list(holders)} but has shards on SoCs {strays}"
                )
            for device in holders:
                _check_cover(name, shape, [s for s in shards if s.device == device], f"on SoC {device}")
        else:
            _check_cover(name, shape, shards, "over all SoCs")
    missing = [op.node for op in program_workload(program) if op.node not in {o.node for o in plan.ops}]
    if missing:
        raise VerificationError(f"partition plan has no split for ops {missing[:5]}")


def _check_shard(shard: Shard, program: Program, plan: PartitionPlan) -> None:
    spec = program.weights[shard.weight]
    where = f"weight {shard.weight!r} shard on SoC {shard.device} core {shard.core}"
    if not 0 <= shard.device < plan.num_devices or not (shard.core is None or 0 <= shard.core < plan.num_cores):
        raise VerificationError(
            f"{where}: no such SoC/core in a plan of {plan.num_devices} SoCs x {plan.num_cores} cores"
        )
    if len(shard.ranges) != len(spec.shape) or any(
        not 0 <= a < b <= size for (a, b), size in zip(shard.ranges, spec.shape, strict=False)
    ):
        raise VerificationError(f"{where}: ranges {list(shard.ranges)} are empty or outside shape {list(spec.shape)}")
    expected = math.prod(b - a for a, b in shard.ranges) * spec.dtype.itemsize
    if shard.nbytes != expected:
        raise VerificationError(f"{where}: nbytes {shard.nbytes} but its ranges hold {expected} bytes")


def _check_cover(name: str, shape: tuple[int, ...], shards: list[Shard], scope: str) -> None:
    """Every element covered exactly once: counts per cell of the grid the shard boundaries cut the tensor into."""
    if not shards:
        raise VerificationError(f"weight {name!r}: no shard holds it {scope}")
    if not shape:
        if len(shards) != 1:
            raise VerificationError(f"weight {name!r}: scalar is held by {len(shards)} shards {scope}, not 1")
        return
    cuts = [sorted({0, size} | {bound for s in shards for bound in s.ranges[axis]}) for axis, size in enumerate(shape)]
    index = [{bound: i for i, bound in enumerate(c)} for c in cuts]
    counts = np.zeros([len(c) - 1 for c in cuts], dtype=np.int32)
    for shard in shards:
        counts[tuple(slice(at[a], at[b]) for at, (a, b) in zip(index, shard.ranges, strict=True))] += 1
    bad = np.argwhere(counts != 1)
    if bad.size:
        cell = tuple(int(i) for i in bad[0])
        where = [f"[{cuts[axis][i]}:{cuts[axis][i + 1]})" for axis, i in enumerate(cell)]
        held = int(counts[cell])
        problem = "is held by no shard" if held == 0 else f"is held by {held} shards (overlap)"
        raise VerificationError(f"weight {name!r}: elements {' x '.join(where)} {problem} {scope}")
