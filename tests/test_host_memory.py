"""How a compile decides to stream, what it expects to need, and refusing an in-memory compile that cannot fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from qeff_compiler import host_memory
from qeff_compiler.cli.main import app
from qeff_compiler.errors import HostMemoryError
from qeff_compiler.host_memory import LARGEST_WEIGHT_FACTOR, STREAMED_OVERHEAD, check_fits, estimate_compile_memory
from qeff_compiler.ir.weights import WeightStore
from tests.conftest import TinyArtifact

MIB = 2**20


def _weights(mib: int) -> WeightStore:
    """`mib` MiB of fp32 weights (never touched, so they take no memory)."""
    return WeightStore.from_tensors({"a": torch.empty(mib * MIB // 4), "b": torch.empty(MIB // 4)})


@pytest.fixture
def plenty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_memory, "available_bytes", lambda: 64 * 2**30)


def test_a_checkpoint_streams_by_default_once_in_memory_would_exceed_its_size_plus_the_overhead(plenty: None) -> None:
    # bf16 checkpoints: the in-memory peak (2 x fp32 = 4 x stored) passes stored + 512 MiB above ~170 MiB
    assert not estimate_compile_memory(_weights(300), None, stored_bytes=150 * MIB).streaming
    assert estimate_compile_memory(_weights(400), None, stored_bytes=200 * MIB).streaming
    assert not estimate_compile_memory(_weights(400), False, stored_bytes=200 * MIB).streaming
    assert not estimate_compile_memory(_weights(400), None, stored_bytes=None).streaming  # a model object


def test_a_small_checkpoint_streams_when_the_machine_cannot_hold_it_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_memory, "available_bytes", lambda: 100 * MIB)
    memory = estimate_compile_memory(_weights(60), None, stored_bytes=30 * MIB)
    assert memory.streaming and memory.peak_bytes == STREAMED_OVERHEAD + int(LARGEST_WEIGHT_FACTOR * 60 * MIB)


def test_an_in_memory_compile_that_cannot_fit_is_refused_naming_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_memory, "available_bytes", lambda: 100 * MIB)
    memory = estimate_compile_memory(_weights(60), False, stored_bytes=30 * MIB)
    with pytest.raises(HostMemoryError, match=r"needs about 122 MiB.* 100 MiB available: compile with --stream"):
        check_fits(memory, from_checkpoint=True)
    check_fits(memory, from_checkpoint=False)  # a model object is in memory already: nothing to refuse


def test_qeffc_compile_states_the_expected_peak_before_compiling(tiny_artifact: TinyArtifact, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["compile", str(tiny_artifact.model_dir), "-o", str(tmp_path / "a"), "--ctx-len", "24", "--prefill-len", "8"]
    )
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("expected peak memory ") and "(in memory) of " in first and "available" in first
