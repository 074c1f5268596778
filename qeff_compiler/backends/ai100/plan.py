"""The partition plan as data: which SoC and core holds which slice of every stored weight part, how each op is
split, and the traffic the splits imply; JSON-able for the artifact (`to_dict` / `from_dict` round-trip exactly).

Shares. `core_share(op)` is the largest fraction of the op's whole work (all SoCs) on one core; `device_share(op)`
the largest fraction on one SoC. Matmuls count weight elements, attention heads; vector ops run on every SoC
(device share 1, except the FFN's GELU, which runs on its SoC's channels) split over cores by their last dimension.

Transfers (one program call): activations cross links as fp16 (the device's activation type), PCIe transfers as
MXINT8 (8.25 bits per element) with `p2p_format="mxint8"`. `Transfer.bytes` is the payload (the tensor gathered
or reduced); `bytes_per_participant` what each participant sends in a ring collective.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.numerics.mx import mx_storage_bits_per_element

Range = tuple[int, int]
#: a box of a logical weight: (rows, cols), each [start, stop)
Box = tuple[Range, Range]

#: bits per element of PCIe P2P activations, per `p2p_format`
P2P_FORMATS: dict[str, float] = {"fp16": 16.0, "mxint8": mx_storage_bits_per_element("int8")}
#: activations cross the NoC as fp16
NOC_BITS = 16.0


def check_p2p_format(p2p_format: str) -> None:
    """Raise `InvalidArgumentError` for a SoC-to-SoC format that is not in P2P_FORMATS."""
    if p2p_format not in P2P_FORMATS:
        raise InvalidArgumentError(f"p2p_format={p2p_format!r} is not one of {', '.join(P2P_FORMATS)}")


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
        """Stored weight bytes on SoC `device`; with `core`, only that core's own shards (not the SoC's shared
        copies)."""
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
    def from_dict(cls, data: Mapping[str, Any]) -> PartitionPlan:
        """The plan of `to_dict`'s JSON (values typed Any: decoded JSON, its shape checked by `plan_schema`)."""
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


def _op_from_dict(data: Mapping[str, Any]) -> OpPlan:
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
