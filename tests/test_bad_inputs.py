"""Bad input of every kind ends in a specific `QeffError` (one line through `qeffc`) or in correct output:
wrong JSON types and malformed model files, non-finite numbers, absurd sizes, sampling and text arguments, and
artifact files changed between `load_compiled` and the onnxruntime engine's first run."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from transformers import MptConfig, MptForCausalLM

import qeff_compiler as qc
from qeff_compiler.backends.ai100.devices import DEVICES, MAX_DEVICES
from qeff_compiler.capture import resolve_model
from qeff_compiler.capture.bounds import LARGEST_TARGET_BYTES, MAX_PARAMETERS, SIZE_BOUNDS, parameter_count
from qeff_compiler.cli import main as cli
from qeff_compiler.errors import (
    ArtifactError,
    ArtifactIntegrityError,
    Fp16OverflowError,
    InvalidArgumentError,
    ModelSourceError,
    NonFiniteError,
    UnsupportedConfigError,
    WeightError,
)
from qeff_compiler.passes import PassManager
from qeff_compiler.runtime.sampling import SamplingConfig, TokenSampler
from tests.conftest import TinyArtifact, random_model, tiny_config


@pytest.fixture(scope="module")
def model_dir(tiny_artifact: TinyArtifact) -> Path:
    return tiny_artifact.model_dir


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _with_config(model_dir: Path, target: Path, **fields: object) -> Path:
    directory = _copy(model_dir, target)
    config = json.loads((directory / "config.json").read_text())
    config.update(fields)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


# 5: wrong JSON types, malformed index and tokenizer ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"expansion_ratio": 4.0}, "config.expansion_ratio must be an integer, got a number (4.0)"),
        ({"d_model": None}, "config.d_model must be an integer, got null"),
        ({"n_heads": True}, "config.n_heads must be an integer, got a boolean (true)"),
        ({"attn_config": "foo"}, "config.attn_config must be an object or null, got a string ('foo')"),
        ({"layer_norm_epsilon": "1e-5"}, "config.layer_norm_epsilon must be a number, got a string ('1e-5')"),
        ({"attn_config": {"alibi": "yes"}}, "config.attn_config.alibi must be a boolean, got a string ('yes')"),
        ({"eos_token_id": [1, "2"]}, "config.eos_token_id must be an integer or a list of integers or null"),
        ({"dtype": "float77"}, "config.dtype must name a torch dtype"),
        ({"id2label": {"x": "LABEL"}}, "config.id2label must map integer ids to label strings"),
        ({"num_labels": 10**9}, "config.num_labels must be in [0, 65536], got 1000000000"),
    ],
)
def test_config_fields_of_the_wrong_type_are_named(model_dir: Path, tmp_path: Path, fields: dict, message: str) -> None:
    with pytest.raises(ModelSourceError) as caught:
        resolve_model(_with_config(model_dir, tmp_path / "m", **fields))
    assert message in str(caught.value) and "config.json" in str(caught.value)


def test_integers_in_float_fields_are_accepted_as_floats(model_dir: Path, tmp_path: Path) -> None:
    directory = _with_config(model_dir, tmp_path / "m", layer_norm_epsilon=0, attn_config={"clip_qkv": 6})
    config = resolve_model(directory).config
    assert config.layer_norm_epsilon == 0.0 and config.attn_config.clip_qkv == 6.0


def test_config_json_that_is_not_utf8_is_named(model_dir: Path, tmp_path: Path) -> None:
    directory = _copy(model_dir, tmp_path / "m")
    (directory / "config.json").write_bytes(b'{"model_type": "mpt", "x": "\xff"}')
    with pytest.raises(ModelSourceError, match=r"config.json is not UTF-8 text: byte 0xff at offset 28"):
        resolve_model(directory)


def _sharded(model_dir: Path, target: Path) -> tuple[Path, dict[str, str]]:
    directory = _copy(model_dir, target)
    tensors = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    save_file(tensors, str(directory / "model-00001-of-00001.safetensors"), metadata={"format": "pt"})
    return directory, dict.fromkeys(tensors, "model-00001-of-00001.safetensors")


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ({"weight_map": ["model-00001-of-00001.safetensors"]}, "got 'weight_map': an array"),
        ({"weight_map": {"lm_head.weight": 3}}, "weight_map['lm_head.weight'] must be a shard file name (a string), got a number (3)"),
        ({"weight_map": {"x": "../model-00001-of-00001.safetensors"}}, "is not a .safetensors file name in the index's directory"),
        ({"weight_map": {"x": "/etc/passwd"}}, "is not a .safetensors file name in the index's directory"),
        (b'{"weight_map": {"x": "\xfe.safetensors"}}', "is not UTF-8 text: byte 0xfe"),
    ],
)
def test_malformed_sharded_indexes_are_named(model_dir: Path, tmp_path: Path, index: object, message: str) -> None:
    directory, weight_map = _sharded(model_dir, tmp_path / "m")
    path = directory / "model.safetensors.index.json"
    if isinstance(index, bytes):
        path.write_bytes(index)
    else:
        path.write_text(json.dumps(index if "x" in index["weight_map"] or isinstance(index["weight_map"], list) else {"weight_map": {**weight_map, **index["weight_map"]}}))
    with pytest.raises(WeightError) as caught:
        resolve_model(directory)
    assert message in str(caught.value) and "model.safetensors.index.json" in str(caught.value)


def test_a_weight_stored_in_two_shards_is_refused(model_dir: Path, tmp_path: Path) -> None:
    directory, weight_map = _sharded(model_dir, tmp_path / "m")
    name = min(weight_map)
    save_file({name: torch.zeros(2)}, str(directory / "model-00002-of-00002.safetensors"))
    weight_map[name] = "model-00002-of-00002.safetensors"
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(WeightError, match="is stored twice"):
        resolve_model(directory)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"version": "1.0", "model": ', "tokenizer.json is not valid JSON"),
        (b'{"version": "1.0", "added_tokens": [], "model": {"type": "Nonsense"}}', "tokenizer.json is not a valid tokenizer"),
        (b'{"version": "1.0", "model": {"type": "BPE"}}', "added_tokens must be a list, got null"),
    ],
)
def test_corrupt_tokenizers_are_refused_at_compile_before_any_artifact(
    model_dir: Path, tmp_path: Path, content: bytes, message: str
) -> None:
    directory = _copy(model_dir, tmp_path / "m")
    (directory / "tokenizer.json").write_bytes(content)
    with pytest.raises(ModelSourceError, match=message):
        qc.compile(directory, precision="fp32", ctx_len=24, prefill_len=8)
    code, err = _qeffc_in_process(["compile", str(directory), "-o", str(tmp_path / "out")])
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


# 6: non-finite numbers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("stream", [False, True])
def test_non_finite_checkpoint_weights_are_named_streaming_or_not(model_dir: Path, tmp_path: Path, value: float, stream: bool) -> None:
    directory = _copy(model_dir, tmp_path / "m")
    tensors = load_file(str(directory / "model.safetensors"))
    tensors["transformer.blocks.1.ffn.down_proj.weight"][3, 5] = value
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightError) as caught:  # streamed, the weights are read when the artifact is written
        qc.compile(directory, precision="fp32", ctx_len=24, prefill_len=8, stream=stream, verify=False).save(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert "'transformer.blocks.1.ffn.down_proj.weight' holds 1 non-finite value(s)" in str(caught.value)
    assert f"first: {value} at index [3, 5]" in str(caught.value)


def test_non_finite_weights_of_a_model_object_are_named() -> None:
    model = random_model(tiny_config())
    with torch.no_grad():
        model.transformer.wte.weight[7, 0] = float("nan")
    with pytest.raises(WeightError, match=r"'transformer.wte.weight' holds 1 non-finite value\(s\) \(first: nan at index \[7, 0\]\)"):
        qc.compile(model, precision="fp32", ctx_len=24, prefill_len=8)


@pytest.mark.parametrize("epsilon", [float("nan"), -1e-5, float("inf")])
def test_nan_or_negative_layer_norm_epsilon_is_refused(epsilon: float) -> None:
    with pytest.raises(UnsupportedConfigError, match=f"layer_norm_epsilon must be a finite number >= 0, got {epsilon}"):
        qc.capture(tiny_config(layer_norm_epsilon=epsilon))


def test_finite_weights_that_overflow_fp32_stop_generation_instead_of_token_0_forever() -> None:
    model = random_model(tiny_config())
    with torch.no_grad():
        model.transformer.blocks[0].ffn.up_proj.weight.mul_(1e37)
    compiled = qc.compile(model, precision="fp32", ctx_len=24, prefill_len=8, verify=False)
    with pytest.raises(NonFiniteError, match="the model computed (NaN|infinite) logits"):
        compiled.generate([[1, 2, 3]], 4)


def test_fp16_overflow_reports_nan_as_nan() -> None:
    program = qc.capture(random_model(tiny_config()), seq_len=8)
    poisoned = program.weights.tensor("transformer.blocks.0.ffn.up_proj.weight").clone()
    poisoned[0, 0] = float("nan")
    program = program.evolve(weights=program.weights.with_tensors({"transformer.blocks.0.ffn.up_proj.weight": poisoned}))
    with pytest.raises(Fp16OverflowError, match=r"transformer.blocks.0.ffn.up_proj produces NaN$"):
        PassManager("patch-attention,lower-fp16", verify=False).run(program)


# 7: absurd sizes --------------------------------------------------------------------------------------------------
def test_the_largest_target_matches_the_device_table() -> None:
    assert LARGEST_TARGET_BYTES == MAX_DEVICES * max(spec.ddr_bytes_per_soc for spec in DEVICES.values())
    seven_b = MptConfig(d_model=4096, n_heads=32, n_layers=32, vocab_size=50432, max_seq_len=2048)
    assert 6.5e9 < parameter_count(seven_b) < 6.8e9  # MPT-7B's 6.7 B parameters


@contextlib.contextmanager
def _no_model_is_built() -> Iterator[None]:
    """Fail the test if an MPT model is constructed: an oversized config must be refused from its numbers alone,
    before any layer is built (which would take minutes or all memory)."""
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("an MPT model was built before the oversized config was refused")

    with mock.patch.object(MptForCausalLM, "__init__", refuse):
        yield


@settings(max_examples=200)
@given(field=st.sampled_from(sorted(SIZE_BOUNDS)), excess=st.one_of(st.integers(1, 10), st.integers(10, 10**30)))
def test_sizes_beyond_their_bound_are_refused_at_once(field: str, excess: int) -> None:
    bound, why = SIZE_BOUNDS[field]
    sizes = {"d_model": 64, "n_heads": 4, "n_layers": 2, "vocab_size": 64, "max_seq_len": 32}
    if field == "n_heads":  # d_model must hold the heads and stay within its own bound
        excess = min(excess, SIZE_BOUNDS["d_model"][0] - bound)
        sizes["d_model"] = bound + excess
    sizes[field] = bound + excess
    with _no_model_is_built(), pytest.raises(UnsupportedConfigError) as caught:
        qc.capture(MptConfig(**sizes))
    assert str(caught.value).startswith(f"config.{field}={bound + excess} exceeds the bound {bound}: {why}")


def test_a_model_larger_than_any_target_is_refused_by_parameter_count() -> None:
    config = MptConfig(d_model=2**16, n_heads=64, n_layers=64, vocab_size=64, max_seq_len=32)
    assert parameter_count(config) > MAX_PARAMETERS
    with pytest.raises(UnsupportedConfigError, match=r"parameters, above the bound .*DDR of 64 AI 100 SoCs"):
        qc.capture(config)


def test_a_capture_batch_whose_logits_fit_no_target_is_refused() -> None:
    with pytest.raises(UnsupportedConfigError, match=r"batch_size=1000000000000 x seq_len=8 is too large: .* TiB"):
        qc.capture(tiny_config(), batch_size=10**12, seq_len=8)


def test_qeffc_capture_of_a_billion_layers_fails_before_building_it(model_dir: Path, tmp_path: Path) -> None:
    directory = _with_config(model_dir, tmp_path / "m", n_layers=10**9)
    with _no_model_is_built():
        code, err = _qeffc_in_process(["capture", str(directory)])
    assert code == 2 and err == "qeffc: error: config.n_layers=1000000000 exceeds the bound 1024: each layer is built and traced; 1024 is 8x the deepest published decoder (126)\n"


# 8: sampling and text arguments -----------------------------------------------------------------------------------
ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.integers(), st.floats(), st.text(max_size=3),
    st.sampled_from([1e-300, 5e-324, 1e300, 2**64, 2**64 - 1, -1, 0.5, 1.5, float("nan"), float("inf")]),
)


def _mostly(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Values that are valid three times in four, else anything (of any type, or out of range)."""
    return st.one_of(valid, valid, valid, ODD_VALUES)


def test_sampling_arguments_give_a_qeff_error_or_a_token() -> None:
    refused: list[bool] = []

    @settings(max_examples=500)
    @given(
        do_sample=_mostly(st.just(True)), temperature=_mostly(st.floats(1e-300, 1e3)), top_k=_mostly(st.integers(0, 5)),
        top_p=_mostly(st.floats(0.01, 1.0)), seed=_mostly(st.one_of(st.none(), st.integers(0, 2**64 - 1))),
        logits=st.lists(st.floats(-50, 50), min_size=3, max_size=3),
    )
    def check(do_sample: object, temperature: object, top_k: object, top_p: object, seed: object, logits: list[float]) -> None:
        try:
            config = SamplingConfig(do_sample, temperature, top_k, top_p, seed)  # type: ignore[arg-type]
        except InvalidArgumentError:
            refused.append(True)
            return
        token = TokenSampler(config)(torch.tensor([logits]))
        assert token.shape == (1,) and 0 <= int(token) < 3
        refused.append(False)

    check()
    print(f"sampling arguments: {len(refused)} tried, {sum(refused)} refused with a QeffError")
    assert 0 < sum(refused) < len(refused)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": True}, "top_k must be an integer ≥ 0 (0 = off), got True"),
        ({"seed": 1.5}, "seed must be None or an integer in [0, 2**64 - 1], got 1.5"),
        ({"seed": 2**64}, "seed must be None or an integer in [0, 2**64 - 1], got 18446744073709551616"),
        ({"temperature": "hot"}, "temperature must be > 0, got 'hot'"),
        ({"top_p": "most"}, "top_p must be in (0, 1], got 'most'"),
    ],
)
def test_sampling_arguments_of_the_wrong_type_are_named(tiny_artifact: TinyArtifact, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        tiny_artifact.compiled.generate([[1, 2]], 2, do_sample=True, **kwargs)
    assert str(caught.value) == message


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-30])
def test_a_tiny_temperature_samples_the_greedy_tokens(tiny_artifact: TinyArtifact, temperature: float) -> None:
    greedy = tiny_artifact.compiled.generate([[5, 6, 7]], 6).sequences
    sampled = tiny_artifact.compiled.generate([[5, 6, 7]], 6, do_sample=True, temperature=temperature, seed=1).sequences
    assert torch.equal(greedy, sampled)


def _qeffc_in_process(argv: list[str], stdout: io.TextIOBase | None = None) -> tuple[int, str]:
    """Exit code and stderr of `qeffc argv` run in this process (stdout replaced by `stdout` when given)."""
    saved_out, saved_err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = stdout or io.StringIO(), io.StringIO()
    try:
        code = cli.run(argv)
        return code, sys.stderr.getvalue()
    finally:
        sys.stdout, sys.stderr = saved_out, saved_err


def test_a_prompt_with_undecodable_bytes_is_one_line(tiny_artifact: TinyArtifact) -> None:
    code, err = _qeffc_in_process(["run", str(tiny_artifact.artifact), "--prompt", "def f(\udcff)"])  # argv byte 0xff
    assert code == 2
    assert err == "qeffc: error: --prompt is not valid UTF-8 text: byte 0xff at character 6 of 'def f('…; pass text in UTF-8 (or --token-ids)\n"


def test_an_ascii_only_stdout_gets_escapes_for_other_characters(tiny_artifact: TinyArtifact) -> None:
    raw = io.BytesIO()
    ascii_out = io.TextIOWrapper(raw, encoding="ascii")
    code, err = _qeffc_in_process(["run", str(tiny_artifact.artifact), "--prompt", "café = 'π'", "--max-new-tokens", "3"], ascii_out)
    ascii_out.flush()
    assert (code, err) == (0, "")
    assert raw.getvalue().decode("ascii").startswith("caf\\xe9 = '\\u03c0'")


def test_stdout_on_a_full_device_is_one_line_exit_1(tiny_artifact: TinyArtifact) -> None:
    with open("/dev/full", "w") as full:
        code, err = _qeffc_in_process(["run", str(tiny_artifact.artifact), "--token-ids", "1,2", "--max-new-tokens", "2"], full)
        with pytest.raises(OSError):  # what the guard met: the device refuses every flush
            full.flush()
        os.dup2(os.open(os.devnull, os.O_WRONLY), full.fileno())  # let the file close quietly
    assert code == 1 and err == "qeffc: error: cannot write to standard output: No space left on device\n"


def test_the_console_script_exits_1_on_a_full_device_without_a_second_error(tiny_artifact: TinyArtifact) -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "qeff_compiler.cli.main", "run", str(tiny_artifact.artifact), "--token-ids", "1,2",
             "--max-new-tokens", "2"],
            check=False, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300, env={**os.environ, "PYTHONIOENCODING": "ascii"},
        )
    assert done.returncode == 1 and done.stderr == "qeffc: error: cannot write to standard output: No space left on device\n"


def test_the_console_script_exits_1_on_a_closed_stdout(tiny_artifact: TinyArtifact) -> None:
    argv = [sys.executable, "-m", "qeff_compiler.cli.main", "run", str(tiny_artifact.artifact), "--token-ids", "1", "--max-new-tokens", "2"]
    done = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *argv], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr == "qeffc: error: cannot write to standard output: standard output is closed\n"


def test_a_malicious_pickle_is_refused_as_a_weight_error(model_dir: Path, tmp_path: Path) -> None:
    directory = _copy(model_dir, tmp_path / "m")
    (directory / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"x": _Evil(str(marker))}, directory / "pytorch_model.bin")
    with pytest.raises(WeightError, match=r"refused to load .*pytorch_model.bin: it is not a plain state dict of tensors"):
        qc.compile(directory, precision="fp32", ctx_len=24, prefill_len=8, allow_pickle=True)
    assert not marker.exists()


class _Evil:
    """Unpickling this would create a file (a stand-in for any code a pickle can run)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.path),))


# 4: the onnxruntime engine runs what load_compiled verified ------------------------------------------------------
def test_onnxruntime_engine_runs_the_verified_files(tiny_artifact: TinyArtifact, tmp_path: Path) -> None:
    loaded = qc.load_compiled(_copy(tiny_artifact.artifact, tmp_path / "a"))
    host = loaded.generate([[1, 2, 3]], 4).sequences
    assert torch.equal(loaded.generate([[1, 2, 3]], 4, engine="onnxruntime").sequences, host)


@pytest.mark.parametrize("name", ["program.onnx", "decode.onnx", "weights.safetensors"])
def test_a_file_changed_after_load_is_an_integrity_error(tiny_artifact: TinyArtifact, tmp_path: Path, name: str) -> None:
    directory = _copy(tiny_artifact.artifact, tmp_path / "a")
    loaded = qc.load_compiled(directory)
    data = bytearray((directory / name).read_bytes())
    data[len(data) // 2] ^= 0x10
    (directory / name).write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match=f"artifact file {name} in .* changed after load_compiled verified it"):
        loaded.generate([[1, 2, 3]], 2, engine="onnxruntime")


def test_a_recompiled_artifact_is_an_integrity_error_not_an_onnx_runtime_one(tiny_artifact: TinyArtifact, tmp_path: Path) -> None:
    directory = _copy(tiny_artifact.artifact, tmp_path / "a")
    loaded = qc.load_compiled(directory)
    qc.compile(tiny_artifact.model_dir, precision="fp32", ctx_len=24, prefill_len=4).save(directory, overwrite=True)
    with pytest.raises(ArtifactError, match="changed after load_compiled verified it"):
        loaded.generate([[1, 2, 3]], 2, engine="onnxruntime")
