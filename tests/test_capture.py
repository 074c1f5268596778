"""Capture: the traced Program computes exactly what HF's MptForCausalLM computes, from every kind of source."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import qeff_compiler as qc
from qeff_compiler.errors import (
    InvalidArgumentError,
    MetaWeightError,
    ModelSourceError,
    NotAnMptModelError,
    UnsupportedConfigError,
    WeightError,
)
from qeff_compiler.ir.interpret import run_program
from tests.conftest import random_model, tiny_config
from tests.strategies import mpt_configs


def hf_logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits


@settings(max_examples=25)
@given(config=mpt_configs(), data=st.data())
def test_captured_program_matches_hf_logits(config, data) -> None:
    model = random_model(config, seed=data.draw(st.integers(0, 2**16)))
    batch = data.draw(st.integers(1, 3))
    seq_len = data.draw(st.integers(1, config.max_seq_len))
    program = qc.capture(model, batch_size=batch, seq_len=seq_len)
    input_ids = torch.randint(0, config.vocab_size, (batch, seq_len))
    logits = run_program(program, {"input_ids": input_ids})["logits"]
    torch.testing.assert_close(logits, hf_logits(model, input_ids), rtol=0, atol=1e-5)


def test_capture_from_directory_matches_hf_from_pretrained(tmp_path: Path) -> None:
    model = random_model(tiny_config(tie_word_embeddings=False, attn_config={"clip_qkv": 0.5}))
    model.to(torch.bfloat16).save_pretrained(tmp_path)  # real MPT checkpoints are stored in bf16
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    program = qc.capture(tmp_path, seq_len=12)
    input_ids = torch.randint(0, 64, (1, 12))
    logits = run_program(program, {"input_ids": input_ids})["logits"]
    torch.testing.assert_close(logits, hf_logits(reference, input_ids), rtol=0, atol=1e-5)


def test_tied_checkpoint_stores_embedding_once_and_binds_both_names(tmp_path: Path) -> None:
    random_model(tiny_config(tie_word_embeddings=True)).save_pretrained(tmp_path)
    program = qc.capture(tmp_path)
    assert ["transformer.wte.weight", "lm_head.weight"] in program.weights.tied_groups()
    assert program.num_parameters() == sum(p.numel() for p in random_model(tiny_config()).parameters())


def test_config_only_capture_has_meta_weights_and_refuses_numerics() -> None:
    program = qc.capture(tiny_config())
    assert not program.has_weight_data
    assert program.outputs[0].shape == (1, 8, 64)
    with pytest.raises(MetaWeightError, match="transformer.wte.weight|lm_head.weight|captured from a config"):
        run_program(program, {"input_ids": torch.zeros(1, 8, dtype=torch.int64)})


@pytest.mark.e2e
def test_mpt_7b_config_capture_allocates_no_weights() -> None:
    """A 6.6B-parameter capture must stay far below the 26 GB its fp32 weights would need."""
    script = (
        "import resource, qeff_compiler as qc\n"
        "from transformers import MptConfig\n"
        "config = MptConfig(d_model=4096, n_heads=32, n_layers=32, vocab_size=50432, max_seq_len=2048)\n"
        "program = qc.capture(config)\n"
        "print(program.num_parameters(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    parameters, max_rss_kib = map(int, result.stdout.split())
    assert parameters == 6_649_286_656
    assert max_rss_kib < 2 * 1024 * 1024, f"peak RSS {max_rss_kib / 1024:.0f} MiB"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"no_bias": False}, "no_bias"),
        ({"expansion_ratio": 2}, "expansion_ratio"),
        ({"logit_scale": 0.5}, "logit_scale"),
        ({"norm_type": "rmsnorm"}, "norm_type"),
        ({"attn_config": {"qk_ln": True}}, "qk_ln"),
        ({"attn_config": {"prefix_lm": True}}, "prefix_lm"),
        ({"attn_config": {"alibi": False}}, "alibi"),
        ({"attn_config": {"attn_type": "multiquery_attention"}}, "attn_type"),
        ({"attn_config": {"attn_uses_sequence_id": True}}, "attn_uses_sequence_id"),
        ({"attn_config": {"clip_qkv": -1.0}}, "clip_qkv"),
        ({"attn_config": {"alibi_bias_max": 4}}, "alibi_bias_max"),
        ({"d_model": 30}, "divisible"),
    ],
)
def test_configs_hf_would_silently_ignore_are_rejected_by_name(overrides: dict, field: str) -> None:
    with pytest.raises(UnsupportedConfigError, match=field):
        qc.capture(tiny_config(**overrides))


def test_non_mpt_inputs_are_rejected_with_their_type(tmp_path: Path) -> None:
    from transformers import GPT2Config

    with pytest.raises(NotAnMptModelError, match="gpt2"):
        qc.capture(GPT2Config())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(NotAnMptModelError, match="llama"):
        qc.capture(tmp_path)
    with pytest.raises(ModelSourceError, match="int"):
        qc.capture(42)
    with pytest.raises(ModelSourceError, match="does not exist"):
        qc.capture(tmp_path / "missing")


def test_broken_directories_get_specific_errors(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelSourceError, match="not valid JSON"):
        qc.capture(tmp_path)
    tiny_config().save_pretrained(tmp_path)
    with pytest.raises(WeightError, match="no model.safetensors"):
        qc.capture(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(WeightError, match="pickle"):
        qc.capture(tmp_path)


def test_checkpoint_weights_are_checked_against_the_config(tmp_path: Path) -> None:
    model = random_model(tiny_config(tie_word_embeddings=False))
    model.save_pretrained(tmp_path)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}

    wrong_shape = dict(tensors, **{"transformer.blocks.0.attn.out_proj.weight": torch.zeros(32, 16)})
    save_file(wrong_shape, tmp_path / "model.safetensors")
    with pytest.raises(WeightError, match=r"out_proj.weight.*\[32, 16\].*\[32, 32\]"):
        qc.capture(tmp_path)

    missing = {k: v for k, v in tensors.items() if k != "transformer.norm_f.weight"}
    save_file(missing, tmp_path / "model.safetensors")
    with pytest.raises(WeightError, match="missing weight 'transformer.norm_f.weight'"):
        qc.capture(tmp_path)

    save_file(dict(tensors, **{"transformer.wpe.weight": torch.zeros(32, 32)}), tmp_path / "model.safetensors")
    with pytest.raises(WeightError, match="transformer.wpe.weight"):
        qc.capture(tmp_path)

    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(WeightError, match="cannot read safetensors"):
        qc.capture(tmp_path)


@pytest.mark.parametrize(("kwargs", "message"), [({"seq_len": 33}, "max_seq_len=32"), ({"batch_size": 0}, "batch_size")])
def test_capture_shape_out_of_range(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        qc.capture(tiny_config(), **kwargs)
