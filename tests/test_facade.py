"""`QEFFAutoModelForCausalLM`: QEfficient's API over the compiler; its report is the simulated device's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import qeff_compiler as qc
from qeff_compiler import QEFFAutoModelForCausalLM
from qeff_compiler.data import TINY_MPT
from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.facade import compile_options
from tests.conftest import random_model, tiny_config


def test_batches_of_prompts_generate_what_the_compiled_model_generates(tmp_path: Path) -> None:
    # a small random MPT with the shipped tokenizer's vocabulary: compiles in a fraction of the shipped model's time
    model = QEFFAutoModelForCausalLM.from_pretrained(random_model(tiny_config(vocab_size=2048, max_seq_len=64)))
    path = model.compile(compile_dir=tmp_path, prefill_seq_len=16, ctx_len=64, batch_size=2, num_cores=14,
                         mxint8_kv_cache=True, device="ai100-standard", mxfp6=True, device_group=[0])
    options = qc.load_compiled(path).options  # mxfp6 / device_group: QEfficient's older spellings
    assert (options.kv_cache_dtype, options.precision, options.num_cores) == ("mxint8", "mxfp6", 14)
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


def test_older_qefficient_spellings_of_the_mpt_notebook_are_understood() -> None:
    """QEfficient's MPT notebook calls compile(num_cores=14, mxfp6=True, device_group=[0]) and
    generate(prompts=[...]) without a tokenizer."""
    options = compile_options(None, prefill_seq_len=32, ctx_len=128, batch_size=1, full_batch_size=None,
                              num_devices=1, num_cores=14, mxfp6_matmul=True, mxint8_kv_cache=False)
    assert options["precision"] == "mxfp6" and options["num_cores"] == 14 and options["device"] == "ai100-pro"
    model = QEFFAutoModelForCausalLM.from_pretrained(TINY_MPT)
    with pytest.raises(InvalidArgumentError, match="compile"):  # the tokenizer is optional; the compile is not
        model.generate(prompts=["My name is"])


def test_continuous_batching_as_qefficient_spells_it(tmp_path: Path) -> None:
    """from_pretrained(continuous_batching=True), compile(full_batch_size, comp_ctx_lengths_*): generate takes more
    prompts than slots and returns one text per prompt, each what that prompt gets alone."""
    model = QEFFAutoModelForCausalLM.from_pretrained(TINY_MPT, continuous_batching=True)
    path = model.compile(compile_dir=tmp_path, prefill_seq_len=16, ctx_len=64, full_batch_size=2,
                         comp_ctx_lengths_decode=[32, 64], verify=False)
    tokenizer = AutoTokenizer.from_pretrained(TINY_MPT)
    prompts = ["def f(x):", "import os", "class A:"]
    info = model.generate(tokenizer, prompts, generation_len=6)
    assert info.batch_size == 2 and len(info.generated_texts) == 3
    for prompt, text, ids in zip(prompts, info.generated_texts, info.generated_ids, strict=True):
        alone = model.compiled.generate([tokenizer.encode(prompt)], max_new_tokens=6).new_tokens[0]
        assert ids.tolist() == list(alone) and text == tokenizer.decode(alone, skip_special_tokens=True)
    names = [s["name"] for s in json.loads((Path(path) / "qaic" / "specializations.json").read_text())["specializations"]]
    assert names == ["Prefill", "Decode_0", "Decode_1"]
    assert info.perf_metrics.decode_perf > 0 and info.perf_metrics.total_time > 0
