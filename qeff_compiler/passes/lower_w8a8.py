"""`lower-w8a8`: int8 weights and calibrated int8 activations (SmoothQuant), int32 accumulation emulated exactly.

Runs after `lower-fp16`. Each bias-free linear becomes a `qeff::linear_w8a8` (roundings: `ir.ops.quant`) over
scheme `W8A8`'s parts (`numerics.int8.w8a8_parts`, from `alpha` and the `calibration` table of `qc.calibrate`).
The fused attention's weights take fp16 activations: they are stored as `lower-int8` stores them (scheme `INT8`).

Before (the shipped model after lower-fp16):
    %linear_2 = aten.linear(%_to_copy_default_32, %_to_copy_default_5) : f32[1,8,1024]
After:
    %linear_w8a8_default = qeff.linear_w8a8(%_to_copy_default_32, %w_..._smooth, %w_..._act_scale, %w_..._w8a8,
        %w_..._w8a8_scale) : f32[1,8,1024]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

from qeff_compiler.errors import PassOptionError
from qeff_compiler.ir.ops import INT8, W8A8, WeightScheme
from qeff_compiler.ir.program import Program
from qeff_compiler.passes.base import option
from qeff_compiler.passes.registry import register_pass
from qeff_compiler.passes.w8a8_calibration import smoothquant_encoders
from qeff_compiler.passes.weight_quantization import Encoder, Names, WeightLowering, WeightRead, exclude_option


@dataclasses.dataclass(frozen=True)
class LowerW8A8Options:
    alpha: float = option(0.5, "SmoothQuant migration strength in [0, 1]: 0 = no smoothing, 1 = all range to weights")
    calibration: str = option("", "calibration table file (qc.calibrate, save_calibration); required with real weights")
    exclude: str = exclude_option()

    def __post_init__(self) -> None:  # a bad alpha is refused when the pipeline is built
        if not 0.0 <= self.alpha <= 1.0:
            raise PassOptionError(f"lower-w8a8 option alpha={self.alpha} is outside [0, 1], the SmoothQuant range")


@register_pass
class LowerW8A8(WeightLowering):
    name = "lower-w8a8"
    summary = "W8A8: linears int8 x int8 with exact int32 sums (SmoothQuant, calibrated activation scales)"
    Options: ClassVar[type] = LowerW8A8Options
    ensures: ClassVar[frozenset[str]] = frozenset({"w8a8"})
    schemes: ClassVar[tuple[WeightScheme, ...]] = (W8A8, INT8)
    # measured vs fp16 (tests/conftest.py MPTs): ≤ 0.54 for alpha ≤ 0.75, ≤ 0.96 at 1; TINY_MPT ≤ 0.34; ~3x margin
    tolerance = 1.5
    high_alpha_tolerance = 3.0

    def tolerance_for(self, program: Program) -> float:
        return self.tolerance if self.options.alpha <= 0.75 else self.high_alpha_tolerance

    def encoders(
        self, program: Program, names: Names, every_read: Sequence[WeightRead]
    ) -> tuple[dict[str, Encoder], list[str]]:
        smoothquant, notes = smoothquant_encoders(self.name, self.options, program, names[W8A8], every_read)
        return {**super().encoders(program, {INT8: names[INT8]}, every_read)[0], **smoothquant}, notes

    def stored_as(self, scheme: WeightScheme) -> str:
        if scheme is W8A8:
            return (
                "of linears → W8A8: int8 per output channel, int8 activations per tensor, "
                f"SmoothQuant alpha={self.options.alpha}"
            )
        return "of fused-attention weights (Wqkv, out_proj) → int8 with fp16 activations (W8A16, as lower-int8)"
