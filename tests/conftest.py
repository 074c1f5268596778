"""Shared test helpers: small MPT models built from configs, a shared tiny compiled artifact, hypothesis settings."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from transformers import MptConfig, MptForCausalLM

import qeff_compiler as qc

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
settings.load_profile("default")


def tiny_config(**overrides: object) -> MptConfig:
    """A 2-layer MPT small enough to trace in well under a second."""
    fields: dict = {"d_model": 32, "n_heads": 4, "n_layers": 2, "vocab_size": 64, "max_seq_len": 32}
    attn_config = overrides.pop("attn_config", {})
    fields.update(overrides)
    return MptConfig(**fields, attn_config=attn_config)


def random_model(config: MptConfig, seed: int = 0) -> MptForCausalLM:
    """An HF MPT with seeded random weights (std 0.2, so logits are far from uniform) in eval mode."""
    torch.manual_seed(seed)
    model = MptForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.2)
    return model


@pytest.fixture
def tiny_model() -> MptForCausalLM:
    return random_model(tiny_config())


@dataclass(frozen=True)
class TinyArtifact:
    """A tiny MPT directory (random weights, the shipped tokenizer and its vocabulary size), its compiled model
    (ctx_len 24, prefill_len 8, batch 2, fp32) and that model saved as an artifact."""

    root: Path
    model_dir: Path
    compiled: qc.CompiledModel
    artifact: Path


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> TinyArtifact:
    """Shared by the error-catalogue, atomic-write and fuzz tests, which only read it (or copy it to change it)."""
    from qeff_compiler.data import TINY_MPT

    root = tmp_path_factory.mktemp("tiny-artifact")
    model_dir = root / "tiny-mpt"
    random_model(tiny_config(vocab_size=2048)).save_pretrained(model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY_MPT / name, model_dir / name)
    compiled = qc.compile(model_dir, precision="fp32", ctx_len=24, prefill_len=8, batch_size=2)
    compiled.save(root / "artifact")
    return TinyArtifact(root, model_dir, compiled, root / "artifact")


@pytest.fixture(autouse=True)
def _single_threaded_small_ops() -> None:
    """Tiny graphs run faster on one thread; also keeps timings of parallel test runs steadier."""
    torch.set_num_threads(int(os.environ.get("QEFF_TEST_THREADS", "1")))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (soak, full-size)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `slow` run only with --run-slow, so the default (CI) run stays inside its time budget."""
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
