"""Where a simulated call's time goes: each op's charged time split by what the cost model charged it for.

An op costs max(memory streaming, core work) + a fixed cost + its transfers (`cost_model`). Its *charged* parts
are the bound side only: "bandwidth" when streaming bounds it, else "compute" (tensor unit), "decompress" (MXFP6
on the vector unit) and "vector" (elementwise work); then "fixed cost" (`OP_OVERHEAD_S`) and "transfer" (NoC or
PCIe P2P). The parts of every op sum to its time, so the parts of a step sum to the step: this answers "why this
many tokens/s" per category, per op role (`OpTiming.label`) and per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from qeff_compiler.backends.ai100.cost_model import OpTiming, StepTiming

#: the categories, in the order they are printed and drawn
CATEGORIES = ("bandwidth", "compute", "decompress", "vector", "fixed cost", "transfer")

Costs = dict[str, float]


def charged_parts(op: OpTiming) -> list[tuple[str, float]]:
    """The op's time as charged, in seconds and category order, zero parts left out; they sum to `op.seconds`."""
    if op.memory_s >= op.core_s:
        bound = [("bandwidth", op.memory_s)]
    else:
        bound = [("compute", op.compute_s), ("decompress", op.decompress_s), ("vector", op.vector_s)]
    parts = [*bound, ("fixed cost", op.overhead_s), ("transfer", op.transfer_s)]
    return [(name, seconds) for name, seconds in parts if seconds > 0]


def by_category(ops: Iterable[OpTiming]) -> Costs:
    """Seconds per category over `ops` (every category present, zeros included)."""
    costs = dict.fromkeys(CATEGORIES, 0.0)
    for op in ops:
        for name, seconds in charged_parts(op):
            costs[name] += seconds
    return costs


def grouped(step: StepTiming, key: Callable[[OpTiming], str]) -> dict[str, Costs]:
    """Seconds per category for each group of the step's ops, groups in order of first appearance."""
    groups: dict[str, list[OpTiming]] = {}
    for op in step.ops:
        groups.setdefault(key(op), []).append(op)
    return {name: by_category(ops) for name, ops in groups.items()}


def by_role(step: StepTiming) -> dict[str, Costs]:
    """Per op role ("attention", "ffn.up_proj", "layer_norm", ...), summed over the layers."""
    return grouped(step, lambda op: op.label or op.kind)


def by_layer(step: StepTiming) -> dict[str, Costs]:
    """Per transformer block ("layer 0", ...) and "outside layers" (embedding, final norm, lm_head)."""
    return grouped(step, lambda op: "outside layers" if op.layer is None else f"layer {op.layer}")


def layer_runs(layers: dict[str, Costs]) -> list[tuple[str, Costs]]:
    """Consecutive layers with the same costs merged ("layers 0-31"), each with one layer's costs; a uniform model
    is one line, a mixed-precision one shows where it differs."""
    runs: list[tuple[list[str], Costs]] = []
    for name, costs in layers.items():
        same = runs and name.startswith("layer ") and runs[-1][0][-1].startswith("layer ")
        if same and all(abs(costs[c] - runs[-1][1][c]) <= 1e-12 for c in CATEGORIES):
            runs[-1][0].append(name)
        else:
            runs.append(([name], costs))
    merged = []
    for names, costs in runs:
        label = names[0] if len(names) == 1 else f"layers {names[0].split()[1]}-{names[-1].split()[1]} (each)"
        merged.append((label, costs))
    return merged
