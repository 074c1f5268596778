"""qeff-compiler: compile MosaicML MPT models for a Qualcomm Cloud AI 100-class accelerator.

Public API (see README): `capture`, `PassManager`, `compile`, `load_compiled`, `CompiledModel`, `evaluate`,
`calibrate` (for w8a8), `Program`, `QEFFAutoModelForCausalLM` (QEfficient's API), `tune`, and
`QeffError`, the root of every error (subclasses in `qeff_compiler.errors`).

The names are loaded on first use (PEP 562): most of them import torch and transformers (~5 s), which `qeffc --help`
and a mistyped option must not pay for.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from qeff_compiler._version import __version__

if TYPE_CHECKING:
    from qeff_compiler.calibration import calibrate
    from qeff_compiler.capture import capture
    from qeff_compiler.compiler import CompiledModel, compile, load_compiled  # noqa: A004 (the public API's name)
    from qeff_compiler.errors import QeffError
    from qeff_compiler.evaluate import EvaluationReport, evaluate
    from qeff_compiler.facade import QEFFAutoModelForCausalLM
    from qeff_compiler.ir import Program
    from qeff_compiler.passes import PassManager
    from qeff_compiler.tune import TuneResult, tune

#: each public name and the module that defines it
_PUBLIC = {
    "CompiledModel": "qeff_compiler.compiler",
    "EvaluationReport": "qeff_compiler.evaluate",
    "PassManager": "qeff_compiler.passes",
    "Program": "qeff_compiler.ir",
    "QEFFAutoModelForCausalLM": "qeff_compiler.facade",
    "QeffError": "qeff_compiler.errors",
    "TuneResult": "qeff_compiler.tune",
    "calibrate": "qeff_compiler.calibration",
    "capture": "qeff_compiler.capture",
    "compile": "qeff_compiler.compiler",
    "evaluate": "qeff_compiler.evaluate",
    "load_compiled": "qeff_compiler.compiler",
    "tune": "qeff_compiler.tune",
}

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


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access and cache the name in this module."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'qeff_compiler' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


class _Package(types.ModuleType):
    """This package's module object. `capture`, `evaluate` and `tune` are each a function and the submodule that
    defines it; importing the submodule binds its name here, and this keeps the function under that name."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _PUBLIC and isinstance(value, types.ModuleType) and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
