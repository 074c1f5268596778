"""`qeffc estimate` and `inspect`: where the simulated time goes (bandwidth, compute, decompression, vector work,
fixed cost per op, transfers), per op role and per layer, so that a decode rate is explained on one screen."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from qeff_compiler.cli.app import console, duration

if TYPE_CHECKING:  # the backend loads torch; this module is imported by `qeffc --help`
    from qeff_compiler.backends.ai100.breakdown import Costs
    from qeff_compiler.backends.ai100.simulator import SimulatedDevice


def print_cost_breakdown(simulation: SimulatedDevice) -> None:
    """Two tables for one decode step (per op role, per layer) and a line for a prefill chunk; shares of the step."""
    from qeff_compiler.backends.ai100.breakdown import CATEGORIES, by_category, by_layer, by_role, layer_runs

    step = simulation.steps["decode"]
    total = step.seconds
    per_role = sorted(by_role(step).items(), key=lambda item: -sum(item[1].values()))
    title = f"where a decode step's {duration(total)} goes (simulated), per op role over all layers"
    console.print(_table(title, "op role", [*per_role, ("all", by_category(step.ops))], total))
    runs = layer_runs(by_layer(step))
    console.print(_table("per layer", "layer", runs, total))
    prefill = simulation.steps["prefill"]
    shares = _shares(by_category(prefill.ops), prefill.seconds)
    console.print(
        f"prefill chunk {duration(prefill.seconds)} (simulated): "
        + ", ".join(f"{name} {share}" for name, share in zip(CATEGORIES, shares, strict=True) if share != "-"),
        highlight=False,
        soft_wrap=True,
    )


def _table(title: str, first: str, rows: list[tuple[str, Costs]], total: float) -> Table:
    from qeff_compiler.backends.ai100.breakdown import CATEGORIES

    table = Table(title=title, title_justify="left")
    table.add_column(first)
    for column in (*CATEGORIES, "time"):
        table.add_column(column, justify="right")
    for name, costs in rows:
        table.add_row(name, *_shares(costs, total), duration(sum(costs.values())))
    return table


def _shares(costs: Costs, total: float) -> list[str]:
    """Each category as a share of `total` ("-" for none)."""
    from qeff_compiler.backends.ai100.breakdown import CATEGORIES

    return [_share(costs[name] / total) for name in CATEGORIES]


def _share(share: float) -> str:
    return "-" if share <= 0 else "<0.1%" if share < 0.0005 else f"{100 * share:.1f}%"
