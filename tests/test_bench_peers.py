"""The peers bench's quick mode: every (model, batch, system) row, finite positive figures, and greedy agreement with
HF eager (the throughput figures compare the same work only if every system decodes the same tokens)."""

from __future__ import annotations

import math

from bench.peers import QUICK, SYSTEMS, measure_peers


def test_quick_mode_rows_rates_ratios_and_agreement() -> None:
    rows = measure_peers(quick=True)

    expected = {(model, batch, system) for model in QUICK.models for batch in QUICK.batches for system in SYSTEMS}
    assert {(r["model"], r["batch"], r["system"]) for r in rows} == expected
    assert len(rows) == len(expected)
    for row in rows:
        figures = [row[f"{kind}_vs_{peer}"] for kind in ("decode", "prefill") for peer in ("hf_eager", "onnxruntime")]
        figures += [row[f"{kind}_tokens_per_s"][s] for kind in ("prefill", "decode") for s in ("median", "min", "max")]
        assert all(math.isfinite(value) and value > 0 for value in figures), row
        assert row["tokens_match_hf_eager"] and row["token_agreement_with_hf_eager"] == 1.0, row
        assert row["torch_threads"] == row["ort_intra_op_threads"] == 2
    by_system = {r["system"]: r for r in rows}
    assert by_system["hf-eager"]["decode_vs_hf_eager"] == 1.0
    assert by_system["onnxruntime"]["prefill_vs_onnxruntime"] == 1.0
