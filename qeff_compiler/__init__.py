"""qeff-compiler: compile MosaicML MPT models for a Qualcomm Cloud AI 100-class accelerator.

Public API (see README): `capture`, `PassManager`, `compile`, `load_compiled`, `CompiledModel`, `evaluate`,
`calibrate` (for w8a8), `Program`, `QEFFAutoModelForCausalLM` (QEfficient's API), `tune`, and
`QeffError`, the root of every error (subclasses in `qeff_compiler.errors`).
"""

from qeff_compiler.calibration import calibrate
from qeff_compiler.capture import capture
from qeff_compiler.compiler import CompiledModel, compile, load_compiled  # noqa: A004 (the public API's name)
from qeff_compiler.errors import QeffError
from qeff_compiler.evaluate import EvaluationReport, evaluate
from qeff_compiler.facade import QEFFAutoModelForCausalLM
from qeff_compiler.ir import Program
from qeff_compiler.passes import PassManager
from qeff_compiler.tune import TuneResult, tune

__version__ = "0.1.0"

__all__ = [
    "CompiledModel",
    "EvaluationReport",
    "PassManager",
    "Program",
    "QEFFAutoModelForCausalLM",
    "QeffError",
    "TuneResult",
    "__version__",
    "calibrate",
    "capture",
    "compile",
    "evaluate",
    "load_compiled",
    "tune",
]
