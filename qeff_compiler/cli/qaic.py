"""`qeffc compile --qaic` and `qeffc inspect`'s listing of the Cloud AI 100 hand-off directory (OUTPUT/qaic)."""

from __future__ import annotations

from pathlib import Path

from qeff_compiler.backends.qaic.command import sdk_compiler
from qeff_compiler.backends.qaic.handoff import QAIC_DIRECTORY
from qeff_compiler.compiler import CompiledModel


def write_handoff(compiled: CompiledModel, output: Path) -> str:
    """Write OUTPUT/qaic/ and return the line that reports it. A config-only compile gets zero (sparse) weights."""
    directory = output / QAIC_DIRECTORY
    files = compiled.export_qaic(directory)
    note = "" if compiled.prefill.has_weight_data else " (config only: the weights file holds zeros, no disk used)"
    run = "run it" if sdk_compiler() is not None else "run it where the Cloud AI 100 SDK is installed"
    names = ", ".join(f.name for f in files)
    return f"wrote the qaic hand-off → {directory}: {names}{note}; compile.sh builds the binary ({run})"


def handoff_listing(artifact: Path) -> list[str]:
    """Lines listing OUTPUT/qaic's files with their sizes (none when there is no hand-off)."""
    directory = artifact / QAIC_DIRECTORY
    if not directory.is_dir():
        return []
    files = sorted(p for p in directory.iterdir() if p.is_file())
    sizes = ", ".join(f"{p.name} ({_size(p.stat().st_size)})" for p in files)
    return [f"qaic hand-off {directory}: {sizes}"]


def _size(size: int) -> str:
    return f"{size / 1e6:,.1f} MB" if size >= 10**6 else f"{size / 1e3:,.1f} kB"
