"""`qeffc inspect --plot`: per-core utilisation of a decode step and the memory plan per SoC, drawn with matplotlib."""

from __future__ import annotations

from pathlib import Path

from qeff_compiler.atomic import atomic_file
from qeff_compiler.backends.ai100.simulator import SimulatedDevice
from qeff_compiler.backends.ai100.trace import core_busy_fractions


def core_utilisation(simulation: SimulatedDevice) -> dict[tuple[int, int], float]:
    """Per (SoC, core): the share of a decode step it computes (its part of each op's core time, over the step)."""
    step, plan = simulation.steps["decode"], simulation.plans["decode"]
    busy = core_busy_fractions(step, plan)
    return {
        key: sum(op.core_s * share for op, share in zip(step.ops, series, strict=True)) / step.seconds
        for key, series in busy.items()
    }


def plot_simulation(simulation: SimulatedDevice, path: str | Path) -> None:
    """Two panels: core utilisation during a decode step, and each SoC's memory use against its capacity."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a server
    from matplotlib import pyplot

    utilisation = core_utilisation(simulation)
    figure, (cores, memory) = pyplot.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{device}.{core}" for device, core in utilisation]
    cores.bar(labels, [100 * value for value in utilisation.values()], color="tab:blue")
    cores.set(
        title=f"core utilisation, decode step (simulated, {simulation.device})", xlabel="SoC.core", ylabel="% of step"
    )
    cores.tick_params(axis="x", labelrotation=90)
    socs = simulation.memory.socs
    names = [f"SoC {soc.device}" for soc in socs]
    bottom = [0.0] * len(socs)
    for field, color in (
        ("weight_bytes", "tab:blue"),
        ("kv_cache_bytes", "tab:orange"),
        ("activation_bytes", "tab:green"),
    ):
        values = [getattr(soc, field) / 1e9 for soc in socs]
        memory.bar(names, values, bottom=bottom, color=color, label=field.removesuffix("_bytes").replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    memory.plot(names, [soc.capacity_bytes / 1e9 for soc in socs], "k_", markersize=40, label="DDR capacity")
    memory.plot(names, [soc.vtcm_bytes / 1e9 for soc in socs], "r_", markersize=40, label="VTCM of the cores used")
    memory.set(title=f"memory plan (weights in {simulation.memory.tier.upper()})", ylabel="GB", yscale="log")
    memory.legend(loc="center right")
    figure.tight_layout()
    with atomic_file(path) as temp:  # the temporary name keeps the suffix, from which matplotlib picks the format
        figure.savefig(temp)
    pyplot.close(figure)
