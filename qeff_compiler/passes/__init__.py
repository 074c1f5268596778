"""Graph passes and the manager that runs them. Importing this package registers every pass."""

from qeff_compiler.passes import dce, kv_cache, lower_fp16, patch_attention, strip_export_noise  # noqa: F401 (registration)
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
