"""`qeffc compile --full-batch-size/--comp-ctx-lengths-*` and `qeffc run --requests`: a workload through the slots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qeff_compiler.cli import main as cli
from tests.conftest import TinyArtifact


def test_compile_with_slots_and_buckets_then_serve_a_workload(
    tiny_artifact: TinyArtifact, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact = tmp_path / "cb"
    compile_argv = ["compile", str(tiny_artifact.model_dir), "-o", str(artifact), "--ctx-len", "24", "--prefill-len",
                    "8", "--full-batch-size", "2", "--comp-ctx-lengths-decode", "8,16,24"]
    assert cli.run(compile_argv) == 0
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["options"]["full_batch_size"] == 2 and manifest["options"]["comp_ctx_lengths_decode"] == [8, 16, 24]
    workload = tmp_path / "workload.json"
    requests = [{"id": "text", "prompt": "def f(", "max_new_tokens": 4},
                {"id": "ids", "token_ids": [5, 6, 7], "max_new_tokens": 6, "arrival_s": 0.001},
                {"id": "sampled", "token_ids": [9], "max_new_tokens": 3, "do_sample": True, "seed": 1}]
    workload.write_text(json.dumps({"requests": requests}))
    capsys.readouterr()
    assert cli.run(["run", str(artifact), "--requests", str(workload), "--trace", str(tmp_path / "slots.json")]) == 0
    printed = capsys.readouterr().out
    for text in ("text", "ids", "sampled", "slot occupancy", "simulated TTFT p50 / p99", "host throughput"):
        assert text in printed
    events = json.loads((tmp_path / "slots.json").read_text())["traceEvents"]
    assert {e["args"]["name"] for e in events if e.get("name") == "thread_name"} == {"slot 0", "slot 1"}
    assert {e["args"]["request"] for e in events if e["ph"] == "X"} == {"text", "ids", "sampled"}
