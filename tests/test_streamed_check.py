"""A streamed compile is checked, not trusted: its pipeline runs with the numeric check on reduced programs (one
layer, part of the vocabulary) built from the checkpoint's real weights."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

import qeff_compiler as qc
from qeff_compiler.capture import resolve_model
from qeff_compiler.errors import VerificationError
from qeff_compiler.ir.program import Program
from qeff_compiler.ir.weights import Derivation
from qeff_compiler.passes.base import PassResult
from qeff_compiler.passes.lower_fp16 import LowerFp16
from qeff_compiler.passes.pipeline import configure
from qeff_compiler.streamed_check import reduced_model
from tests.conftest import TinyArtifact

class _WrongLowerFp16(LowerFp16):
    """Deliberately wrong: lowers to fp16, then scales every FFN up-projection by 1.5 (recipes, so a streamed
    compile would write them without ever computing them)."""

    name = "test-wrong-lower-fp16"
    summary = "test-only wrong lowering"
    ensures: ClassVar[frozenset[str]] = LowerFp16.ensures

    def transform(self, program: Program) -> PassResult:
        result = super().transform(program)
        weights = result.program.weights
        wrong = [
            Derivation((name,), (weights[name],), (name,), lambda w: (w * 1.5,))
            for name in weights
            if name.endswith("ffn.up_proj.weight")
        ]
        return PassResult(result.program.evolve(weights=weights.derive(wrong)), result.notes)


def _pipeline(wrong: bool) -> list:
    lowering = _WrongLowerFp16() if wrong else configure("lower-fp16")
    return [configure("strip-export-noise"), configure("patch-attention"), lowering, configure("kv-cache", ctx_len=24)]


def test_a_wrong_lowering_is_caught_by_the_streamed_check(tiny_artifact: TinyArtifact) -> None:
    with pytest.raises(VerificationError, match=r"after test-wrong-lower-fp16: output .* differs from the previous stage"):
        qc.compile(tiny_artifact.model_dir, ctx_len=24, prefill_len=8, passes=_pipeline(wrong=True), stream=True)


def test_a_streamed_compile_reports_what_it_checked(tiny_artifact: TinyArtifact) -> None:
    compiled = qc.compile(tiny_artifact.model_dir, ctx_len=24, prefill_len=8, passes=_pipeline(wrong=False), stream=True)
    report = compiled.timing_report()
    assert compiled.prefill.weights.streaming
    for layer in (0, 1):
        assert f"numeric check on a reduced program: layer {layer} of 2 with the first 512 vocabulary rows" in report
    checked = [line for line in report.splitlines() if line.startswith("lower-fp16")]
    assert checked[0].endswith("streamed")  # the full program: not run after each pass
    assert float(checked[1].split()[-1]) > 0  # a reduced program: compared, and fp16 changed the outputs a little


def test_a_reduced_model_reads_the_checkpoints_own_weights(tiny_artifact: TinyArtifact) -> None:
    full = resolve_model(tiny_artifact.model_dir)
    reduced = reduced_model(full, layer=1, vocab_rows=100)
    assert reduced.config.n_layers == 1 and reduced.config.vocab_size == 100
    assert torch.equal(
        reduced.weights.tensor("transformer.blocks.0.attn.Wqkv.weight"),
        full.weights.tensor("transformer.blocks.1.attn.Wqkv.weight"),
    )
    assert torch.equal(reduced.weights.tensor("lm_head.weight"), full.weights.tensor("transformer.wte.weight")[:100])
