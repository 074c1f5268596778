"""Check that an MPT config is one HF's `MptForCausalLM` really implements, before anything is traced.

HF's MPT port hard-codes bias-free linears, a 4×d_model FFN, LayerNorm without bias and plain multi-head ALiBi
attention, and silently ignores config fields that ask for anything else. Compiling such a config would produce
a program that disagrees with the checkpoint's training code, so each such field is rejected by name here.
"""

from __future__ import annotations

import math
from typing import Any, cast

from transformers import MptConfig
from transformers.models.mpt.configuration_mpt import MptAttentionConfig

from qeff_compiler.capture.bounds import check_sizes
from qeff_compiler.errors import NotAnMptModelError, UnsupportedConfigError

#: (field, value HF implements) for top-level fields HF ignores; any other value is refused
_FIXED_TOP_LEVEL: tuple[tuple[str, Any], ...] = (
    ("no_bias", True),
    ("expansion_ratio", 4),
    ("logit_scale", None),
)
#: the same for `attn_config` fields
_FIXED_ATTENTION: tuple[tuple[str, Any], ...] = (
    ("attn_type", "multihead_attention"),
    ("qk_ln", False),
    ("prefix_lm", False),
    ("alibi", True),
    ("attn_uses_sequence_id", False),
    # HF's MptModel builds its ALiBi table with the default maximum (it never passes alibi_bias_max on)
    ("alibi_bias_max", 8),
)
#: norm types that all mean "LayerNorm without bias" in HF's port
_LAYER_NORM_TYPES = ("low_precision_layernorm", "layernorm")
#: attention kernels of the original MPT code; all compute the same math, which HF implements in torch
_ATTENTION_IMPLS = ("torch", "flash", "triton")


def validate_mpt_config(config: object) -> MptConfig:
    """Return `config` if HF's MPT implements it exactly; raise a specific `QeffError` naming the field if not."""
    if not isinstance(config, MptConfig):
        model_type = getattr(config, "model_type", type(config).__name__)
        raise NotAnMptModelError(f"expected an MPT config (model_type 'mpt'), got {model_type!r}")
    for name in ("d_model", "n_heads", "n_layers", "vocab_size", "max_seq_len"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UnsupportedConfigError(f"config.{name} must be a positive integer, got {value!r}")
    check_sizes(config)
    if config.d_model % config.n_heads:
        raise UnsupportedConfigError(
            f"config.d_model ({config.d_model}) must be divisible by config.n_heads ({config.n_heads})"
        )
    _check_numbers(config)
    for name, implemented in _FIXED_TOP_LEVEL:
        _require_field(f"config.{name}", getattr(config, name), implemented)
    if config.norm_type not in _LAYER_NORM_TYPES:
        raise UnsupportedConfigError(
            f"config.norm_type={config.norm_type!r} is not implemented by HF MPT (allowed: {_LAYER_NORM_TYPES})"
        )
    # MptConfig.__init__ replaces a dict or None attn_config by an MptAttentionConfig
    attn = cast(MptAttentionConfig, config.attn_config)
    for name, implemented in _FIXED_ATTENTION:
        _require_field(f"config.attn_config.{name}", getattr(attn, name), implemented)
    if attn.attn_impl not in _ATTENTION_IMPLS:
        raise UnsupportedConfigError(
            f"config.attn_config.attn_impl={attn.attn_impl!r} is unknown (allowed: {_ATTENTION_IMPLS})"
        )
    for name in ("clip_qkv", "softmax_scale"):
        value = getattr(attn, name)
        if value is not None and not (_is_real(value) and 0 < value < math.inf):
            raise UnsupportedConfigError(
                f"config.attn_config.{name} must be None or a finite number > 0, got {value!r}"
            )
    return config


def _check_numbers(config: MptConfig) -> None:
    """A NaN or negative epsilon makes every LayerNorm output NaN (the model then generates token 0 forever), and
    HF's dropout modules refuse probabilities outside [0, 1] while they are built."""
    epsilon, attn = config.layer_norm_epsilon, config.attn_config
    if not (_is_real(epsilon) and 0 <= epsilon < math.inf):
        raise UnsupportedConfigError(f"config.layer_norm_epsilon must be a finite number >= 0, got {epsilon!r}")
    for name, value in (
        ("resid_pdrop", config.resid_pdrop),
        ("emb_pdrop", config.emb_pdrop),
        ("attn_config.attn_pdrop", getattr(attn, "attn_pdrop", 0)),
    ):
        if not (_is_real(value) and 0 <= value <= 1):
            raise UnsupportedConfigError(f"config.{name} is a dropout probability: it must be in [0, 1], got {value!r}")


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require_field(name: str, value: Any, implemented: Any) -> None:
    if value != implemented:
        raise UnsupportedConfigError(
            f"{name}={value!r} is not supported: HF's MptForCausalLM ignores it and always computes "
            f"{name}={implemented!r}, so the compiled model would not match the checkpoint"
        )
