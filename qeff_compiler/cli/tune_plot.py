"""`qeffc tune --plot`: every configuration the search timed, its Pareto front, the budget and the choice."""

from __future__ import annotations

from pathlib import Path

from qeff_compiler.atomic import atomic_file
from qeff_compiler.tune import TuneResult


def plot_tune(result: TuneResult, path: str | Path) -> None:
    """Simulated end-to-end tok/s (x) against the perplexity increase over fp32 HF (y): each configuration a dot
    coloured by precision, the front a line, the budget a dashed line, the chosen configuration circled."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a server
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(9, 6), layout="constrained")
    precisions = sorted({c.setting.precision for c in result.candidates})
    colours = {name: f"C{index}" for index, name in enumerate(precisions)}  # matplotlib's colour cycle
    for name in precisions:
        mine = [c for c in result.candidates if c.setting.precision == name]
        axes.scatter(
            [c.tokens_per_s for c in mine],
            [100 * c.perplexity_increase for c in mine],
            s=14,
            alpha=0.5,
            color=colours[name],
            label=f"{name} ({len(mine)})",
        )
    front = sorted(result.pareto_front, key=lambda c: c.tokens_per_s)
    axes.plot(
        [c.tokens_per_s for c in front],
        [100 * c.perplexity_increase for c in front],
        "k.-",
        drawstyle="steps-post",
        label="Pareto front",
    )
    axes.axhline(100 * result.max_ppl_increase, color="tab:red", linestyle="--", label="perplexity budget")
    if result.chosen is not None:
        axes.scatter(
            [result.chosen.tokens_per_s],
            [100 * result.chosen.perplexity_increase],
            s=160,
            facecolors="none",
            edgecolors="tab:red",
            linewidths=2,
            label=f"chosen: {result.chosen.describe()}",
        )
    axes.set(
        title=f"tune on {result.device}: {len(result.candidates)} configurations (simulated speed, measured accuracy)",
        xlabel="simulated end-to-end tok/s per sequence",
        ylabel="perplexity increase over fp32 HF (%)",
    )
    axes.grid(alpha=0.3)
    figure.legend(loc="outside lower center", ncols=3, fontsize="small")
    with atomic_file(path) as temp:  # the temporary name keeps the suffix, from which matplotlib picks the format
        figure.savefig(temp)
    pyplot.close(figure)
