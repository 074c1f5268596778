"""PNG plots of bench/results.json (matplotlib, written without a display)."""

from __future__ import annotations

from pathlib import Path

from qeff_compiler.atomic import atomic_file
from qeff_compiler.evaluate import ACCURACY_GATES, MXINT8_CACHE_GATE

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
from matplotlib import pyplot  # noqa: E402 (after choosing the backend)


def write_plots(results: dict, directory: Path) -> list[Path]:
    """One PNG per section that has figures; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    sections = results["sections"]
    written = []
    for name, draw in PLOTS.items():
        if sections.get(name):
            figure, axes = pyplot.subplots(figsize=(9, 4.5))
            draw(axes, sections[name])
            figure.tight_layout()
            path = directory / f"{name}.png"
            with atomic_file(path) as temp:
                figure.savefig(temp)
            pyplot.close(figure)
            written.append(path)
    return written


def _grouped_bars(axes, groups: list[str], series: dict[str, list[float]]) -> None:  # noqa: ANN001
    width = 0.8 / max(len(series), 1)
    for index, (label, values) in enumerate(series.items()):
        axes.bar([g + index * width for g in range(len(groups))], values, width, label=label)
    axes.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups, fontsize=8)
    axes.legend(fontsize=8)


def _host_precision(axes, rows: list[dict]) -> None:  # noqa: ANN001
    models = list(dict.fromkeys(r["model"] for r in rows))
    precisions = list(dict.fromkeys(r["precision"] for r in rows))
    series = {p: [next(r["time_vs_fp32"] for r in rows if r["model"] == m and r["precision"] == p) for m in models] for p in precisions}
    _grouped_bars(axes, models, series)
    axes.set(title="host decode step time vs fp32 (same run; lower is faster)", ylabel="time / fp32 time")


def _decode_cost(axes, rows: list[dict]) -> None:  # noqa: ANN001
    """The ratio late / early per model on a linear axis (1 = no growth), each bar labelled with its two times."""
    labels = [r["model"].replace(" (", "\n(") for r in rows]
    ratios = [r["late_median_ms"] / r["early_median_ms"] for r in rows]
    bars = axes.bar(labels, ratios, width=0.5)
    axes.bar_label(bars, [f"{r['early_median_ms']:.2f} → {r['late_median_ms']:.2f} ms" for r in rows], fontsize=8)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_ylim(0, max(1.5, max(ratios) * 1.2))
    axes.tick_params(axis="x", labelsize=8)
    axes.set(title="host decode step late vs early in the cache (median; 1 = no growth)",
             ylabel="step time at ctx_len − 16 / at position 16")


def _peers(axes, rows: list[dict]) -> None:  # noqa: ANN001
    def group(r: dict) -> str:
        model = "shipped" if "shipped" in r["model"] else r["model"].split(" (")[0]
        return f"{model}\nbatch {r['batch']}"

    groups = list(dict.fromkeys(group(r) for r in rows))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    series = {
        s: [next((r["decode_tokens_per_s"]["median"] for r in rows if group(r) == g and r["system"] == s), 0.0) for g in groups]
        for s in systems
    }
    _grouped_bars(axes, groups, series)
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.legend(fontsize=7, ncols=3)
    axes.set(title="host decode throughput (tokens/s, median; same run)", ylabel="tokens/s (log scale)")


def _compile_layers(axes, section: dict) -> None:  # noqa: ANN001
    rows = [r for r in section["rows"] if r["model"] != "mpt-30b"]
    axes.plot([r["layers"] for r in rows], [r["compile_s"] for r in rows], "o-", label="compile (s), MPT-7B width")
    fit = section["fit_compile_s"]
    xs = [r["layers"] for r in rows]
    axes.plot(xs, [fit["per_layer"] * x + fit["intercept"] for x in xs], "--", label=f"fit: {fit['per_layer']:.2f} s/layer")
    for row in section["rows"]:
        if row["model"] == "mpt-30b":
            axes.plot([row["layers"]], [row["compile_s"]], "s", label="MPT-30B (d_model 7168)")
    axes.set(title="config-only compile time vs layers", xlabel="layers", ylabel="seconds")
    axes.legend(fontsize=8)


def _simulated(axes, rows: list[dict]) -> None:  # noqa: ANN001
    rows = [r for r in rows if r["simulated"] is not None and r["metric"] == "decode tok/s"]
    groups = [f"{r['model']}\n{r['precision']}, {r['device'].removeprefix('ai100-')}" for r in rows]
    series = {
        "published": [r["published"] or 0.0 for r in rows],
        "simulated": [r["simulated"] for r in rows],
        "bandwidth roofline": [r["roofline"] for r in rows],
    }
    _grouped_bars(axes, groups, series)
    axes.set(title="AI 100 decode tok/s: published vs simulated vs roofline", ylabel="tokens/s")


def _accuracy(axes, rows: list[dict]) -> None:  # noqa: ANN001
    """Each row's perplexity increase, with its gate (the precision's, plus an MXINT8 cache's allowance) drawn."""
    labels = [r["precision"] + (f"\n{r['kv_cache_dtype']} KV" if r.get("kv_cache_dtype") else "") for r in rows]
    increases = [100 * (r["perplexity_vs_reference"] - 1) for r in rows]
    gates = [100 * _gate(r) for r in rows]
    bars = axes.bar(labels, increases, label="perplexity increase")
    axes.bar_label(bars, [f"{v:+.3f}" for v in increases], fontsize=7)
    axes.scatter(labels, gates, marker="_", s=900, color="tab:red", linewidths=2, label="gate (largest allowed)")
    for label, gate in zip(labels, gates, strict=True):
        axes.annotate(f"{gate:g}", (label, gate), textcoords="offset points", xytext=(0, 4), ha="center",
                      fontsize=7, color="tab:red")
    axes.tick_params(axis="x", labelsize=8)
    axes.legend(fontsize=8, loc="upper left")
    axes.set(title="perplexity increase vs fp32 HF, and each row's gate (shipped model)", ylabel="%")


def _gate(row: dict) -> float:
    """The largest perplexity increase `EvaluationReport.gate_failures` allows the row."""
    gate, _ = ACCURACY_GATES[row["precision"]]
    cache = row.get("kv_cache_dtype")
    if cache == "fp16":
        gate += ACCURACY_GATES["fp16"][0]
    elif cache == "mxint8":
        gate += MXINT8_CACHE_GATE
    return gate


def _pruning(axes, section: dict) -> None:  # noqa: ANN001
    rows = section["shipped"]
    labels = [f"FFN {100 * r['prune_ffn']:g} %, heads {100 * r['prune_heads']:g} %\n{r['score']}" for r in rows]
    axes.bar(labels, [100 * (r["perplexity"] / r["reference_perplexity"] - 1) for r in rows])
    axes.tick_params(axis="x", labelsize=7)
    axes.set(title="perplexity increase vs fp32 HF per pruning level (shipped model)", ylabel="%")


def _serving(axes, section: dict) -> None:  # noqa: ANN001
    """Two panels against the offered load as a share of each curve's own capacity (so the simulated device and
    this machine, orders of magnitude apart, share the x axis): throughput, and TTFT p50 (solid) / p99 (dashed);
    log y scales."""
    figure = axes.figure
    axes.remove()
    throughput, ttft = figure.subplots(1, 2)
    for clock, marker in (("device", "o"), ("host", "s")):
        for slots in sorted({r["full_batch_size"] for r in section["curves"]}):
            rows = [r for r in section["curves"] if r["clock"] == clock and r["full_batch_size"] == slots]
            loads = [100 * r["offered_load"] for r in rows]
            label = f"{'simulated' if clock == 'device' else 'host'} F={slots}"
            line = throughput.plot(loads, [r["throughput_tokens_per_s"] for r in rows], marker=marker, label=label)
            color = line[0].get_color()
            ttft.plot(loads, [r["ttft_p50_ms"] for r in rows], marker=marker, color=color, label=label)
            ttft.plot(loads, [r["ttft_p99_ms"] for r in rows], marker=marker, linestyle="--", color=color)
    throughput.set(title="continuous batching, shipped model: throughput", xlabel="offered load (% of capacity)",
                   ylabel="tokens/s (log)", yscale="log")
    ttft.set(title="time to first token: p50 (solid), p99 (dashed)", xlabel="offered load (% of capacity)",
             ylabel="ms (log)", yscale="log")
    throughput.legend(fontsize=7)


def _http_serving(axes, section: dict) -> None:  # noqa: ANN001
    points = section["points"]
    concurrency = [p["concurrency"] for p in points]
    axes.plot(concurrency, [p["tokens_per_s"] for p in points], "o-", label="host engine, tok/s (this machine)")
    axes.plot(concurrency, [p["simulated_tokens_per_s"] for p in points], "s--", label="simulated AI 100, tok/s")
    axes.set(xscale="log", yscale="log", xlabel="concurrent streaming clients", ylabel="completion tokens / s",
             title=f"qeffc serve throughput vs concurrency ({section['slots']} slots, same run)")
    axes.set_xticks(concurrency, [str(c) for c in concurrency])
    latency = axes.twinx()
    latency.plot(concurrency, [p["ttft_p50_ms"] for p in points], "^:", color="grey", label="host TTFT p50 (ms)")
    latency.set(yscale="log", ylabel="host TTFT p50, ms")
    handles = axes.get_legend_handles_labels()[0] + latency.get_legend_handles_labels()[0]
    axes.legend(handles, [h.get_label() for h in handles], fontsize=8)


#: section → how its PNG is drawn (sections without a figure worth plotting, like tune, have none)
PLOTS = {
    "host_precision": _host_precision, "decode_cost": _decode_cost, "peers": _peers, "compile_layers": _compile_layers,
    "simulated_vs_published": _simulated, "accuracy": _accuracy, "pruning": _pruning, "serving": _serving,
    "http_serving": _http_serving,
}
