"""Plots of a simulated device, drawn with matplotlib: `qeffc inspect --plot` (per-core utilisation of a decode step
and the memory plan per SoC) and `qeffc estimate --plot` (where a decode step's time goes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qeff_compiler.atomic import atomic_file
from qeff_compiler.backends.ai100.breakdown import CATEGORIES, by_layer, by_role
from qeff_compiler.backends.ai100.simulator import SimulatedDevice
from qeff_compiler.backends.ai100.trace import core_busy_fractions

#: one colour per cost category, the same in every plot
CATEGORY_COLOURS = dict(
    zip(CATEGORIES, ("tab:blue", "tab:orange", "tab:red", "tab:purple", "tab:gray", "tab:green"), strict=True)
)


def core_utilisation(simulation: SimulatedDevice) -> dict[tuple[int, int], float]:
    """Per (SoC, core): the share of a decode step it computes (its part of each op's core time, over the step)."""
    step, plan = simulation.steps["decode"], simulation.plans["decode"]
    busy = core_busy_fractions(step, plan)
    return {
        key: sum(op.core_s * share for op, share in zip(step.ops, series, strict=True)) / step.seconds
        for key, series in busy.items()
    }


def plot_simulation(simulation: SimulatedDevice, path: str | Path) -> None:
    """Two panels: core utilisation during a decode step, and each SoC's memory use (linear axis, one bar per
    kind, so a small KV cache stays visible) with the capacities named in the legend."""
    pyplot = _pyplot()
    utilisation = core_utilisation(simulation)
    figure, (cores, memory) = pyplot.subplots(1, 2, figsize=(13, 5), layout="constrained")
    labels = [f"SoC {device} core {core}" for device, core in utilisation]
    cores.bar(range(len(labels)), [100 * value for value in utilisation.values()], color="tab:blue")
    cores.set_xticks(range(len(labels)), labels, rotation=90, fontsize="small")
    cores.set(title="core utilisation during a decode step", ylabel="% of the step")
    figure.suptitle(f"simulated {simulation.device}")
    socs = simulation.memory.socs
    kinds = (("weights", "weight_bytes"), ("KV cache", "kv_cache_bytes"), ("activations", "activation_bytes"))
    largest = max(max(getattr(soc, field) for _, field in kinds) for soc in socs)
    unit, scale = _unit(largest)
    width = 0.8 / len(kinds)
    for index, (name, field) in enumerate(kinds):
        values = [getattr(soc, field) / scale for soc in socs]
        positions = [soc + (index - 1) * width for soc in range(len(socs))]
        bars = memory.bar(positions, values, width=width, label=name)
        memory.bar_label(bars, [f"{v:.3g}" for v in values], fontsize="small")
    memory.set_xticks(range(len(socs)), [f"SoC {soc.device}" for soc in socs])
    soc = socs[0]
    tier = "on-chip VTCM" if simulation.memory.tier == "vtcm" else "DDR"
    memory.set(
        title=f"memory per SoC (weights, KV cache streamed from {tier})",
        ylabel=unit,
        xlabel=f"capacity per SoC: DDR {soc.capacity_bytes / 1e9:.3g} GB, VTCM of the cores used "
        f"{soc.vtcm_bytes / 1e6:.3g} MB",
    )
    memory.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=3)
    _save(figure, path)


def plot_costs(simulation: SimulatedDevice, path: str | Path, what: str) -> None:
    """Where a decode step's time goes: per op role (summed over layers) and per layer, stacked by cost category
    (`breakdown`), so the bound of each part is visible next to the fixed cost per op."""
    pyplot = _pyplot()
    step = simulation.steps["decode"]
    unit, scale = _time_unit(step.seconds)
    roles = sorted(by_role(step).items(), key=lambda item: sum(item[1].values()))
    layers = list(by_layer(step).items())
    figure, (left, right) = pyplot.subplots(
        1, 2, figsize=(14, max(4.5, 0.35 * len(roles) + 2)), layout="constrained", width_ratios=(1, 1.4)
    )
    _stacked(left, [name for name, _ in roles], [costs for _, costs in roles], scale, horizontal=True)
    left.set(title="per op role, all layers", xlabel=f"simulated {unit} per decode step")
    _stacked(right, [_short(name) for name, _ in layers], [c for _, c in layers], scale, horizontal=False)
    right.set(title="per layer", ylabel=f"simulated {unit}")
    right.tick_params(axis="x", labelrotation=90 if len(layers) > 16 else 0, labelsize="small")
    figure.suptitle(
        f"{what} on {simulation.device}: a decode step is {step.seconds / scale:.3g} {unit} "
        f"({1 / step.seconds:,.1f} simulated tok/s per sequence)"
    )
    handles = [pyplot.Rectangle((0, 0), 1, 1, color=CATEGORY_COLOURS[c]) for c in CATEGORIES]
    figure.legend(handles, CATEGORIES, loc="outside lower center", ncols=len(CATEGORIES))
    _save(figure, path)


def _stacked(axes: Any, names: list[str], costs: list[dict[str, float]], scale: float, horizontal: bool) -> None:
    base = [0.0] * len(names)
    for category in CATEGORIES:
        values = [c[category] / scale for c in costs]
        if not any(values):
            continue
        if horizontal:
            axes.barh(names, values, left=base, color=CATEGORY_COLOURS[category])
        else:
            axes.bar(names, values, bottom=base, color=CATEGORY_COLOURS[category])
        base = [b + v for b, v in zip(base, values, strict=True)]


def _short(layer: str) -> str:
    return layer.removeprefix("layer ") if layer.startswith("layer ") else "outside"


def _unit(nbytes: float) -> tuple[str, float]:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return unit, scale
    return "bytes", 1.0


def _time_unit(seconds: float) -> tuple[str, float]:
    return ("s", 1.0) if seconds >= 1 else ("ms", 1e-3) if seconds >= 1e-3 else ("µs", 1e-6)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a server
    from matplotlib import pyplot

    return pyplot


def _save(figure: Any, path: str | Path) -> None:
    with atomic_file(path) as temp:  # the temporary name keeps the suffix, from which matplotlib picks the format
        figure.savefig(temp)
    figure.clear()
    _pyplot().close(figure)
