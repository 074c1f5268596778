"""The numeric check of a streamed compile: the same pipeline on reduced programs with the checkpoint's weights.

A streamed compile cannot run its program after every pass (each run would read the whole checkpoint). It is
checked instead on reduced models built from its real weights: one transformer layer at a time (the first and
the last), with the first `VOCAB_ROWS` rows of the embedding (and the tied lm_head). Every weight such a model
reads is the checkpoint's, unchanged; lowering works per weight (per output channel, or per block along the
reduction axis), so a reduced model's lowered weights are exactly rows of the full model's. Each reduced model
runs the compile's pipeline in memory with the pass manager's numeric check after every pass, on the prefill
shape: a pass that is wrong on the real weights (a lowering bug, a weight that overflows fp16) fails the
compile with the pass named. Memory: one layer's weights in fp32 and their lowered copy (~1.2 GB at MPT-7B
width), freed before the next.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

from qeff_compiler.capture import ResolvedModel, capture_resolved
from qeff_compiler.capture.sources import meta_weights
from qeff_compiler.passes import PassManager
from qeff_compiler.passes.base import Pass

#: vocabulary rows a reduced model keeps (of the embedding and the tied lm_head)
VOCAB_ROWS = 512
_EMBEDDINGS = ("transformer.wte.weight", "lm_head.weight")


@dataclass(frozen=True)
class ReducedCheck:
    """One reduced model's check: which layer of the full model it ran, and the pass manager's table."""

    layer: int
    num_layers: int
    vocab_rows: int
    report: str

    def describe(self) -> str:
        return (
            f"// numeric check on a reduced program: layer {self.layer} of {self.num_layers} "
            f"with the first {self.vocab_rows} vocabulary rows, real weights, prefill shape"
        )


def reduced_model(resolved: ResolvedModel, layer: int, vocab_rows: int = VOCAB_ROWS) -> ResolvedModel:
    """`resolved` cut to its transformer layer `layer` (as the reduced model's layer 0) and its first
    `vocab_rows` vocabulary rows, reading those weights (only) from `resolved`'s store."""
    config = copy.deepcopy(resolved.config)
    config.n_layers = 1
    config.vocab_size = min(vocab_rows, resolved.config.vocab_size)
    sources: dict[str, tuple[str, int | None]] = {}
    for name in meta_weights(config):
        source = name.replace("transformer.blocks.0.", f"transformer.blocks.{layer}.", 1)
        sources[name] = (source, config.vocab_size if name in _EMBEDDINGS else None)
    weights = resolved.weights.select(sources).materialized()
    return ResolvedModel(config, weights, f"{resolved.origin} (layer {layer})", resolved.directory)


def check_streamed(
    resolved: ResolvedModel,
    pipeline: Callable[[], list[Pass]],
    layers: tuple[int, ...],
    batch_size: int,
    seq_len: int,
) -> list[ReducedCheck]:
    """Run `pipeline()` with the numeric check on the reduced model of each of `layers`; raises the pass
    manager's `VerificationError` naming the pass that changed the outputs beyond its tolerance."""
    checks = []
    for layer in layers:
        reduced = reduced_model(resolved, layer)
        manager = PassManager(pipeline(), verify=True)
        manager.run(capture_resolved(reduced, batch_size=batch_size, seq_len=min(seq_len, reduced.config.max_seq_len)))
        checks.append(ReducedCheck(layer, resolved.config.n_layers, reduced.config.vocab_size, manager.timing_report()))
    return checks
