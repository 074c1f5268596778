"""Hypothesis strategies for random small MPT configurations HF implements."""

from __future__ import annotations

from hypothesis import strategies as st
from transformers import MptConfig


@st.composite
def mpt_configs(draw: st.DrawFn) -> MptConfig:
    """Small MPT configs across the options HF honours: odd head counts, clip_qkv, softmax_scale, tied/untied
    embeddings. (alibi_bias_max is fixed at 8: HF ignores the field, so capture rejects other values.)"""
    n_heads = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 8]))
    head_dim = draw(st.sampled_from([2, 4, 8]))
    attn_config = {
        "clip_qkv": draw(st.one_of(st.none(), st.floats(0.05, 4.0))),
        "softmax_scale": draw(st.one_of(st.none(), st.floats(0.05, 2.0))),
    }
    return MptConfig(
        d_model=n_heads * head_dim,
        n_heads=n_heads,
        n_layers=draw(st.integers(1, 3)),
        vocab_size=draw(st.integers(8, 200)),
        max_seq_len=draw(st.integers(8, 48)),
        tie_word_embeddings=draw(st.booleans()),
        attn_config=attn_config,
    )
