"""patch-attention: one fused op per layer, no softmax left, idempotent, loud on unexpected structure."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

import qeff_compiler as qc
from qeff_compiler.ir.alibi import alibi_slopes
from qeff_compiler.ir.ops import MASK_VALUE
from qeff_compiler.passes import PassManager
from qeff_compiler.passes.patch_attention import AttentionPatternError
from tests.conftest import random_model, tiny_config
from tests.strategies import mpt_configs


@pytest.mark.parametrize("n_heads", [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64])
@pytest.mark.parametrize("alibi_bias_max", [1, 4, 8, 16])
def test_slopes_match_hf_alibi_table(n_heads: int, alibi_bias_max: int) -> None:
    table = build_mpt_alibi_tensor(n_heads, 16, alibi_bias_max)  # [heads, 1, 16]: slope * (j - 15)
    torch.testing.assert_close(alibi_slopes(n_heads, alibi_bias_max), -table[:, 0, 0] / 15, rtol=1e-6, atol=0)


@settings(max_examples=15)
@given(config=mpt_configs(), data=st.data())
def test_patched_graph_has_one_fused_op_per_layer_and_no_softmax(config, data) -> None:
    program = qc.capture(random_model(config), seq_len=data.draw(st.integers(1, config.max_seq_len)))
    patched = PassManager("patch-attention").run(program)  # the manager's numeric check compares with HF's graph
    histogram = patched.op_histogram()
    assert histogram["qeff.mpt_attention"] == config.n_layers
    assert not {"aten.softmax", "aten._softmax", "aten.masked_fill", "aten.pow"} & set(histogram)
    assert "attention-patched" in patched.properties
    slopes = patched.weights.tensor("alibi_slopes")
    torch.testing.assert_close(slopes, alibi_slopes(config.n_heads, 8))


def test_patch_attention_is_idempotent() -> None:
    once = PassManager("patch-attention").run(qc.capture(random_model(tiny_config(n_heads=3, d_model=24))))
    twice = PassManager("patch-attention").run(once)
    assert [n.format_node() for n in twice.graph.nodes] == [n.format_node() for n in once.graph.nodes]


def test_clip_qkv_and_softmax_scale_are_carried_by_the_op() -> None:
    config = tiny_config(attn_config={"clip_qkv": 0.25, "softmax_scale": 0.7})
    patched = PassManager("patch-attention").run(qc.capture(random_model(config)))
    fused = [n for n in patched.graph.nodes if n.target == torch.ops.qeff.mpt_attention.default]
    assert {(n.kwargs["clip_qkv"], n.kwargs["softmax_scale"], n.kwargs["n_heads"]) for n in fused} == {(0.25, 0.7, 4)}


def test_mask_value_is_finite_in_fp16() -> None:
    assert torch.isfinite(torch.tensor(MASK_VALUE, dtype=torch.float16))
    assert MASK_VALUE <= torch.finfo(torch.float16).min


def test_an_unrecognised_layer_is_named() -> None:
    program = qc.capture(random_model(tiny_config()))
    graph_module = program.copy_graph()
    softmax = next(n for n in graph_module.graph.nodes if n.target == torch.ops.aten.softmax.int and "blocks.1" in str(n.meta["nn_module_stack"]))
    softmax.target = torch.ops.aten.log_softmax.int  # a layer that no longer has MPT's structure
    graph_module.recompile()
    with pytest.raises(AttentionPatternError, match=r"layer transformer.blocks.1.attn .*aten.softmax: found 0, expected 1"):
        PassManager("patch-attention").run(program.evolve(graph_module=graph_module))
