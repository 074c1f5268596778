"""`QEFFAutoModelForCausalLM`: QEfficient's API over the compiler; its report is the simulated device's."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

import qeff_compiler as qc
from qeff_compiler import QEFFAutoModelForCausalLM
from qeff_compiler.data import TINY_MPT
from qeff_compiler.errors import InvalidArgumentError
from tests.conftest import random_model, tiny_config


def test_batches_of_prompts_generate_what_the_compiled_model_generates(tmp_path: Path) -> None:
    # a small random MPT with the shipped tokenizer's vocabulary: compiles in a fraction of the shipped model's time
    model = QEFFAutoModelForCausalLM.from_pretrained(random_model(tiny_config(vocab_size=2048, max_seq_len=64)))
    path = model.compile(compile_dir=tmp_path, prefill_seq_len=16, ctx_len=64, batch_size=2, num_cores=14,
                         mxint8_kv_cache=True, device="ai100-standard")
    assert (Path(path) / "manifest.json").is_file() and qc.load_compiled(path).options.kv_cache_dtype == "mxint8"
    tokenizer = AutoTokenizer.from_pretrained(TINY_MPT)
    prompts = ["import os\n", "    def __init__(self", "class Foo:"]
    info = model.generate(tokenizer, prompts, generation_len=8)
    assert info.batch_size == 2 and len(info.generated_texts) == len(info.generated_ids) == 3
    direct = model.compiled.generate([tokenizer.encode(p) for p in prompts[:2]], max_new_tokens=8)
    assert [ids.tolist() for ids in info.generated_ids[:2]] == [list(row) for row in direct.new_tokens]
    assert info.generated_texts[0] == tokenizer.decode(direct.new_tokens[0], skip_special_tokens=True)
    step = model.compiled.simulation.decode_step_s
    metrics = info.perf_metrics
    assert metrics.decode_perf == pytest.approx(1 / step)
    assert metrics.total_time == pytest.approx(2 * model.compiled.simulation.prefill_chunk_s + 2 * 7 * step)
    assert metrics.total_perf == pytest.approx(16 / metrics.total_time)
    assert "Simulated on ai100-standard" in repr(info) and "Decode is=" in repr(info)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.compile(onnx_path="model.onnx"), "onnx_path"),
        (lambda m: m.compile(aic_enable_depth_first=True), "aic_enable_depth_first"),
        (lambda m: m.compile(full_batch_size=4), "full_batch_size"),
        (lambda m: m.generate(None, ["x"]), "compile"),
    ],
)
def test_unsupported_requests_are_refused_by_name(call: object, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        call(QEFFAutoModelForCausalLM.from_pretrained(TINY_MPT))


def test_from_pretrained_wants_a_local_directory_or_model() -> None:
    with pytest.raises(InvalidArgumentError, match="mosaicml/mpt-7b"):
        QEFFAutoModelForCausalLM.from_pretrained("mosaicml/mpt-7b")
    with pytest.raises(InvalidArgumentError, match="num_hidden_layers"):
        QEFFAutoModelForCausalLM.from_pretrained(TINY_MPT, num_hidden_layers=2)
