"""Partitioning: split a program over the cores of each SoC and over SoCs (tensor parallelism) into a plan.

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

FFN channels are dealt in blocks of 32 for an MXFP6 down_proj; where a head boundary would cut a block (small
head_dim), out_proj is split by output channel instead, after an all-gather of the attention context. The plan
is data (`ai100.plan`); how each op's weights map to stored parts is `ai100.layouts`; `ai100.plan_check` checks a
plan covers every weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch.fx

from qeff_compiler.backends.ai100.layouts import LogicalWeight, WeightPart, logical_weights, project, reads_table
from qeff_compiler.backends.ai100.plan import (
    NOC_BITS,
    P2P_FORMATS,
    Box,
    OpPlan,
    PartitionPlan,
    Range,
    Shard,
    Transfer,
    check_p2p_format,
)
from qeff_compiler.backends.ai100.plan_check import validate_plan
from qeff_compiler.backends.ai100.workload import OpWork, program_workload
from qeff_compiler.errors import InvalidArgumentError, PartitionError
from qeff_compiler.ir.graph_utils import node_arg, weight_only_nodes
from qeff_compiler.ir.ops import PART_AXES, traits
from qeff_compiler.ir.program import BINDING, Program
from qeff_compiler.numerics.mx import BLOCK_SIZE

__all__ = ["PartitionPlan", "balanced", "check_p2p_format", "partition_program", "validate_plan"]


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
        kv_heads: tuple[int, ...]
        kv_heads, kv_per_head = (), 0
        if traits(node.target).stateful:
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
        transfers = self._embedding(node) if reads_table(node.target) else ()
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
        for owner, held in per_core.items():
            self.shards.extend(
                Shard(part.name, device, owner, ranges, self._nbytes(part.name, ranges)) for ranges in held
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
            if node.op != "call_function" or not traits(node.target).linear:
                continue
            between, source = [], node.args[0]
            while isinstance(source, torch.fx.Node) and traits(source.target).elementwise:
                between.append(source)
                source = source.args[0]
            if isinstance(source, torch.fx.Node) and traits(source.target).linear and source.name not in self.ffn_rest:
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
    return math.prod(node_arg(node, 0).meta["val"].shape[:-1])


def _qkv_boxes(heads: Range, n_heads: int, head_dim: int, cols: int) -> list[Box]:
    """Rows of Wqkv [3·n_heads·head_dim, d] for a head range: one box in each of the q, k and v blocks."""
    block = n_heads * head_dim
    return [((k * block + heads[0] * head_dim, k * block + heads[1] * head_dim), (0, cols)) for k in range(3)]


def _kv_bytes_per_head(node: torch.fx.Node) -> int:
    """Keys and values of one head over the whole cache [batch, ctx, head_dim] as the device stores them: MXINT8
    one byte per element plus one E8M0 scale per 32 along head_dim, else the cache tensor's dtype."""
    cache = node_arg(node, 5).meta["val"]
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
