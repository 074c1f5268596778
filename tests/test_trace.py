"""The simulated trace: spans named by layer and op role (never graph node names), nested call → layer → op →
charged cost, every charged second drawn (the fixed cost per op too), on-chip transfers never on a PCIe track,
and the default (layer) detail a small fraction of the full (op) detail."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import qeff_compiler as qc
from qeff_compiler.backends.ai100.cost_model import OP_OVERHEAD_S
from qeff_compiler.backends.ai100.breakdown import charged_parts
from qeff_compiler.backends.ai100.trace import PROGRAM_TRACK
from qeff_compiler.errors import InvalidArgumentError
from tests.conftest import TinyArtifact

PARTS = {"bandwidth", "compute", "decompress", "vector", "fixed cost", "transfer"}
CALL = re.compile(r"(prefill chunk|decode step) \d+")
OP = re.compile(r"(layer \d+|outside layers) [a-z_.]+")


@pytest.fixture(scope="module")
def compiled(tiny_artifact: TinyArtifact) -> qc.CompiledModel:
    """The session's compiled tiny model: 1 SoC, every core, prefill_len 8."""
    return tiny_artifact.compiled


def _trace(compiled: qc.CompiledModel, path: Path, detail: str) -> list[dict]:
    compiled.generate([[1, 2, 3, 4, 5, 6, 7, 8, 9]], max_new_tokens=4, trace=path, trace_detail=detail)
    return json.loads(path.read_text())["traceEvents"]


def _spans(events: list[dict], tid: int = PROGRAM_TRACK) -> list[dict]:
    return [e for e in events if e["ph"] == "X" and e["tid"] == tid]


def test_spans_are_named_by_layer_and_role_and_nest(compiled: qc.CompiledModel, tmp_path: Path) -> None:
    events = _trace(compiled, tmp_path / "t.json", "layer")
    nodes = {op.node for step in compiled.simulation.steps.values() for op in step.ops}
    spans = _spans(events)
    for span in spans:
        name = span["name"]
        assert name not in nodes, name
        assert CALL.fullmatch(name) or re.fullmatch(r"layer \d+", name) or OP.fullmatch(name) or name in PARTS, name
    calls = [s for s in spans if CALL.fullmatch(s["name"])]
    assert [c["name"] for c in calls] == ["prefill chunk 0", "prefill chunk 1", *(f"decode step {i}" for i in range(3))]
    layers = [s for s in spans if re.fullmatch(r"layer \d+", s["name"])]
    ops = [s for s in spans if OP.fullmatch(s["name"])]
    parts = [s for s in spans if s["name"] in PARTS]

    def inside(child: dict, parents: list[dict]) -> bool:
        end = child["ts"] + child["dur"]
        return any(p["ts"] - 1e-6 <= child["ts"] and end <= p["ts"] + p["dur"] + 1e-6 for p in parents)

    assert layers and all(inside(layer, calls) for layer in layers)
    assert all(inside(op, layers) for op in ops if op["name"].startswith("layer"))
    assert all(inside(op, calls) for op in ops)
    assert all(inside(part, ops) for part in parts)
    # the default detail breaks down the first call of each program only: every other costs the same
    assert {c["name"] for c in calls if any(inside(layer, [c]) for layer in layers)} == {
        "prefill chunk 0",
        "decode step 0",
    }


def test_every_charged_second_is_drawn_and_fixed_cost_included(compiled: qc.CompiledModel, tmp_path: Path) -> None:
    events = _trace(compiled, tmp_path / "t.json", "layer")
    decode = compiled.simulation.steps["decode"]
    call = next(s for s in _spans(events) if s["name"] == "decode step 0")
    within = [s for s in _spans(events) if call["ts"] <= s["ts"] < call["ts"] + call["dur"]]
    parts = [s for s in within if s["name"] in PARTS]
    assert sum(p["dur"] for p in parts) == pytest.approx(call["dur"], rel=1e-9)
    fixed = [p["dur"] for p in parts if p["name"] == "fixed cost"]
    assert len(fixed) == len(decode.ops) and sum(fixed) == pytest.approx(1e6 * OP_OVERHEAD_S * len(decode.ops))
    for op in decode.ops:
        assert sum(seconds for _, seconds in charged_parts(op)) == pytest.approx(op.seconds, rel=1e-12)


def test_one_soc_has_no_pcie_track_and_layer_detail_is_small(compiled: qc.CompiledModel, tmp_path: Path) -> None:
    full = _trace(compiled, tmp_path / "op.json", "op")
    tracks = {e["args"]["name"] for e in full if e["name"] == "thread_name"}
    assert not any("PCIe" in name for name in tracks)
    assert {"core  0", "core 13", "NoC (on-chip transfers)"} <= tracks
    assert _spans(full, 1000), "the cores' gathers are drawn on the NoC track"
    _trace(compiled, tmp_path / "layer.json", "layer")
    assert (tmp_path / "layer.json").stat().st_size < (tmp_path / "op.json").stat().st_size / 2


def test_unknown_trace_detail_is_refused_before_the_work(compiled: qc.CompiledModel, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="trace_detail must be one of layer, op, got 'ops'"):
        compiled.generate([[1, 2]], 2, trace=tmp_path / "t.json", trace_detail="ops")
    assert not (tmp_path / "t.json").exists()
