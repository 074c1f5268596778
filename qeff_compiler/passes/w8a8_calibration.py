"""`lower-w8a8`'s SmoothQuant encoders, from the calibration table it reads: per-input-channel activation maxima of
each linear, checked against the program it is applied to (a table made for another model, or missing a weight, is
refused by name). A meta program (captured from a config) gets meta maxima: its table is not read."""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch

from qeff_compiler.calibration.table import load_calibration
from qeff_compiler.errors import PassOptionError
from qeff_compiler.ir.ops import W8A8
from qeff_compiler.ir.program import Program
from qeff_compiler.passes.weight_quantization import WeightRead, is_plain_linear


def smoothquant_encoders(
    pass_name: str, options: Any, program: Program, names: Sequence[str], every_read: Sequence[WeightRead]
) -> tuple[dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, ...]]], list[str]]:
    """The W8A8 encoder of each weight in `names` (SmoothQuant with `options.alpha`, activation maxima from the
    table file `options.calibration`), and notes; `every_read` are the program's matmul weight reads."""
    notes = []
    if program.has_weight_data:
        linears = {read.name for read in every_read if is_plain_linear(read)}
        table = checked_calibration_table(pass_name, options.calibration, program, names, linears)
    else:
        notes.append("meta program: the calibration table is not read; W8A8 weights are shapes only")
        table = {name: torch.empty(program.weights[name].shape[1], device="meta") for name in names}
    encoders: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, ...]]] = {
        n: functools.partial(W8A8.encode, act_absmax=table[n], alpha=options.alpha) for n in names
    }
    return encoders, notes


def checked_calibration_table(
    pass_name: str, path: str, program: Program, needed: Sequence[str], known: Collection[str]
) -> dict[str, torch.Tensor]:
    """The table at `path` with maxima for every weight in `needed`, each of its input width, and none for a weight
    outside `known` (the program's fp16 linears)."""
    if not path:
        raise PassOptionError(
            f"{pass_name} needs a calibration table for its activation scales: make one with "
            "table = qc.calibrate(model_dir), save it with qeff_compiler.calibration.save_calibration(table, "
            f"PATH) and pass {pass_name}{{calibration=PATH}}"
        )
    table = load_calibration(path)
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise PassOptionError(
            f"{pass_name}: calibration table {path} has maxima for {unknown[0]!r} ({len(unknown)} such names), "
            f"which no fp16 linear of this program reads; was it made for another model?"
        )
    missing = [name for name in needed if name not in table]
    if missing:
        raise PassOptionError(
            f"{pass_name}: calibration table {path} has no maxima for weight {missing[0]!r} "
            f"({len(missing)} missing); recalibrate with qc.calibrate on this model"
        )
    for name in needed:
        in_features = program.weights[name].shape[1]
        if tuple(table[name].shape) != (in_features,):
            raise PassOptionError(
                f"{pass_name}: calibration table {path} has maxima of shape {list(table[name].shape)} for "
                f"{name!r}, whose input has {in_features} channels"
            )
    return table
