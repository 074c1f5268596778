"""Check a partition plan: every weight element the program reads is held exactly once per replica."""

from __future__ import annotations

import math

import numpy as np

from qeff_compiler.backends.ai100.plan import PartitionPlan, Shard
from qeff_compiler.backends.ai100.workload import program_workload
from qeff_compiler.errors import VerificationError
from qeff_compiler.ir.program import Program


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
