"""The README's measured figures, rendered from the full-mode bench results so that each one has a source.

Every table and sentence with a measured number in README.md sits between `<!-- bench:NAME -->` and
`<!-- /bench:NAME -->` markers; `BLOCKS[NAME]` renders it from `bench/results.json` (committed with the README).
`python -m bench.readme` rewrites the blocks after a full `python -m bench` run; tests/test_bench.py checks that
the README's blocks equal the rendering of the committed results, so a README figure cannot drift from the run
that produced it.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from pathlib import Path

from qeff_compiler.evaluate import MXINT8_CACHE_GATE

ROOT = Path(__file__).parent
RESULTS = ROOT / "results.json"
README = ROOT.parent / "README.md"
BLOCK = re.compile(r"(<!-- bench:(?P<name>[a-z0-9_]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.DOTALL)
SHIPPED = "tiny-mpt-pystdlib (shipped)"


def _short(model: str) -> str:
    return "shipped" if model == SHIPPED else "MPT-125M shape"


def _span(values: list[float]) -> str:
    low, high = f"{min(values):.1f}", f"{max(values):.1f}"
    return low if low == high else f"{low}–{high}"


def _rate(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def machine(results: dict) -> str:
    m = results["machine"]
    minutes = sum(results["section_seconds"].values()) / 60
    return (f"Its sections took {minutes:.1f} min in total on this machine: {m['cpus']}-core {m['cpu']} VM, torch "
            f"{m['torch']} on {m['torch_threads']} threads, Python {m['python']}, last section run {m['date'][:10]} "
            f"(each section's run time and the load average at its end are in the JSON).\n")


PEER_COLUMNS = ("qeff-fp32", "qeff-int8", "qeff-ort-fp32", "qeff-ort-int8", "hf-eager", "onnxruntime")


def peers(results: dict) -> str:
    rows = results["sections"]["peers"]
    lines = [
        "| model | batch | qeff fp32 | qeff int8 | qeff-ort fp32 | qeff-ort int8 | HF eager | ONNX Runtime "
        "| best qeff / HF | best qeff / ORT | = HF tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    bests = []
    for model, batch in dict.fromkeys((r["model"], r["batch"]) for r in rows):
        group = {r["system"]: r for r in rows if r["model"] == model and r["batch"] == batch}
        rates = [_rate(group[s]["decode_tokens_per_s"]["median"]) for s in PEER_COLUMNS]
        qeff = [group[s] for s in PEER_COLUMNS if s.startswith("qeff")]
        best = max(qeff, key=lambda r: r["decode_tokens_per_s"]["median"])
        bests.append(best)
        mismatched = [r["system"] for r in qeff if not r["tokens_match_hf_eager"]]
        agreement = "all" if not mismatched else "all but " + ", ".join(
            f"{s} ({100 * group[s]['token_agreement_with_hf_eager']:.0f} %)" for s in mismatched)
        lines.append(f"| {_short(model)} | {batch} | " + " | ".join(rates)
                     + f" | {best['decode_vs_hf_eager']:.2f} ({best['system']}) | {best['decode_vs_onnxruntime']:.2f} | {agreement} |")
    hf_met = sum(r["decode_vs_hf_eager"] >= 2 for r in bests)
    ort_met = sum(r["decode_vs_onnxruntime"] >= 1 for r in bests)
    prefill = [r for r in rows if r["system"] == "qeff-ort-fp32"]
    ratios = [r["prefill_vs_onnxruntime"] for r in prefill]
    lines.append("")
    lines.append(f"Decode tokens/s (median of {rows[0]['runs']} runs; min–max in `bench/results.json`). Prefill: "
                 f"qeff-ort fp32 runs at {min(ratios):.2f}–{max(ratios):.2f}× ONNX Runtime's prompt throughput. "
                 f"The decode goals set for this compiler, best qeff system per row: ≥ 2× HF eager met in {hf_met} of {len(bests)} "
                 f"rows, ≥ 1× ONNX Runtime in {ort_met} of {len(bests)}.")
    return "\n".join(lines) + "\n"


def compile_layers(results: dict) -> str:
    section = results["sections"]["compile_layers"]
    rows = section["rows"]
    deep = [r for r in rows if r["model"] != "mpt-30b"]
    fit, rss = section["fit_compile_s"], section["fit_peak_rss_mb"]
    lines = [
        "| model | layers | SoCs | compile (min–max) | whole process | peak RSS | simulated decode |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = "MPT-30B" if r["model"] == "mpt-30b" else ("MPT-7B" if r["layers"] == 32 else "MPT-7B width")
        low, high = r["compile_s_min_max"]
        lines.append(f"| {name} | {r['layers']} | {r['num_devices']} | {r['compile_s']:.1f} s ({low:.1f}–{high:.1f}) "
                     f"| {r['process_s']:.1f} s | {r['peak_rss_mb']:.0f} MB | {r['simulated_decode_tokens_per_s']:.2f} tok/s |")
    lines.append("")
    lines.append(f"Fitted over the MPT-7B-width rows: {fit['per_layer']:.2f} s per layer {fit['intercept']:+.1f} s, and "
                 f"{rss['per_layer']:.1f} MB of peak RSS per layer ({deep[0]['peak_rss_mb']:.0f} → "
                 f"{deep[-1]['peak_rss_mb']:.0f} MB). Medians of {rows[0]['runs']} cold compiles, each in a fresh process.")
    return "\n".join(lines) + "\n"


def compile_passes(results: dict) -> str:
    """The per-pass timings of MPT-7B's decode specialization (the last compile of the 32-layer row)."""
    rows = results["sections"]["compile_layers"]["rows"]
    row = next((r for r in rows if r["layers"] == 32), rows[-1])
    return f"Per-pass timings, {row['model']}, decode specialization:\n\n```text\n{row['passes'].rstrip()}\n```\n"


def simulated(results: dict) -> str:
    """Calibration rows, then validation rows, each with its residual and band; residuals per set below."""
    rows = results["sections"]["simulated_vs_published"]
    lines = [
        "| set | point | device | published | simulated | residual | band | bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for role in ("calibration", "validation"):
        for r in (r for r in rows if r["role"] == role):
            published = "not found" if r["published"] is None else f"{r['published']:.4g}"
            if r["simulated"] is None:
                lines.append(f"| {role} | {r['name']} | {r['device']} | does not fit | refused | | | |")
                continue
            residual = "" if r["simulated_vs_published"] is None else f"{100 * (r['simulated_vs_published'] - 1):+.1f} %"
            band = "explained below" if r["band"] is None and r["published"] else (
                "" if r["band"] is None else f"±{100 * r['band']:.0f} %")
            lines.append(f"| {role} | {r['name']} ({r['metric']}) | {r['device']} | {published} | {r['simulated']:.4g} "
                         f"| {residual} | {band} | {r['bound']} |")
    lines.append("")
    for role in ("calibration", "validation"):
        values = [r["simulated_vs_published"] - 1 for r in rows if r["role"] == role and r["band"] is not None
                  and r["simulated_vs_published"] is not None]
        if values:
            lines.append(f"{role.capitalize()} set: {len(values)} banded points, largest |residual| "
                         f"{100 * max(abs(v) for v in values):.1f} %.")
    for r in (r for r in rows if r["metric"] == "prefill s" and r["simulated"]):
        chunks = r["published"] / r["simulated"]
        lines.append(f"{r['name']}: one 128-token chunk is {r['simulated']:.3f} s simulated, so the published "
                     f"{r['published']:g} s is {chunks:.1f} chunks, a prompt of ~{128 * round(chunks)} tokens.")
    return "\n".join(lines) + "\n"


def decode_cost(results: dict) -> str:
    lines = ["| model | ctx_len | step at position 16 | step at ctx_len − 16 | ratio |", "|---|---|---|---|---|"]
    for r in results["sections"]["decode_cost"]:
        lines.append(f"| {r['model']} | {r['ctx_len']} | {r['early_median_ms']:.2f} ms | {r['late_median_ms']:.2f} ms "
                     f"| {r['late_over_early']:.2f} |")
    return "\n".join(lines) + "\n"


def host_precision(results: dict) -> str:
    rows = results["sections"]["host_precision"]
    precisions = list(dict.fromkeys(r["precision"] for r in rows))
    lines = ["| model | " + " | ".join(precisions) + " |", "|---" * (len(precisions) + 1) + "|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        cells = []
        for r in (next(r for r in rows if r["model"] == model and r["precision"] == p) for p in precisions):
            cells.append(f"{r['median_ms']:.2f} ms ({r['tokens_per_s']:.1f} tok/s)" if r["precision"] == "fp32"
                         else f"{r['median_ms']:.2f} ms ({r['time_vs_fp32']:.2f}×)")
        lines.append(f"| {model}, ctx {rows[0]['ctx_len']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def accuracy(results: dict) -> str:
    rows = results["sections"]["accuracy"]
    lines = [
        "| precision | KV cache | perplexity | increase | top-1 agreement | max \\|Δlogit\\| | gate |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gate = "ok" if not r["gate_failures"] else "; ".join(r["gate_failures"])
        if r["kv_cache_dtype"] == "mxint8":
            without = next(w for w in rows if w["precision"] == r["precision"] and w["kv_cache_dtype"] is None)
            added = r["perplexity"] / without["perplexity"] - 1
            gate += f"; cache adds {100 * added:+.3f} % (≤ {100 * MXINT8_CACHE_GATE:g} %)"
        lines.append(f"| {r['precision']} | {r['kv_cache_dtype'] or '–'} | {r['perplexity']:.4f} "
                     f"| {100 * (r['perplexity_vs_reference'] - 1):+.3f} % | {100 * r['token_agreement']:.2f} % "
                     f"| {r['max_logit_error']:.1e} | {gate} |")
    reference = statistics.median(r["reference_perplexity"] for r in rows)
    lines.append("")
    lines.append(f"{rows[0]['tokens']:,} tokens scored per row; the fp32 HF reference perplexity is {reference:.4f}.")
    return "\n".join(lines) + "\n"


def pruning(results: dict) -> str:
    section = results["sections"]["pruning"]
    rows = section["shipped"]
    lines = [
        "| pruned | score | parameters | perplexity | increase | top-1 agreement | simulated decode |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        parts = [f"FFN {100 * r['prune_ffn']:g} %" if r["prune_ffn"] else "", f"heads {100 * r['prune_heads']:g} %" if r["prune_heads"] else ""]
        pruned = ", ".join(p for p in parts if p) or "–"
        lines.append(f"| {pruned} | {r['score'] if pruned != '–' else '–'} | {r['parameters']:,} | {r['perplexity']:.4f} "
                     f"| {100 * (r['perplexity'] / r['reference_perplexity'] - 1):+.3f} % | {100 * r['token_agreement']:.2f} % "
                     f"| {r['simulated_decode_tokens_per_s']:,.0f} tok/s |")
    lines.append("")
    lines.append(f"{rows[0]['tokens']:,} validation tokens per row; the fp32 HF reference perplexity is "
                 f"{rows[0]['reference_perplexity']:.4f}.")
    if section["mpt_7b_mxfp6"]:
        dense, pruned_7b = section["mpt_7b_mxfp6"]
        lines.append(f"At MPT-7B's shape (config only, mxfp6, prompt 1024, generate 1024, ctx 2048) 25 % of the FFN "
                     f"channels are {100 * (1 - pruned_7b['parameters'] / dense['parameters']):.1f} % of the stored "
                     f"parameters ({dense['parameters'] / 1e9:.2f} B → {pruned_7b['parameters'] / 1e9:.2f} B), and "
                     f"simulated decode goes from {dense['simulated_decode_tokens_per_s']:.2f} to "
                     f"{pruned_7b['simulated_decode_tokens_per_s']:.2f} tok/s.")
    return "\n".join(lines) + "\n"


def tune(results: dict) -> str:
    t = results["sections"]["tune"]
    return (f"On the shipped model (budget +2 %) the search scored {t['evaluations']} accuracy settings on "
            f"{t['tokens_scored']:,} tokens and timed {t['candidates']} feasible placements ({t['pareto_front']} on the "
            f"Pareto front) in {t['search_s']:.0f} s (load average {t['load_average_1min']:.1f}): the time of the "
            f"`qc.tune` call inside the bench process, after its imports; a `qeffc tune` run adds its start-up, and "
            f"other work on the machine's cores stretches both. It chose "
            f"{t['chosen']} ({100 * t['chosen_perplexity_increase']:+.2f} % perplexity on those tokens, "
            f"{t['chosen_tokens_per_s']:,.0f} simulated tok/s end to end).\n")


def stream_7b(results: dict) -> str:
    section = results["sections"]["stream_7b"]
    lines = [
        "| precision | wall time, median of 3 (runs) | compile / save | peak RssAnon | peak RSS (VmHWM) | artifact "
        "| load average |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in section["compile"]:
        runs = row["runs"]
        walls = ", ".join(f"{r['wall_s']:.0f}" for r in runs)
        compile_s = [r["compile_s"] for r in runs]
        save_s = [r["save_s"] for r in runs]
        loads = [r["loadavg"][0] for r in runs]
        lines.append(
            f"| {row['precision']} | **{row['median_wall_s']:.0f} s** ({walls}) | {min(compile_s):.0f}–{max(compile_s):.0f} s "
            f"/ {min(save_s):.0f}–{max(save_s):.0f} s | **{row['median_peak_rss_anon_mb'] / 1e3:.2f} GB** "
            f"| {row['max_vm_hwm_mb'] / 1e3:.2f} GB | {runs[0]['artifact_gb']:.1f} GB | {_span(loads)} |"
        )
    lines.append("")
    loads = {row["artifact"].rsplit("-", 1)[-1].removesuffix(".qeff"): row for row in section["load"]}
    described = "; ".join(
        f"{name}: load {r['load_s']:.0f} s, simulated decode {r['simulated_decode_tokens_per_s']:.1f} tok/s, one host "
        f"decode step {r['decode_step_s']:.0f} s (peak RssAnon {r['peak_rss_anon_mb'] / 1e3:.1f} GB)"
        for name, r in loads.items()
    )
    lines.append(f"Checkpoint: {section['checkpoint']['gb']:.1f} GB of bf16 safetensors shards. The artifacts load "
                 f"(`qc.load_compiled(..., stream=True)`), `estimate` works on them (ai100-standard, prompt 1024 / "
                 f"generate 1024) and one decode step runs on the host with finite logits: {described}.")
    return "\n".join(lines) + "\n"


def http_serving(results: dict) -> str:
    """`qeffc serve` under 1-64 concurrent streaming clients: host figures, then the same run's simulated ones."""
    section = results["sections"]["http_serving"]
    points = section["points"]
    lines = [
        "| clients | requests | host tok/s | host TTFT p50 / p99 | host TPOT p50 / p99 | simulated tok/s "
        "| simulated TTFT p50 / p99 | simulated TPOT p50 / p99 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        lines.append(
            f"| {p['concurrency']} | {p['requests']} | {_rate(p['tokens_per_s'])} "
            f"| {p['ttft_p50_ms']:.0f} / {p['ttft_p99_ms']:.0f} ms | {p['tpot_p50_ms']:.1f} / {p['tpot_p99_ms']:.1f} ms "
            f"| {_rate(p['simulated_tokens_per_s'])} | {p['simulated_ttft_p50_ms']:.2f} / {p['simulated_ttft_p99_ms']:.2f} ms "
            f"| {p['simulated_tpot_p50_ms']:.3f} / {p['simulated_tpot_p99_ms']:.3f} ms |"
        )
    loads = [p["load_average"] for p in points]
    lines.append("")
    lines.append(
        f"{section['model']}, {section['slots']} slots, prompts of {section['prompt_tokens']} tokens, up to "
        f"{section['max_tokens']} new tokens each, closed-loop clients on loopback; 1-minute load average "
        f"{min(loads):.1f}–{max(loads):.1f} during the run (other work shared the machine). Host figures are what the "
        "clients measured; simulated ones are the scheduler's device clock for the same steps."
    )
    return "\n".join(lines) + "\n"


def serving(results: dict) -> str:
    """Continuous batching on the shipped model per slot count and clock, then the context buckets' decode saving."""
    section = results["sections"]["serving"]
    lines = [
        "| F | clock | saturated tok/s | 50 % load: tok/s, TTFT p50 / p99 | 100 % load: tok/s, TTFT p50 / p99 "
        "| slot occupancy at 100 % |",
        "|---|---|---|---|---|---|",
    ]
    for slots in sorted({r["full_batch_size"] for r in section["curves"]}):
        for clock in ("device", "host"):
            rows = {r["offered_load"]: r for r in section["curves"]
                    if r["full_batch_size"] == slots and r["clock"] == clock}
            half, full = rows[0.5], rows[1.0]
            lines.append(
                f"| {slots} | {'simulated' if clock == 'device' else 'host'} | {_rate(full['saturated_tokens_per_s'])} "
                f"| {_rate(half['throughput_tokens_per_s'])}, {half['ttft_p50_ms']:.2f} / {half['ttft_p99_ms']:.2f} ms "
                f"| {_rate(full['throughput_tokens_per_s'])}, {full['ttft_p50_ms']:.2f} / {full['ttft_p99_ms']:.2f} ms "
                f"| {full['slot_occupancy']:.2f} |"
            )
    lines.append("")
    ccl = section["ccl_decode"]
    described = "; ".join(
        f"{r['slots']} {'sequence' if r['slots'] == 1 else 'slots'}: {r['without_buckets_ms']:.1f} ms without buckets, "
        f"{r['with_buckets_ms']:.1f} ms at bucket {r['bucket']} (host x{r['host_speedup_with_vs_without']:.2f}, "
        f"simulated x{r['simulated_speedup_with_vs_without']:.2f})"
        for r in ccl
    )
    verdicts = ", ".join(
        f"{r['slots']} {'sequence' if r['slots'] == 1 else 'slots'} x{r['host_speedup_with_vs_without']:.2f} "
        f"({'reached' if r['host_speedup_with_vs_without'] >= 2 else 'not reached'})"
        for r in ccl
    )
    lines.append(
        f"Offered load is a share of each row's saturated capacity (all requests at once); the load points 25-125 % "
        f"are in `bench/results.json`. Context buckets, one decode step at position {ccl[0]['position']} "
        f"({ccl[0]['model']}, ctx_len {ccl[0]['ctx_len']}, buckets {', '.join(map(str, ccl[0]['buckets']))}, "
        f"medians of interleaved steps on {ccl[0]['threads']} host thread{'s' * (ccl[0]['threads'] > 1)}): "
        f"{described}. Goal (host) ≥ 2x: {verdicts}. 1-minute load average "
        f"{results['section_load_average']['serving']:.1f} when the section ended."
    )
    return "\n".join(lines) + "\n"


def speculative(results: dict) -> str:
    """Per proposer and K: acceptance, tokens per verify step, simulated speed-ups (shipped, MPT-7B), host's."""
    section = results["sections"]["speculative"]
    lines = [
        "| proposer | K | acceptance rate | tokens per verify step | simulated speed-up, shipped shape "
        "| simulated speed-up, MPT-7B mxfp6 | host speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in section["rows"]:
        rate = "–" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.2f}"
        lines.append(
            f"| {r['proposer']} | {r['num_speculative_tokens']} | {rate} | {r['accepted_tokens_per_step']:.2f} "
            f"| {r['simulated_speedup_shipped_vs_plain']:.2f}x | {r['simulated_speedup_mpt7b_mxfp6_vs_plain']:.2f}x "
            f"| {r['host_speedup_vs_plain']:.2f}x |"
        )
    shape = section["draft_shape_at_7b"]
    first = section["rows"][0]
    lines.append("")
    lines.append(
        f"{first['prompts']} prompts of 64 tokens from the validation files, {first['new_tokens_per_prompt']} new "
        f"tokens each, greedy (speculative output equal to plain greedy, checked). MPT-7B mxfp6 on ai100-standard "
        f"decodes {section['mpt7b_plain_decode_tokens_per_s']:.2f} simulated tok/s plainly; its draft is re-timed at "
        f"d_model {shape['d_model']}, {shape['n_heads']} heads, {shape['n_layers']} layers. Load average "
        f"{section['load_average']:.1f} at the end of the section; host speed-ups are ratios of the median wall times "
        f"of {first['host_timing_pairs']} alternating plain and speculative runs."
    )
    goals = {("draft", 4): 1.8, ("prompt-lookup", 4): 1.3}
    verdicts = [
        f"{r['proposer']} K={r['num_speculative_tokens']} {r['simulated_speedup_mpt7b_mxfp6_vs_plain']:.2f}x "
        f"against {goals[(r['proposer'], r['num_speculative_tokens'])]}x: "
        + ("reached" if r["simulated_speedup_mpt7b_mxfp6_vs_plain"] >= goals[(r["proposer"], r["num_speculative_tokens"])]
           else "not reached")
        for r in section["rows"] if (r["proposer"], r["num_speculative_tokens"]) in goals
    ]
    lines.append(f"Goals (simulated, MPT-7B mxfp6): {'; '.join(verdicts)}.")
    steps = section["mpt7b_steps_s"]
    for r in section["rows"]:
        if r["proposer"] == "draft" and (r["proposer"], r["num_speculative_tokens"]) in goals:
            k, goal = r["num_speculative_tokens"], goals[(r["proposer"], r["num_speculative_tokens"])]
            cost = steps[f"verify_{k}"] + r["draft_decode_calls_per_step"] * steps["draft"]
            lines.append(
                f"At MPT-7B shape a K={k} verify step costs {steps[f'verify_{k}'] / steps['plain']:.3f} plain steps and "
                f"a draft step {steps['draft'] / steps['plain']:.3f}, so with the measured "
                f"{r['draft_decode_calls_per_step']:.2f} draft calls per verify step {goal}x needs "
                f"{goal * cost / steps['plain']:.2f} tokens per verify step (measured: {r['accepted_tokens_per_step']:.2f})."
            )
    return "\n".join(lines) + "\n"


BLOCKS: dict[str, Callable[[dict], str]] = {
    "machine": machine, "peers": peers, "compile_layers": compile_layers,
    "compile_passes": compile_passes, "simulated": simulated,
    "decode_cost": decode_cost, "host_precision": host_precision, "accuracy": accuracy, "pruning": pruning,
    "tune": tune, "stream_7b": stream_7b, "http_serving": http_serving, "speculative": speculative,
    "serving": serving,
}


def readme_blocks(text: str) -> dict[str, str]:
    """The body of every bench block in a README text, by name."""
    return {match["name"]: match["body"] for match in BLOCK.finditer(text)}


def render(text: str, results: dict) -> str:
    """`text` with every bench block re-rendered from `results`."""
    return BLOCK.sub(lambda m: m.group(1) + BLOCKS[m["name"]](results) + m.group(4), text)


def main() -> None:
    import json

    results = json.loads(RESULTS.read_text())
    if results["quick"]:
        raise SystemExit(f"{RESULTS} holds a --quick run; the README's figures come from a full `python -m bench`")
    README.write_text(render(README.read_text(), results))
    print(f"rendered {', '.join(readme_blocks(README.read_text()))} into {README}")


if __name__ == "__main__":
    main()
