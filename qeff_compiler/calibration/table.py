"""The calibration table as a file: weight name → fp32 [in] activation maxima, stored as tagged safetensors.

This is the format only (no measurement), so the passes that read a table (`lower-w8a8`, `prune` with
`score=activation`) depend on it without depending on the measuring driver, which runs the pass manager.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from qeff_compiler.atomic import atomic_file
from qeff_compiler.errors import InvalidArgumentError

#: metadata key and value marking a safetensors file as a calibration table
_FORMAT_KEY, _FORMAT = "qeff_calibration", "activation-absmax-per-input-channel/v1"


def save_calibration(table: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Write `table` (weight name → fp32 [in] maxima) to `path` (atomically) as safetensors, tagged as a
    calibration table."""
    _check_table(table, str(path))
    with atomic_file(path) as temp:
        save_file(
            {name: value.contiguous() for name, value in table.items()}, str(temp), metadata={_FORMAT_KEY: _FORMAT}
        )


def load_calibration(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a table written by `save_calibration`; a missing, foreign or damaged file raises InvalidArgumentError."""
    path = Path(path)
    if not path.is_file():
        raise InvalidArgumentError(
            f"calibration table {path} does not exist; make one with qc.calibrate(model_dir) and "
            "qeff_compiler.calibration.save_calibration(table, path)"
        )
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            table = {name: file.get_tensor(name) for name in file.keys()}
    except SafetensorError as exc:
        raise InvalidArgumentError(f"calibration table {path} is not a readable safetensors file: {exc}") from exc
    if metadata.get(_FORMAT_KEY) != _FORMAT:
        raise InvalidArgumentError(
            f"{path} is a safetensors file but not a calibration table (metadata {_FORMAT_KEY}="
            f"{metadata.get(_FORMAT_KEY)!r}, expected {_FORMAT!r}); make one with save_calibration"
        )
    _check_table(table, str(path))
    return table


def _check_table(table: Mapping[str, torch.Tensor], where: str) -> None:
    """Every entry a non-empty 1-D fp32 tensor of finite, non-negative maxima."""
    if not table:
        raise InvalidArgumentError(f"calibration table {where} is empty")
    for name, value in table.items():
        if not isinstance(value, torch.Tensor):
            raise InvalidArgumentError(f"calibration table {where}: {name!r} is a {type(value).__name__}, not a tensor")
        if value.dtype != torch.float32 or value.dim() != 1 or value.numel() == 0:
            raise InvalidArgumentError(
                f"calibration table {where}: {name!r} must be a non-empty fp32 [in] tensor, "
                f"got {value.dtype} {list(value.shape)}"
            )
        if not bool((torch.isfinite(value) & (value >= 0)).all()):
            raise InvalidArgumentError(f"calibration table {where}: {name!r} has negative or non-finite maxima")
