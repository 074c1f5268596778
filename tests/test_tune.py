"""`qc.tune` on a reduced search space: the choice meets its budget when re-evaluated independently, its compile
has the simulated speed the search saw, and the printed front is a real Pareto front."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

import qeff_compiler as qc
from qeff_compiler.cli.main import app
from qeff_compiler.data import TINY_MPT
from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.tune import Candidate, Setting, pareto_front

BUDGET, TOKENS = 0.02, 256  # one window of the shipped model
#: (n, total, setting) of every `on_setting` call of the fixture's search
PROGRESS: list[tuple[int, int, Setting]] = []


@pytest.fixture(scope="module")
def result() -> qc.TuneResult:
    return qc.tune(
        TINY_MPT, max_ppl_increase=BUDGET, precisions=("fp16", "int8"), kv_cache_dtypes=(None,),
        prune_levels=(0.0, 0.25), num_cores=(7, 14), num_devices=(1,), prefill_lens=(32,), max_tokens=TOKENS,
        on_setting=lambda n, total, setting: PROGRESS.append((n, total, setting)),
    )


def test_progress_reports_each_accuracy_setting_as_n_of_total(result: qc.TuneResult) -> None:
    assert [(n, total) for n, total, _ in PROGRESS] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert {setting.precision for _, _, setting in PROGRESS} == {"fp16", "int8"}


def test_tune_plot_draws_the_search(result: qc.TuneResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`qeffc tune --plot` (the search replaced by the fixture's result: the plot is what is tested)."""
    monkeypatch.setattr(sys.modules["qeff_compiler.tune"], "tune", lambda *args, **kwargs: result)
    outcome = CliRunner().invoke(app, ["tune", "--plot", str(tmp_path / "pareto.png")])
    assert outcome.exit_code == 0, outcome.output
    assert f"wrote {tmp_path / 'pareto.png'}" in outcome.output
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chosen_configuration_meets_the_budget_when_evaluated_again(result: qc.TuneResult) -> None:
    chosen = result.chosen
    assert chosen is not None and result.evaluations == 4 and len(result.candidates) == 8
    setting = chosen.setting
    report = qc.evaluate(TINY_MPT, precision=setting.precision, kv_cache_dtype=setting.kv_cache_dtype,
                         prune_ffn=setting.prune_ffn, max_tokens=TOKENS)
    assert report.perplexity_increase <= BUDGET
    assert report.perplexity == pytest.approx(chosen.perplexity, rel=1e-9)
    faster = [c for c in result.candidates if c.tokens_per_s > chosen.tokens_per_s]
    assert faster and all(c.perplexity_increase > BUDGET for c in faster)  # 25 % pruning is faster, over budget


def test_compiling_the_choice_gives_the_speed_the_search_estimated(result: qc.TuneResult) -> None:
    compiled = result.compile(TINY_MPT, verify=False)
    stats = compiled.estimate(prompt_len=64, generation_len=64)
    assert 64 / (stats.ttft_s + stats.decode_s) == pytest.approx(result.chosen.tokens_per_s, rel=1e-12)
    assert compiled.options.num_cores == result.chosen.num_cores


def _candidate(speed: float, perplexity: float) -> Candidate:
    return Candidate(Setting("fp16", None, 0.0), 14, 1, 32, speed, speed, 1e-4, perplexity, perplexity / 20 - 1)


@given(st.lists(st.tuples(st.floats(1, 100), st.floats(20, 30)), min_size=1, max_size=30))
def test_pareto_front_holds_exactly_the_undominated_candidates(points: list[tuple[float, float]]) -> None:
    candidates = [_candidate(*point) for point in points]
    front = pareto_front(candidates)
    dominated = [
        c for c in candidates
        if any(o.tokens_per_s >= c.tokens_per_s and o.perplexity <= c.perplexity and o != c
               and (o.tokens_per_s, o.perplexity) != (c.tokens_per_s, c.perplexity) for o in candidates)
    ]
    assert not set(front) & set(dominated)
    undominated_points = {(c.tokens_per_s, c.perplexity) for c in candidates if c not in dominated}
    assert {(c.tokens_per_s, c.perplexity) for c in front} == undominated_points


def test_cli_refuses_a_malformed_budget() -> None:
    outcome = CliRunner().invoke(app, ["tune", "--max-ppl-increase", "two percent"])
    assert isinstance(outcome.exception, InvalidArgumentError) and "two percent" in str(outcome.exception)


def test_w8a8_and_empty_spaces_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="w8a8"):
        qc.tune(TINY_MPT, precisions=("w8a8",))
    with pytest.raises(InvalidArgumentError, match="empty"):
        qc.tune(TINY_MPT, prune_levels=())
