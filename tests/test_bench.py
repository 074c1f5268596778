"""`python -m bench --quick`: every section runs, the JSON has its schema, every ratio is finite, plots are PNGs.
The numbers themselves are not checked here (shared, noisy machines); the full mode produces the README's."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import SECTIONS, non_finite_ratios

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    directory = tmp_path_factory.mktemp("bench")
    subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(directory / "results.json"), "--plots", str(directory / "plots")],
        check=True, capture_output=True, text=True,
    )
    return json.loads((directory / "results.json").read_text()), directory / "plots"


def test_every_section_runs_and_its_ratios_are_finite(quick_results) -> None:
    results, _ = quick_results
    assert results["quick"] is True and set(results["sections"]) == set(SECTIONS)
    assert results["machine"]["cpus"] >= 1 and results["machine"]["torch"]
    assert non_finite_ratios(results) == []


def test_sections_have_their_fields(quick_results) -> None:
    sections = quick_results[0]["sections"]
    assert {r["precision"] for r in sections["host_precision"]} == {"fp32", "fp16", "int8", "mxfp6", "w8a8"}
    for row in sections["host_precision"]:
        low, high = row["min_max_ms"]
        assert low <= row["median_ms"] <= high and math.isfinite(row["time_vs_fp32"])
    layers = sections["compile_layers"]
    assert all(r["compile_s"] > 0 and r["peak_rss_mb"] > 0 and "pass" in r["passes"] for r in layers["rows"])
    assert math.isfinite(layers["fit_compile_s"]["per_layer"])
    simulated = sections["simulated_vs_published"]
    assert all(r["simulated"] <= r["roofline"] for r in simulated if r["simulated"] is not None)
    assert {(r["precision"], r["kv_cache_dtype"]) for r in sections["accuracy"]} == {("fp32", None), ("int8", None)}
    assert all(r["late_over_early"] > 0 for r in sections["decode_cost"])
    dense, pruned = sections["pruning"]["shipped"]
    assert pruned["parameters"] < dense["parameters"] and pruned["perplexity"] > 0
    assert sections["tune"]["evaluations"] == 1 and sections["tune"]["search_s"] > 0
    (streamed,) = sections["stream_7b"]["compile"]
    assert streamed["median_wall_s"] > 0 and streamed["median_peak_rss_anon_mb"] > 0
    assert all(math.isfinite(r["simulated_decode_tokens_per_s"]) for r in sections["stream_7b"]["load"])
    assert {r["system"] for r in sections["peers"]} >= {"hf-eager", "onnxruntime", "qeff-ort-fp32", "qeff-ort-int8"}
    serving = sections["http_serving"]["points"]
    assert [p["concurrency"] for p in serving] == [1, 4] and all(p["requests"] == p["concurrency"] for p in serving)
    for point in serving:
        assert point["completion_tokens"] > 0 and point["tokens_per_s"] > 0 and point["simulated_tokens_per_s"] > 0
        assert point["ttft_p50_ms"] <= point["ttft_p99_ms"] and point["simulated_ttft_p50_ms"] > 0
    speculative = sections["speculative"]["rows"]
    assert {(r["proposer"], r["num_speculative_tokens"]) for r in speculative} == {("draft", 4), ("prompt-lookup", 4)}
    assert all(r["accepted_tokens_per_step"] >= 1 and r["simulated_speedup_mpt7b_mxfp6_vs_plain"] > 0 for r in speculative)


def test_peers_rows_rates_ratios_and_agreement(quick_results) -> None:
    """Every (model, batch, system) row, finite positive figures, and greedy agreement with HF eager (the
    throughput figures compare the same work only if every system decodes the same tokens)."""
    from bench.peers import QUICK, SYSTEMS

    rows = quick_results[0]["sections"]["peers"]
    expected = {(model, batch, system) for model in QUICK.models for batch in QUICK.batches for system in SYSTEMS}
    assert {(r["model"], r["batch"], r["system"]) for r in rows} == expected and len(rows) == len(expected)
    for row in rows:
        figures = [row[f"{kind}_vs_{peer}"] for kind in ("decode", "prefill") for peer in ("hf_eager", "onnxruntime")]
        figures += [row[f"{kind}_tokens_per_s"][s] for kind in ("prefill", "decode") for s in ("median", "min", "max")]
        assert all(math.isfinite(value) and value > 0 for value in figures), row
        assert row["tokens_match_hf_eager"] and row["token_agreement_with_hf_eager"] == 1.0, row
        assert row["torch_threads"] == row["ort_intra_op_threads"] == 2
    by_system = {r["system"]: r for r in rows}
    assert by_system["hf-eager"]["decode_vs_hf_eager"] == 1.0
    assert by_system["onnxruntime"]["prefill_vs_onnxruntime"] == 1.0


def test_plots_are_written(quick_results) -> None:
    _, plots = quick_results
    from bench.plots import PLOTS

    assert set(PLOTS) <= set(SECTIONS)
    for section in PLOTS:
        assert (plots / f"{section}.png").read_bytes()[:4] == b"\x89PNG"


def test_readme_figures_are_the_committed_full_run() -> None:
    """Every measured README figure sits in a bench block rendered from bench/results.json (a full run)."""
    from bench.readme import BLOCKS, README, RESULTS, readme_blocks, render

    results = json.loads(RESULTS.read_text())
    text = README.read_text()
    assert results["quick"] is False
    assert set(readme_blocks(text)) == set(BLOCKS)
    assert render(text, results) == text, "README figures differ from bench/results.json: run python -m bench.readme"
