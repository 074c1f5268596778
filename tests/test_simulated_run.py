"""The simulated device end to end: the artifact keeps the plan, `qeffc run --trace` writes a Perfetto timeline,
`qeffc inspect` prints the plan and draws it, `qeffc estimate` works from a config alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import qeff_compiler as qc
from qeff_compiler.backends.ai100.partition import PartitionPlan
from tests.conftest import random_model, tiny_config


def qeffc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qeff_compiler.cli.main", *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[qc.CompiledModel, Path]:
    compiled = qc.compile(random_model(tiny_config(n_heads=4)), precision="fp32", ctx_len=24, prefill_len=6, num_cores=3, num_devices=2)
    path = tmp_path_factory.mktemp("artifacts") / "tiny"
    compiled.save(path)
    return compiled, path


def test_artifact_keeps_target_memory_plan_and_partition_plans(artifact) -> None:
    compiled, path = artifact
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["target"] == {"device": "ai100-standard", "num_cores": 3, "num_devices": 2, "p2p_format": "fp16"}
    assert "partition_plan.json" in manifest["files"]  # checksummed like every file
    assert manifest["memory_plan"]["num_devices"] == 2
    plans = json.loads((path / "partition_plan.json").read_text())
    for name in ("prefill", "decode"):
        assert PartitionPlan.from_dict(plans[name]) == compiled.simulation.plans[name]
    loaded = qc.load_compiled(path)
    assert loaded.simulation.decode_step_s == compiled.simulation.decode_step_s


def test_trace_has_a_track_per_core_and_link_and_spans_for_every_call(artifact, tmp_path: Path) -> None:
    compiled, _ = artifact
    path = tmp_path / "trace.json"
    out = compiled.generate([[1, 2, 3, 4, 5, 6, 7]], max_new_tokens=3, trace=path, trace_detail="op")
    events = json.loads(path.read_text())["traceEvents"]
    tracks = {(e["pid"], e["args"]["name"]) for e in events if e["name"] == "thread_name"}
    cores = {(soc, f"core {core:>2}") for soc in range(2) for core in range(3)}
    links = {(soc, name) for soc in range(2) for name in ("NoC (on-chip transfers)", "PCIe P2P (SoC to SoC)")}
    programs = {(soc, "program: call → layer → op → cost") for soc in range(2)}
    assert tracks == cores | links | programs
    calls = {e["args"]["call"] for e in events if e["ph"] == "X" and "call" in e.get("args", {})}
    assert calls == {"prefill chunk 0", "prefill chunk 1", "decode step 0", "decode step 1"}
    last = max(e["ts"] + e["dur"] for e in events if e["ph"] == "X")
    expected_us = 1e6 * (out.stats.prefill_s + out.stats.decode_s)
    assert last == pytest.approx(expected_us, rel=1e-6)
    assert any(e["tid"] == 1001 for e in events if e["ph"] == "X")  # all-reduces between the two SoCs


@pytest.mark.e2e
def test_inspect_prints_the_plan_and_draws_it(artifact, tmp_path: Path) -> None:
    _, path = artifact
    result = qeffc("inspect", str(path), "--plot", str(tmp_path / "plan.png"))
    assert result.returncode == 0, result.stderr
    assert "partition plan" in result.stdout and "memory per SoC" in result.stdout and "simulated decode" in result.stdout
    assert (tmp_path / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.e2e
def test_estimate_from_a_preset_config_and_its_refusal_when_too_big() -> None:
    result = qeffc(
        "estimate", "opt-2.7b-shape", "--precision", "mxfp6", "--ctx-len", "2048", "--prefill-len", "128",
        "--prompt-len", "512", "--generation-len", "256",
    )
    assert result.returncode == 0, result.stderr
    assert "simulated decode" in result.stdout and "weights, KV cache in DDR" in result.stdout
    assert "simulated decode: validated" in result.stdout and "simulated prefill: validated" in result.stdout
    refused = qeffc("estimate", "opt-13b-shape", "--precision", "fp16")
    assert refused.returncode == 2 and "does not fit" in refused.stderr and "num_devices" in refused.stderr
