"""The hand-off ONNX graph runs in ONNX Runtime as emitted: one file for prefill (seq_len = prefill_len) and decode
(seq_len 1) at two batch sizes, greedy tokens equal to HF's, logits within 1e-4, padding never written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

import qeff_compiler as qc
from qeff_compiler.backends.qaic.ctx_ops import CLOUD_DOMAIN
from qeff_compiler.data import TINY_MPT
from tests.conftest import random_model
from tests.strategies import mpt_configs
from tests.test_generate import MARGIN, hf_greedy

PREFILL_LEN, CTX_LEN = 16, 64


@pytest.fixture(scope="module")
def shipped() -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(TINY_MPT, dtype=torch.float32).eval()  # stored bf16: load as fp32


@pytest.fixture(scope="module")
def handoff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model compiled to fp16 + MXINT8 KV (precision is the device's flags: the graph stays fp32)."""
    compiled = qc.compile(TINY_MPT, precision="fp16", kv_cache_dtype="mxint8", ctx_len=CTX_LEN, prefill_len=PREFILL_LEN)
    directory = tmp_path_factory.mktemp("qaic")
    compiled.export_qaic(directory)
    return directory / "model.onnx"


def run_greedy(
    session: ort.InferenceSession, prompts: list[list[int]], new_tokens: int
) -> tuple[list[list[int]], list[np.ndarray]]:
    """Right-padded prefill of every prompt in one call, then single-token decode steps: new tokens per row and
    the logits [batch, vocab] of every step."""
    batch = len(prompts)
    names = [o.name for o in session.get_outputs()]
    feed = {}
    for value in session.get_inputs():
        if value.name.startswith("past_"):
            _, heads, _, head_dim = value.shape
            feed[value.name] = np.zeros((batch, heads, CTX_LEN, head_dim), np.float32)
    ids = np.zeros((batch, PREFILL_LEN), np.int64)
    positions = np.full((batch, PREFILL_LEN), -1, np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)], positions[row, : len(prompt)] = prompt, np.arange(len(prompt))
    tokens: list[list[int]] = [[] for _ in prompts]
    steps = []
    for step in range(new_tokens):
        out = dict(zip(names, session.run(None, {**feed, "input_ids": ids, "position_ids": positions}), strict=True))
        assert out["logits"].shape == (batch, 1, out["logits"].shape[2])
        steps.append(out["logits"][:, 0])
        for row in range(batch):
            tokens[row].append(int(out["logits"][row, 0].argmax()))
        feed.update({name.removesuffix("_RetainedState"): out[name] for name in names[1:]})
        ids = np.array([[row[-1]] for row in tokens])
        positions = np.array([[len(prompt) + step] for prompt in prompts])
    return tokens, steps


def test_checker_accepts_the_file_by_path(handoff: Path) -> None:
    onnx.checker.check_model(str(handoff), full_check=True)
    model = onnx.load(str(handoff), load_external_data=False)
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 17), (CLOUD_DOMAIN, 1)}
    assert {n.domain for n in model.graph.node} <= {"", CLOUD_DOMAIN}
    assert [(f.domain, f.name) for f in model.functions] == [(CLOUD_DOMAIN, "CtxScatter")]
    external = [
        i.name.removesuffix(".T") for i in model.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL
    ]
    assert len(external) == len(set(external))  # each weight stored once, in one orientation
    per_layer = (
        "norm_1.weight",
        "attn.Wqkv.weight",
        "attn.out_proj.weight",
        "norm_2.weight",
        "ffn.up_proj.weight",
        "ffn.down_proj.weight",
    )
    layers = {f"transformer.blocks.{i}.{name}" for i in range(4) for name in per_layer}
    assert set(external) == {
        "transformer.wte.weight",
        "transformer.norm_f.weight",
        *layers,
    }  # tied lm_head: stored once


@pytest.mark.parametrize(
    "prompts", [[[5, 9, 100, 7, 31, 2, 8, 64, 12]], [[5, 9, 100, 7], [200, 13, 7, 1, 2, 3, 4, 5, 6, 7, 8], [42]]]
)
def test_ort_prefill_and_decode_from_one_file_equal_hf(
    handoff: Path, shipped: torch.nn.Module, prompts: list[list[int]]
) -> None:
    """Batch 1 and 3 (ragged, right-padded) from the same file: HF's greedy tokens, HF's logits within 1e-4."""
    session = ort.InferenceSession(str(handoff), providers=["CPUExecutionProvider"])
    tokens, steps = run_greedy(session, prompts, new_tokens=8)
    for row, prompt in enumerate(prompts):
        expected, margin = hf_greedy(shipped, prompt, 8)
        assert margin > MARGIN
        assert tokens[row] == expected, f"row {row}"
        with torch.no_grad():
            reference = shipped(torch.tensor([prompt + expected[:-1]])).logits[0, len(prompt) - 1 :]
        ours = torch.from_numpy(np.stack([step[row] for step in steps]))
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-4)


def test_padding_positions_never_write_the_cache(handoff: Path) -> None:
    """Random caches in, tokens at positions 3..5 in row 0 with padding around them, row 1 all padding: every
    slot but 3..5 of row 0 comes back unchanged (position −1 would wrap to the last slot in a plain ScatterND)."""
    session = ort.InferenceSession(str(handoff), providers=["CPUExecutionProvider"])
    generator = np.random.default_rng(0)
    feed = {
        v.name: generator.standard_normal((2, v.shape[1], CTX_LEN, v.shape[3])).astype(np.float32)
        for v in session.get_inputs()
        if v.name.startswith("past_")
    }
    positions = np.full((2, 8), -1, np.int64)
    positions[0, 2:5] = [3, 4, 5]
    names = [o.name for o in session.get_outputs()]
    out = dict(
        zip(
            names,
            session.run(None, {**feed, "input_ids": np.ones((2, 8), np.int64), "position_ids": positions}),
            strict=True,
        )
    )
    for name in names[1:]:
        before, after = feed[name.removesuffix("_RetainedState")], out[name]
        changed = np.argwhere(np.any(before != after, axis=(1, 3)))
        assert changed.tolist() == [[0, 3], [0, 4], [0, 5]], name


@settings(max_examples=12, deadline=None)  # ~3 s each on a loaded 2-core machine (compile, export, session)
@given(config=mpt_configs(), data=st.data())
def test_random_configs_generate_hf_tokens_through_the_handoff_graph(config, data) -> None:
    """An fp32 compile's onnxruntime engine runs the hand-off graph (ragged batch, chunked prefill, decode): each row
    equals HF generating it alone, where HF's own top-2 margin exceeds 1e-3 at every step (near-ties filtered)."""
    model = random_model(config, seed=data.draw(st.integers(0, 2**16), label="seed"))
    batch = data.draw(st.integers(1, 3), label="batch")
    max_new = data.draw(st.integers(1, 5), label="max_new_tokens")
    lengths = data.draw(st.lists(st.integers(1, min(config.max_seq_len - max_new, 16)), min_size=batch, max_size=batch))
    prefill_len = data.draw(st.integers(1, max(lengths)), label="prefill_len")
    ctx_len = data.draw(st.integers(max(max(lengths) + max_new, prefill_len), config.max_seq_len), label="ctx_len")
    prompts = [torch.randint(0, config.vocab_size, (n,)).tolist() for n in lengths]
    expected = [hf_greedy(model, prompt, max_new) for prompt in prompts]
    assume(all(margin > MARGIN for _, margin in expected))

    compiled = qc.compile(model, precision="fp32", ctx_len=ctx_len, prefill_len=prefill_len, batch_size=batch, verify=False)
    out = compiled.generate(prompts, max_new_tokens=max_new, engine="onnxruntime", eos_token_id=[])
    assert type(compiled.executors("onnxruntime")[0]).__name__ == "HandoffExecutor"
    for row, (tokens, _) in enumerate(expected):
        assert list(out.new_tokens[row]) == tokens, f"row {row}"
