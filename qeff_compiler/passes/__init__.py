"""Graph passes and the manager that runs them. Importing this package registers every pass."""

from qeff_compiler.passes import (  # noqa: F401 (registration)
    compute_context_length,
    continuous_batching,
    dce,
    fp16_overflow,
    kv_cache,
    lower_fp16,
    lower_int8,
    lower_mxfp6,
    lower_w8a8,
    patch_attention,
    prune,
    strip_export_noise,
)
from qeff_compiler.passes.base import Pass, option
from qeff_compiler.passes.manager import PassManager, PassRecord
from qeff_compiler.passes.pipeline import build_passes, parse_pipeline
from qeff_compiler.passes.registry import get_pass, register_pass, registered_passes

__all__ = [
    "Pass",
    "PassManager",
    "PassRecord",
    "build_passes",
    "get_pass",
    "option",
    "parse_pipeline",
    "register_pass",
    "registered_passes",
]
