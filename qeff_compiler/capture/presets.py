"""Named MPT configurations for config-only (meta) work: `qeffc capture mpt-7b`, `qc.compile("mpt-7b")`, cost
estimates, benchmarks; and `named_model`, the one resolver of a model name for the Python API and the CLI.

Shapes follow the published MosaicML checkpoints' config.json files (mosaicml/mpt-7b, mpt-30b); `mpt-125m` is the
small shape of the MPT family used by benchmarks as a mid-size random model. The `*-shape` presets are MPTs of the
sizes of the models Qualcomm published AI 100 decode rates for (docs/backend.md), the cost model's calibration and
validation points: GPT-J-6B (d_model 4096, 16 heads, 28 layers, vocab 50400), OPT-2.7B (2560, 32, 32, 50272) and
OPT-13B (5120, 40, 40, 50272), all at max_seq_len 2048.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from qeff_compiler.data import TINY_MPT
from qeff_compiler.errors import ModelSourceError

#: the name of the small trained MPT shipped with the package (`qeff_compiler.data.TINY_MPT`)
SHIPPED_MODEL = "tiny-mpt-pystdlib"

if TYPE_CHECKING:
    from transformers import MptConfig

_PRESETS: dict[str, dict] = {
    "mpt-125m": {"d_model": 768, "n_heads": 12, "n_layers": 12, "vocab_size": 50368, "max_seq_len": 2048},
    "mpt-7b": {"d_model": 4096, "n_heads": 32, "n_layers": 32, "vocab_size": 50432, "max_seq_len": 2048},
    "mpt-30b": {"d_model": 7168, "n_heads": 64, "n_layers": 48, "vocab_size": 50432, "max_seq_len": 8192},
    "gpt-j-6b-shape": {"d_model": 4096, "n_heads": 16, "n_layers": 28, "vocab_size": 50400, "max_seq_len": 2048},
    "opt-2.7b-shape": {"d_model": 2560, "n_heads": 32, "n_layers": 32, "vocab_size": 50272, "max_seq_len": 2048},
    "opt-13b-shape": {"d_model": 5120, "n_heads": 40, "n_layers": 40, "vocab_size": 50272, "max_seq_len": 2048},
}


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def preset_config(name: str) -> MptConfig:
    """The MptConfig of a named preset; a `ModelSourceError` listing the presets for an unknown name."""
    try:
        fields = _PRESETS[name]
    except KeyError:
        raise ModelSourceError(f"unknown model preset {name!r} (presets: {', '.join(preset_names())})") from None
    from transformers import MptConfig

    return MptConfig(**fields, attn_config={"alibi": True, "alibi_bias_max": 8})


def named_model(name: str) -> Path | MptConfig:
    """What a model name means, the same for `qc.compile`, `qc.capture` and every `qeffc` command: an existing
    path is a model directory, `SHIPPED_MODEL` the shipped model, any other bare name a preset (config only, meta
    weights); a path that does not exist is a `ModelSourceError`."""
    if Path(name).exists():
        return Path(name)
    if name == SHIPPED_MODEL:
        return TINY_MPT
    if "/" in name or name.startswith("."):
        raise ModelSourceError(f"model directory {name!r} does not exist")
    return preset_config(name)
