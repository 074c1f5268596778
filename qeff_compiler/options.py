"""`CompileOptions`: the static choices a compiled model is specialised for, as one checked value.

The compile driver, the artifact (which stores them in its manifest) and `tune` share this one object, so the
artifact never needs the driver to describe what it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from qeff_compiler.errors import InvalidArgumentError

if TYPE_CHECKING:  # the checks load the backend (torch): imported where used, so the CLI reads DEFAULTS at once
    from qeff_compiler.backends.ai100.simulator import Target


@dataclass(frozen=True)
class CompileOptions:
    """The static choices a compiled model is specialised for. Its defaults are every entry point's defaults
    (`qc.compile`, the facade, each `qeffc` command; see `DEFAULTS`): fp16, because the device has no fp32 path."""

    precision: str = "fp16"
    ctx_len: int = 128
    prefill_len: int = 32
    batch_size: int = 1
    kv_cache_dtype: str | None = None
    device: str = "ai100-standard"
    #: AI cores per SoC; None = all the device has
    num_cores: int | None = None
    num_devices: int = 1
    p2p_format: str = "fp16"
    #: shares of each layer's FFN channels and attention heads the `prune` pass removes, and its score
    prune_ffn: float = 0.0
    prune_heads: float = 0.0
    prune_score: str = "magnitude"
    #: continuous batching: decode slots (QEfficient's full_batch_size); prefill then runs one request at a time
    full_batch_size: int | None = None
    #: compute-context-length buckets (ascending, the last = ctx_len) of the prefill and decode calls
    comp_ctx_lengths_prefill: tuple[int, ...] | None = None
    comp_ctx_lengths_decode: tuple[int, ...] | None = None
    #: K of speculative decoding: the decode specialization scores K+1 positions and returns all their logits
    num_speculative_tokens: int | None = None

    def __post_init__(self) -> None:
        """Bucket lists as tuples (a manifest stores them as JSON lists)."""
        for name in ("comp_ctx_lengths_prefill", "comp_ctx_lengths_decode"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    @property
    def decode_len(self) -> int:
        """Positions per row of one decode call: 1, or K+1 for a speculative-decoding target."""
        return 1 if self.num_speculative_tokens is None else self.num_speculative_tokens + 1

    @property
    def needs_calibration(self) -> bool:
        """w8a8 and activation-scored FFN pruning read a calibration table."""
        return self.precision == "w8a8" or (self.prune_score == "activation" and bool(self.prune_ffn))

    @property
    def target(self) -> Target:
        from qeff_compiler.backends.ai100.simulator import Target

        return Target(self.device, self.num_cores, self.num_devices, self.p2p_format)

    def check(self) -> None:
        """Refuse a bad value before any tracing, naming the option (an `InvalidArgumentError` subclass)."""
        from qeff_compiler.backends.ai100.partition import check_p2p_format
        from qeff_compiler.precision import check_precision, check_pruning
        from qeff_compiler.runtime.buckets import check_buckets, check_serving

        check_precision(self.precision, self.kv_cache_dtype)
        check_pruning(self.prune_ffn, self.prune_heads, self.prune_score, self.precision)
        self.target.cores()  # device, num_cores and num_devices
        check_p2p_format(self.p2p_format)  # before tracing; the partitioner would find it only after
        for name in ("ctx_len", "prefill_len", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
        if self.ctx_len < self.prefill_len:
            raise InvalidArgumentError(f"ctx_len={self.ctx_len} is smaller than prefill_len={self.prefill_len}")
        k = self.num_speculative_tokens
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < self.ctx_len - 1):
            raise InvalidArgumentError(
                f"num_speculative_tokens must be an integer in 1..{self.ctx_len - 2} (the K+1 verified positions "
                f"and one token of prompt must fit in ctx_len={self.ctx_len}), got {k!r}"
            )
        check_serving(self.batch_size, self.full_batch_size)
        for name in ("comp_ctx_lengths_prefill", "comp_ctx_lengths_decode"):
            check_buckets(name, getattr(self, name), self.ctx_len)


#: the one set of defaults `qc.compile`, the facade and every `qeffc` command share
DEFAULTS = CompileOptions()


def check_config_only(precision: str) -> None:
    """Refuse what a compile from a config alone (no weights, no text) cannot do: w8a8 needs calibration data."""
    if precision == "w8a8":
        raise InvalidArgumentError("estimate runs on the config alone; w8a8 needs calibration: compile, then estimate")
