"""Upper bounds on an MPT config's sizes, checked before anything is built from it.

A config is only numbers, and capture builds one HF module per layer (on the meta device) and traces them all, so
`n_layers: 1000000000` would grow the process for minutes instead of failing. Each size has a bound far above any
published MPT or other dense decoder, and the whole model must fit the largest target there is: 64 SoCs (the SoC count a
compile accepts) of 32 GB DDR (AI 100 Pro and Ultra SoCs) holding MXFP6 weights, 6.25 bits per parameter.
"""

from __future__ import annotations

from transformers import MptConfig

from qeff_compiler.errors import UnsupportedConfigError

#: field → (largest value accepted, why)
SIZE_BOUNDS: dict[str, tuple[int, str]] = {
    "n_layers": (1024, "each layer is built and traced; 1024 is 8x the deepest published decoder (126)"),
    "d_model": (2**17, "one d_model x d_model matrix would be 64 GiB at fp32; the widest published decoder has 18432"),
    "n_heads": (
        2**12,
        "each head has its own ALiBi slope and score matrix; published decoders use at most a few hundred",
    ),
    "vocab_size": (2**24, "token ids from 2^24 on are not exact in the fp32 the logits are computed in"),
    "max_seq_len": (2**20, "KV caches and ALiBi biases are sized up to it; the longest MPT (StoryWriter) has 65536"),
}
#: bytes of DDR of the largest target: MAX_DEVICES SoCs of 32 GB (tests check this against the device table)
LARGEST_TARGET_BYTES = 64 * 32 * 2**30
#: the densest weight format (MXFP6: 6 bits per element and an 8-bit scale per 32 elements)
DENSEST_BITS_PER_PARAMETER = 6.25
MAX_PARAMETERS = int(LARGEST_TARGET_BYTES * 8 / DENSEST_BITS_PER_PARAMETER)


def check_sizes(config: MptConfig) -> None:
    """Refuse a size above its bound, or a model whose weights alone exceed the largest target, by name."""
    for name, (bound, why) in SIZE_BOUNDS.items():
        value = getattr(config, name)
        if value > bound:
            raise UnsupportedConfigError(f"config.{name}={value} exceeds the bound {bound}: {why}")
    parameters = parameter_count(config)
    if parameters > MAX_PARAMETERS:
        raise UnsupportedConfigError(
            f"config (n_layers={config.n_layers}, d_model={config.d_model}, vocab_size={config.vocab_size}) has "
            f"{parameters:.3g} parameters, above the bound {MAX_PARAMETERS:.3g}: its MXFP6 weights alone would exceed "
            f"the {LARGEST_TARGET_BYTES / 2**40:g} TiB of DDR of 64 AI 100 SoCs"
        )


def parameter_count(config: MptConfig) -> int:
    """Parameters of an HF MPT: per layer QKV (3d²), out projection (d²), FFN (8d²) and two norms; embeddings;
    an untied lm_head."""
    d = config.d_model
    embeddings = config.vocab_size * d * (1 if config.tie_word_embeddings else 2)
    return config.n_layers * (12 * d * d + 2 * d) + embeddings + d


def check_call_size(config: MptConfig, batch_size: int, seq_len: int) -> None:
    """Refuse a capture shape whose logits alone (fp32, batch_size x seq_len x vocab_size) exceed the largest
    target's memory: running the program even once (as the pass manager's checks do) could never fit."""
    logits_bytes = batch_size * seq_len * config.vocab_size * 4
    if logits_bytes > LARGEST_TARGET_BYTES:
        raise UnsupportedConfigError(
            f"batch_size={batch_size} x seq_len={seq_len} is too large: the logits of one call alone would take "
            f"{logits_bytes / 2**40:.3g} TiB, more than the {LARGEST_TARGET_BYTES / 2**40:g} TiB of DDR of "
            "64 AI 100 SoCs"
        )
