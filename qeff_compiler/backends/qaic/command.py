"""The `qaic-compile` command of a hand-off directory, as QEfficient builds it, and running it when the SDK exists.

Flag order is QEfficient's: `-aic-hw -aic-hw-version=ai100 -m=<onnx> -retained-state -convert-to-fp16
[-mxfp6-matmul] -aic-num-cores=N [-mdp-load-partition-config=<mdp>] -network-specialization-config=<json>
-custom-IO-list-file=<yaml> -aic-binary-dir=<qpc>`. The device has no fp32 path, so `-convert-to-fp16` is
always there (QEfficient does the same for an fp32 model); MXINT8 KV adds no flag, only custom_io.yaml entries.
Paths are relative to the hand-off directory, which `compile.sh` enters first, so the directory can be moved
to the machine with the card. The SDK is found at `$QAIC_SDK` (default /opt/qti-aic, the SDK's install path).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from qeff_compiler.errors import HandoffError

#: environment variable naming the Cloud AI 100 SDK's root; its compiler is `<root>/exec/qaic-compile`
SDK_VARIABLE = "QAIC_SDK"
DEFAULT_SDK = "/opt/qti-aic"
COMPILER = "exec/qaic-compile"
#: the device's hardware version flag value (every AI 100 card: Standard, Pro, Ultra)
HW_VERSION = "ai100"


@dataclass(frozen=True)
class CompileFlags:
    """What the compile command says beyond its fixed parts."""

    onnx: str
    num_cores: int
    mxfp6_matmul: bool
    specializations: str
    custom_io: str
    mdp: str | None = None
    binary_dir: str = "qpc"


def compile_arguments(flags: CompileFlags) -> list[str]:
    """The compiler's arguments (without the compiler path), in QEfficient's order."""
    arguments = ["-aic-hw", f"-aic-hw-version={HW_VERSION}", f"-m={flags.onnx}", "-retained-state", "-convert-to-fp16"]
    arguments += ["-mxfp6-matmul"] if flags.mxfp6_matmul else []
    arguments.append(f"-aic-num-cores={flags.num_cores}")
    arguments += [f"-mdp-load-partition-config={flags.mdp}"] if flags.mdp else []
    arguments += [f"-network-specialization-config={flags.specializations}", f"-custom-IO-list-file={flags.custom_io}"]
    return [*arguments, f"-aic-binary-dir={flags.binary_dir}"]


def compile_script(flags: CompileFlags) -> str:
    """compile.sh: enter the script's directory and run the SDK's compiler (extra arguments are passed on)."""
    command = " ".join(shlex.quote(a) for a in compile_arguments(flags))
    return (
        "#!/bin/sh\n"
        "# Builds the Cloud AI 100 binary (qpc/) of this hand-off with Qualcomm's compiler.\n"
        f"# The SDK is found at ${SDK_VARIABLE} (default {DEFAULT_SDK}).\n"
        "set -e\n"
        'cd "$(dirname "$0")"\n'
        f'exec "${{{SDK_VARIABLE}:-{DEFAULT_SDK}}}/{COMPILER}" {command} "$@"\n'
    )


def sdk_compiler() -> Path | None:
    """The SDK's qaic-compile on this machine, or None when it is not installed."""
    path = Path(os.environ.get(SDK_VARIABLE, DEFAULT_SDK)) / COMPILER
    return path if path.is_file() and os.access(path, os.X_OK) else None


def run_compile(directory: Path) -> Path:
    """Run `directory`/compile.sh with the SDK's compiler; returns the binary directory. Raises `HandoffError`
    when the compiler is missing or fails (its last output lines in the message)."""
    if sdk_compiler() is None:
        raise HandoffError(f"qaic-compile not found under ${SDK_VARIABLE}={os.environ.get(SDK_VARIABLE, DEFAULT_SDK)}")
    result = subprocess.run(["sh", str(directory / "compile.sh")], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise HandoffError(f"qaic-compile failed with exit code {result.returncode}: {tail}")
    return directory / "qpc"
