"""What `qeffc inspect` / `estimate` / `eval` / `calibrate` show: readable at 100 columns with adaptive units and
labelled capacities, a cost breakdown that adds up to the simulated step, eval rows printed as they finish (and
kept on Ctrl-C), calibration progress as n/N windows, and one per-token figure when p50 equals p90."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

import qeff_compiler as qc
from qeff_compiler.backends.ai100.breakdown import CATEGORIES, by_category, by_layer, by_role, layer_runs
from qeff_compiler.calibration import calibrate
from qeff_compiler.cli import app as cli_app
from qeff_compiler.cli.app import duration, size
from qeff_compiler.cli.main import run
from qeff_compiler.data import TINY_MPT
from qeff_compiler.evaluate import Evaluator
from qeff_compiler.runtime.stats import LatencyStats
from tests.conftest import TinyArtifact

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """The console of a 100-column terminal."""
    monkeypatch.setattr(cli_app.console, "width", 100)


def test_inspect_fits_100_columns_with_adaptive_units(
    tiny_artifact: TinyArtifact, narrow: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run(["inspect", str(tiny_artifact.artifact), "--plot", str(tmp_path / "plan.png")]) == 0
    out = capsys.readouterr().out
    tables = out.split("\n", 1)[1]  # the first line is the artifact's path and pipeline, printed verbatim
    assert max(len(line) for line in tables.splitlines()) <= 100, tables
    assert "0.000 GB" not in out and " MB " in out  # a model of a few MB is shown in MB
    assert "DDR capacity" in out and "VTCM of cores used" in out
    simulation = tiny_artifact.compiled.simulation
    assert f"where a decode step's {duration(simulation.decode_step_s)} goes (simulated)" in out
    assert (tmp_path / "plan.png").read_bytes()[:8] == PNG


def test_estimate_prints_the_breakdown_and_plots_it(narrow: None, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = ["estimate", "--ctx-len", "128", "--prompt-len", "32", "--generation-len", "32"]
    assert run([*args, "--plot", str(tmp_path / "costs.png")]) == 0
    out = capsys.readouterr().out
    for heading in ("per op role over all layers", "per layer", "fixed cost", "prefill chunk"):
        assert heading in out
    assert (tmp_path / "costs.png").read_bytes()[:8] == PNG


def test_breakdown_adds_up_to_every_step(tiny_artifact: TinyArtifact) -> None:
    for step in tiny_artifact.compiled.simulation.steps.values():
        total = sum(by_category(step.ops).values())
        assert total == pytest.approx(step.seconds, rel=1e-12)
        for groups in (by_role(step), by_layer(step)):
            assert sum(sum(costs.values()) for costs in groups.values()) == pytest.approx(step.seconds, rel=1e-12)
        assert by_category(step.ops)["fixed cost"] > 0
        runs = layer_runs(by_layer(step))
        layers = tiny_artifact.compiled.config.n_layers
        assert runs[1][0] == f"layers 0-{layers - 1} (each)"  # the tiny model's layers cost the same
        assert set(runs[1][1]) == set(CATEGORIES)


@given(st.floats(min_value=0, max_value=1e13, allow_nan=False))
@settings(max_examples=200)
def test_sizes_keep_three_digits_in_a_unit_at_least_one(nbytes: float) -> None:
    text = size(nbytes)
    number, unit = text.replace(",", "").split()
    assert unit in ("B", "kB", "MB", "GB")
    if unit != "B":
        assert 1 <= float(number) and (float(number) < 1000 or unit == "GB")


def test_size_and_duration_examples() -> None:
    assert [size(7_340_032), size(524_288), size(17.18e9), size(12)] == ["7.34 MB", "524 kB", "17.2 GB", "12 B"]
    assert [duration(0.0731), duration(6.66e-4), duration(2.5)] == ["73.1 ms", "666 µs", "2.50 s"]


def test_per_token_row_is_one_figure_when_steps_cost_the_same() -> None:
    common = {"prompt_tokens": (4,), "generated_tokens": (4,), "device": "d", "ttft_s": 1.0, "prefill_s": 1.0}
    same = dict(LatencyStats(**common, token_latencies_s=(0.002,) * 3).rows())
    assert same["simulated per-token latency"] == "2.000 ms (every decode step costs the same)"
    differing = dict(LatencyStats(**common, token_latencies_s=(0.001, 0.002, 0.009)).rows())
    assert "simulated per-token p50 / p90" in differing


def test_eval_prints_rows_as_they_finish_and_keeps_them_on_ctrl_c(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = Evaluator.__call__
    calls: list[str] = []

    def second_is_interrupted(self: Evaluator, precision: str = "fp32", *args: object, **kwargs: object) -> object:
        calls.append(precision)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, precision, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Evaluator, "__call__", second_is_interrupted)
    code = run(["eval", "--precision", "fp32", "--precision", "fp16", "--max-tokens", "256"])
    out = capsys.readouterr().out
    assert code == 130 and calls == ["fp32", "fp16"]
    assert "accuracy vs fp32 HF reference" in out
    assert any(line.strip("│┃ ").startswith("fp32") for line in out.splitlines()), out  # the finished row
    assert not any(line.strip("│┃ ").startswith("fp16") for line in out.splitlines()), out


class _Recorder:
    def __init__(self) -> None:
        self.stages: list[tuple[str, int | None, str]] = []
        self.advanced = 0

    @contextlib.contextmanager
    def stage(self, description: str, total: int | None, unit: str = "bytes"):  # type: ignore[no-untyped-def]
        self.stages.append((description, total, unit))

        def advance(amount: int) -> None:
            self.advanced += amount

        yield advance


def test_calibration_reports_windows_done_of_total() -> None:
    recorder = _Recorder()
    table = calibrate(TINY_MPT, max_tokens=2 * 256, progress=recorder)
    assert table and recorder.stages == [("calibrate (w8a8)", 2, "windows")] and recorder.advanced == 2


def test_opt_counts_parameters_and_stored_bytes_separately(capsys: pytest.CaptureFixture[str]) -> None:
    """After MXFP6 lowering the weights are packed codes and scales: stored elements are not parameters."""
    passes = "strip-export-noise,patch-attention,lower-fp16,lower-mxfp6,dce"
    assert run(["opt", "--passes", passes, "--no-verify"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    captured = qc.capture(TINY_MPT).num_parameters()
    assert f"{captured:,} parameters captured, stored as " in out
    stored = out.split("stored as ", 1)[1].split(" (", 1)[0]
    assert stored.endswith(" MB") and float(stored.split()[0]) < captured * 2 / 1e6  # below fp16's 2 bytes each
