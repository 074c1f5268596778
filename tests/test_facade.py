"""`QEFFAutoModelForCausalLM`: QEfficient's API over the compiler; its report is the simulated device's."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import qeff_compiler as qc
from qeff_compiler import QEFFAutoModelForCausalLM
from qeff_compiler.data import TINY_MPT
from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.facade import cache_directory, compile_options
from tests.conftest import random_model, tiny_config


def test_batches_of_prompts_generate_what_the_compiled_model_generates(tmp_path: Path) -> None:
    # a small random MPT with the shipped tokenizer's vocabulary: compiles in a fraction of the shipped model's time
    model = QEFFAutoModelForCausalLM.from_pretrained(random_model(tiny_config(vocab_size=2048, max_seq_len=64)))
    path = model.compile(compile_dir=tmp_path, prefill_seq_len=16, ctx_len=64, batch_size=2, num_cores=14,
                         mxint8_kv_cache=True, device="ai100-standard", mxfp6=True, device_group=[0])
    options = qc.load_compiled(path).options  # mxfp6 / device_group: QEfficient's older spellings
    assert (options.kv_cache_dtype, options.precision, options.num_cores) == ("mxint8", "mxfp6", 14)
    assert isinstance(path, Path)  # QEfficient returns a Path
    tokenizer = AutoTokenizer.from_pretrained(TINY_MPT)
    prompts = ["import os\n", "    def __init__(self", "class Foo:"]
    info = model.generate(tokenizer, prompts, generation_len=8, engine="host")
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
        (lambda m: m.compile(num_speculative_tokens=3), "num_speculative_tokens"),
        (lambda m: m.compile(full_batch_size=4), "full_batch_size"),
        (lambda m: m.compile(aic_enable_depth_firts=True), "aic_enable_depth_firts"),  # a misspelt flag
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
    options = compile_options(None, prefill_seq_len=32, ctx_len=128, batch_size=1, num_devices=1, num_cores=14,
                              mxfp6_matmul=True, mxint8_kv_cache=False, device_group=[0])
    assert options["precision"] == "mxfp6" and options["num_cores"] == 14
    assert options["device"] == qc.compile.__kwdefaults__["device"] == "ai100-standard"  # one default everywhere
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
QEFF_DEFAULTS = dict(full_batch_size=None, kv_cache_batch_size=None,
                     comp_ctx_lengths_prefill=None, comp_ctx_lengths_decode=None, prefill_only=None,
                     enable_chunking=False, retain_full_kv=None, layerwise=False, kv_cache_prefix=None,
                     use_onnx_subfunctions=False, offload_pt_weights=True, aic_enable_depth_first=False, mos=-1)


def test_qefficient_arguments_at_their_defaults_are_accepted_silently(caplog: pytest.LogCaptureFixture) -> None:
    """QEfficient's compile signature (modeling_auto.py) at its default values means a plain compile here."""
    plain = compile_options(None, prefill_seq_len=32, ctx_len=128, batch_size=1, num_devices=1, num_cores=None,
                            mxfp6_matmul=False, mxint8_kv_cache=False)
    with caplog.at_level(logging.WARNING, logger="qeff_compiler.facade"):
        given = compile_options(None, prefill_seq_len=32, ctx_len=128, batch_size=1, num_devices=1, num_cores=None,
                                mxfp6_matmul=False, mxint8_kv_cache=False, **QEFF_DEFAULTS)
    assert given == plain and plain["precision"] == "fp16" and not caplog.records
    QEFFAutoModelForCausalLM.from_pretrained(TINY_MPT, continuous_batching=False, qaic_config=None)


def test_a_qaic_flag_that_tunes_the_binary_is_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="qeff_compiler.facade"):
        options = compile_options(None, prefill_seq_len=32, ctx_len=128, batch_size=1, num_devices=1, num_cores=None,
                                  mxfp6_matmul=False, mxint8_kv_cache=False, aic_enable_depth_first=True, mos=1)
    assert "aic_enable_depth_first" not in options and "mos" not in options
    assert "['aic_enable_depth_first', 'mos']" in caplog.text and "do not model" in caplog.text


def test_compile_writes_to_the_cache_directory_and_generate_runs_the_fast_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QEFFC_HOME", str(tmp_path / "cache"))
    model = QEFFAutoModelForCausalLM.from_pretrained(random_model(tiny_config(vocab_size=2048, max_seq_len=64)))
    path = model.compile(prefill_seq_len=8, ctx_len=32, verify=False)
    assert isinstance(path, Path) and path.parent == tmp_path / "cache" / "MptForCausalLM"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # nothing in the working directory
    tokenizer = AutoTokenizer.from_pretrained(TINY_MPT)
    with caplog.at_level(logging.WARNING, logger="qeff_compiler.facade"):
        info = model.generate(tokenizer, ["import os\n"], generation_len=6, write_io=True)
    assert "write_io=True" in caplog.text
    on_ort = model.compiled.generate([tokenizer.encode("import os\n")], max_new_tokens=6, engine="onnxruntime")
    assert [ids.tolist() for ids in info.generated_ids] == [list(row) for row in on_ort.new_tokens]
    assert any(key.startswith("onnxruntime") for key in model.compiled._executors)  # the default engine ran


def test_the_cache_directory_follows_xdg_without_qeffc_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("QEFFC_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_directory() == tmp_path / "qeffc"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_directory() == Path.home() / ".cache" / "qeffc"


def test_docs_list_every_qefficient_argument_the_facade_sorts() -> None:
    import re

    from qeff_compiler import facade

    text = (Path(__file__).resolve().parents[1] / "docs" / "tune.md").read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2] for line in text.splitlines() if line.startswith("| ")}
    named = {kind: set(re.findall(r"`(\w+)", cell)) for kind, cell in rows.items()}
    assert named["`qaic-compile` flags (`compiler_options`)"] == set(facade.QAIC_COMPILER_FLAGS)
    assert named["build details"] == set(facade.QEFF_COMPILE_NO_EFFECT)
    prefixes = {n.rstrip("_") for n in named["features not supported here"]}
    expected = set(facade.QEFF_COMPILE_DEFAULTS) | set(facade.QEFF_LOAD_DEFAULTS)
    assert {n for n in expected if not any(n.startswith(p) for p in prefixes)} == set()
    assert named["this compiler's options (`compiler_options`)"] >= set(facade.COMPILER_OPTIONS)
