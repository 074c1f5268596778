"""Decisions the CLI used to make by itself, now library functions it renders: the MXINT8 cache gate of a sweep,
the sweep's cache order, the config-only refusal of w8a8, and refusing an existing output before the work."""

from __future__ import annotations

from pathlib import Path

import pytest

from qeff_compiler.artifact import check_output
from qeff_compiler.errors import ArtifactExistsError, InvalidArgumentError
from qeff_compiler.evaluate import MXINT8_CACHE_GATE, AccuracyGates, EvaluationReport, sweep_cache_dtypes
from qeff_compiler.options import check_config_only


def _report(precision: str, cache: str | None, perplexity: float, pruning: str = "") -> EvaluationReport:
    return EvaluationReport(precision, cache, 1000, perplexity, 10.0, 0.999, 0.01, 0.001, pruning)


def test_mxint8_rows_are_judged_against_the_same_precision_without_a_cache() -> None:
    """mxfp6 (gate +3%, +1% more with a cache): only the cache-against-no-cache gate can fail here."""
    gates = AccuracyGates()
    assert gates.failures(_report("mxfp6", None, 10.01)) == []
    within = 10.01 * (1 + MXINT8_CACHE_GATE) * 0.999
    assert gates.failures(_report("mxfp6", "mxint8", within)) == []
    over = 10.01 * (1 + 2 * MXINT8_CACHE_GATE)
    (failure,) = gates.failures(_report("mxfp6", "mxint8", over))
    assert failure.startswith("the MXINT8 cache adds +2.000% perplexity (gate +1%)")


def test_mxint8_gate_needs_its_baseline_and_skips_pruned_rows() -> None:
    gates = AccuracyGates()
    over = 10.0 * (1 + 2 * MXINT8_CACHE_GATE)
    assert gates.failures(_report("int8", "mxint8", over)) == []  # no int8 row without a cache was scored
    gates.failures(_report("int8", None, 10.0, pruning="ffn=0.25,heads=0,score=magnitude"))  # not a baseline
    assert gates.failures(_report("int8", "mxint8", over)) == []
    gates.failures(_report("int8", None, 10.0))
    assert any("MXINT8 cache adds" in f for f in gates.failures(_report("int8", "mxint8", over)))
    assert gates.failures(_report("int8", "mxint8", over, pruning="ffn=0.25,heads=0,score=magnitude")) == []


def test_sweep_puts_the_row_without_a_cache_first() -> None:
    assert sweep_cache_dtypes(["mxint8", "None", "fp16", "mxint8"]) == [None, "fp16", "mxint8"]
    assert sweep_cache_dtypes([]) == [None]


def test_config_only_compiles_refuse_w8a8_only() -> None:
    with pytest.raises(InvalidArgumentError, match="w8a8 needs calibration: compile, then estimate"):
        check_config_only("w8a8")
    for precision in ("fp32", "fp16", "int8", "mxfp6"):
        check_config_only(precision)


def test_an_existing_output_is_refused_before_the_work(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep")
    with pytest.raises(ArtifactExistsError, match="pass --force"):
        check_output(tmp_path / "out", overwrite=False)
    with pytest.raises(ArtifactExistsError, match="not a compiled-model directory"):
        check_output(tmp_path / "out", overwrite=True)
    check_output(tmp_path / "fresh", overwrite=False)
