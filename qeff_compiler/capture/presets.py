"""Named MPT configurations for config-only (meta) work: `qeffc capture mpt-7b`, cost estimates, benchmarks.

Shapes follow the published MosaicML checkpoints' config.json files (mosaicml/mpt-7b, mpt-30b); `mpt-125m` is the
small shape of the MPT family used by benchmarks as a mid-size random model.
"""

from __future__ import annotations

from transformers import MptConfig

from qeff_compiler.errors import ModelSourceError

_PRESETS: dict[str, dict] = {
    "mpt-125m": {"d_model": 768, "n_heads": 12, "n_layers": 12, "vocab_size": 50368, "max_seq_len": 2048},
    "mpt-7b": {"d_model": 4096, "n_heads": 32, "n_layers": 32, "vocab_size": 50432, "max_seq_len": 2048},
    "mpt-30b": {"d_model": 7168, "n_heads": 64, "n_layers": 48, "vocab_size": 50432, "max_seq_len": 8192},
}


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def preset_config(name: str) -> MptConfig:
    """The MptConfig of a named preset; a `ModelSourceError` listing the presets for an unknown name."""
    try:
        fields = _PRESETS[name]
    except KeyError:
        raise ModelSourceError(f"unknown model preset {name!r} (presets: {', '.join(preset_names())})") from None
    return MptConfig(**fields, attn_config={"alibi": True, "alibi_bias_max": 8})
