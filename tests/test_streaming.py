"""Streamed compiles: lazy weight recipes, sharded and pickled checkpoints, and byte identity with the in-memory
pipeline over HF's `from_pretrained`."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors import safe_open
from transformers import MptForCausalLM

import qeff_compiler as qc
from qeff_compiler.errors import WeightError
from qeff_compiler.ir.samples import sample_inputs
from qeff_compiler.ir.weights import Derivation, WeightSpec, WeightStore
from qeff_compiler.progress import RichProgress
from rich.filesize import decimal
from qeff_compiler.weights_file import write_weights
from tests.conftest import random_model, tiny_config

ROOT = Path(__file__).resolve().parents[1]
ARTIFACT_FILES = ("weights.safetensors", "program.onnx", "decode.onnx", "partition_plan.json")


def _tool():
    spec = importlib.util.spec_from_file_location("make_synthetic_checkpoint", ROOT / "tools" / "make_synthetic_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic bf16 checkpoint (tied embeddings, clip_qkv) in several shards, written by the tool."""
    directory = tmp_path_factory.mktemp("synthetic")
    config = tiny_config(n_layers=3, d_model=64, vocab_size=96, attn_config={"clip_qkv": 0.5})
    _tool().write_checkpoint(config, directory, seed=3, shard_size=20_000)
    return directory


def test_tool_writes_a_sharded_bf16_checkpoint_hf_loads(checkpoint: Path) -> None:
    shards = sorted(checkpoint.glob("model-*.safetensors"))
    assert len(shards) > 2 and (checkpoint / "model.safetensors.index.json").is_file()
    with safe_open(str(shards[0]), framework="pt") as handle:
        assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"BF16"}  # noqa: SIM118
    model = MptForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    weight = model.transformer.blocks[1].ffn.up_proj.weight
    assert 0.018 < weight.std().item() < 0.022 and model.lm_head.weight is model.transformer.wte.weight
    assert _tool().synthetic_tensor("transformer.blocks.1.ffn.up_proj.weight", tuple(weight.shape), 3).float().equal(weight)


@pytest.mark.parametrize("precision", ["mxfp6"])  # lower-fp16 runs first: both kinds of recipe
def test_streamed_artifact_is_byte_identical_to_from_pretrained_in_memory(
    checkpoint: Path, tmp_path: Path, precision: str
) -> None:
    """The streamed path (lazy recipes over memory-mapped shards) writes the same bytes as HF `from_pretrained` +
    the in-memory pipeline, which evaluates every lowering at once; and runs (streaming, from the compile and
    from the loaded artifact) to the same outputs as the in-memory host executor, which folds its weights."""
    options = {"precision": precision, "ctx_len": 32, "prefill_len": 8}
    hf_model = MptForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    reference = qc.compile(hf_model, stream=False, verify=False, **options)  # verify changes no byte; it costs time
    streamed = qc.compile(checkpoint, stream=True, **options)
    assert streamed.prefill.weights.streaming and not reference.prefill.weights.streaming
    reference.save(tmp_path / "reference")
    streamed.save(tmp_path / "streamed")
    for name in ARTIFACT_FILES:
        assert (tmp_path / "streamed" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
    loaded = qc.load_compiled(tmp_path / "streamed", stream=True)
    assert loaded.decode.weights.streaming
    inputs = sample_inputs(reference.decode, seed=1)
    expected = reference.host_executors()[1](inputs)
    for model in (streamed, loaded):
        for name, value in model.host_executors()[1](inputs).items():
            torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)


def test_progress_bars_report_bytes_per_stage(checkpoint: Path, tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), width=120)
    bars = RichProgress(console)
    compiled = qc.compile(checkpoint, precision="int8", ctx_len=32, prefill_len=8, stream=True, progress=bars)
    compiled.save(tmp_path / "art", progress=bars)
    shown = console.file.getvalue()
    weights = decimal(compiled.prefill.weights.nbytes())
    lines = shown.splitlines()
    for stage in ("compile prefill", "compile decode", "write weights", "export program.onnx", "checksum"):
        assert sum(line.startswith(f"✓ {stage} ") for line in lines) == 1, shown  # one line per stage, never repeated
    assert f"{weights}/{weights}" in shown, shown
    assert "0/0" not in shown and "?" not in shown, shown  # a stage without bytes shows only its time


def test_streaming_store_evaluates_recipes_only_when_read_and_each_once() -> None:
    calls: list[str] = []

    def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append("split")
        return x.to(torch.float16), x.sum(dim=1)

    source = WeightStore.from_tensors({"w": torch.arange(6.0).reshape(2, 3)})
    derivation = Derivation(
        ("w.half", "w.sum"), (WeightSpec((2, 3), torch.float16), WeightSpec((2,), torch.float32)), ("w",), split
    )
    lazy = source.streamed().derive([derivation]).without(["w"])
    assert calls == [] and lazy["w.half"].dtype == torch.float16
    assert lazy.tensor("w.half").tolist() == [[0, 1, 2], [3, 4, 5]] and lazy.tensor("w.sum").tolist() == [3, 12]
    assert calls == ["split"]  # both outputs of one evaluation
    source.derive([derivation])
    assert calls == ["split", "split"]  # a resident store evaluates when the recipe is added
    wrong = Derivation(("w.half",), (WeightSpec((3, 2), torch.float16),), ("w",), lambda x: (x.to(torch.float16),))
    with pytest.raises(WeightError, match=r"recipe for \['w.half'\] made .*\(2, 3\).*specs say.*\(3, 2\)"):
        source.derive([wrong])


def test_weights_file_stores_tied_weights_once_and_safetensors_reads_it(tmp_path: Path) -> None:
    shared = torch.randn(4, 3)
    store = WeightStore.from_tensors({"a": shared, "b": torch.ones(2, dtype=torch.int8), "tied": shared, "s": torch.tensor(2.5)})
    written = write_weights(store, tmp_path / "w.safetensors")
    assert written.tensors["tied"] == written.tensors["a"]
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as handle:
        assert sorted(handle.keys()) == ["a", "b", "s"]  # noqa: SIM118
        assert handle.get_tensor("a").equal(shared) and handle.get_tensor("s").item() == 2.5
    raw = (tmp_path / "w.safetensors").read_bytes()
    a = written.tensors["a"]
    assert torch.frombuffer(bytearray(raw[a.offset : a.offset + a.length]), dtype=torch.float32).reshape(4, 3).equal(shared)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_fp16_and_fp32_checkpoints_load_as_stored(tmp_path: Path, dtype: torch.dtype) -> None:
    model = random_model(tiny_config()).to(dtype)
    model.save_pretrained(tmp_path)
    program = qc.capture(tmp_path)
    expected = model.transformer.blocks[0].attn.Wqkv.weight.float()
    assert program.weights.tensor("transformer.blocks.0.attn.Wqkv.weight").equal(expected)


def test_pickle_checkpoint_needs_an_explicit_opt_in(tmp_path: Path) -> None:
    model = random_model(tiny_config())
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightError, match=r"pickles: loading one can execute arbitrary code.*allow_pickle=True"):
        qc.compile(tmp_path, precision="fp32", ctx_len=16, prefill_len=4)
    compiled = qc.compile(tmp_path, precision="fp32", ctx_len=16, prefill_len=4, allow_pickle=True)
    reference = qc.compile(model, precision="fp32", ctx_len=16, prefill_len=4)
    out, expected = compiled.generate([[1, 2, 3]], max_new_tokens=4), reference.generate([[1, 2, 3]], max_new_tokens=4)
    assert out.sequences.equal(expected.sequences)
