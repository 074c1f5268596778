"""`qeffc --help` and a mistyped option answer without loading torch or transformers (each command imports what
it needs when it runs), and the lazy package API resolves to the same objects as the modules that define them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: modules that take seconds to import; none may load before a command runs
HEAVY = ("torch", "transformers", "onnx", "onnxruntime", "matplotlib", "numpy")

_PROBE = """
import contextlib, io, json, sys
from qeff_compiler.cli.main import run
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
    code = run(json.loads(sys.argv[1]))
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
print(json.dumps({"code": code, "loaded": loaded, "stderr": err.getvalue()}))
"""


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--help"], 0),
        (["compile", "--help"], 0),
        (["compile", "-o", "x", "--bogus"], 2),
        (["estimate", "--ctx-len", "many"], 2),
        (["nonsense"], 2),
    ],
)
def test_help_and_usage_errors_do_not_import_heavy_modules(args: list[str], code: int) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(args), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(probe.stdout)
    assert result["code"] == code, result
    assert result["loaded"] == [], f"qeffc {' '.join(args)} imported {result['loaded']}"


def test_importing_the_package_does_not_import_torch() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, qeff_compiler; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.split() == ["False"]


@pytest.mark.parametrize("name", ["capture", "tune", "evaluate", "compile", "QEFFAutoModelForCausalLM"])
def test_public_names_stay_functions_when_their_submodules_are_imported(name: str) -> None:
    """`capture`, `evaluate` and `tune` are also submodules: importing one must not replace the function."""
    import importlib

    import qeff_compiler as qc

    for module in ("qeff_compiler.capture.presets", "qeff_compiler.tune", "qeff_compiler.evaluate"):
        importlib.import_module(module)
    defining = importlib.import_module(qc._PUBLIC[name])
    assert getattr(qc, name) is getattr(defining, name)
    assert callable(getattr(qc, name))
    assert name in dir(qc)


def test_unknown_package_attribute_is_an_attribute_error() -> None:
    import qeff_compiler

    with pytest.raises(AttributeError, match="no_such_name"):
        _ = qeff_compiler.no_such_name  # type: ignore[attr-defined]


def test_tune_max_tokens_default_is_the_librarys() -> None:
    from qeff_compiler.cli.accuracy import TUNE_MAX_TOKENS
    from qeff_compiler.tune import DEFAULT_MAX_TOKENS

    assert TUNE_MAX_TOKENS == DEFAULT_MAX_TOKENS
