"""int8 quantization for the `int8` (W8A16) and `w8a8` precisions: quantizers, exact host kernels, SmoothQuant.

Formats (symmetric, no zero points, int8 codes in [-127, 127] so negation never overflows):
- weights: per output channel, scale = fp32(amax(row)) / 127 rounded to fp32;
- activations (w8a8): per tensor, with a calibrated fp32 scale.
Codes are round-half-to-even of value / scale, clamped to ±127. The quotient is formed in fp64: for fp32 operands
it is then within 2^-46 of the true quotient while a non-tie quotient below 2^28 is at least 2^-25 away from the
nearest half-integer, so ties and near-ties round exactly as on the real number.

Kernels, chosen by measurement on this host (AVX-512 VNNI, torch 2.13 CPU; bench/int8_linear.py has the figures):
- `torch._int_mm` (oneDNN s8·s8→s32) is exact and ~4x faster than fp32 `F.linear` for one row, but only a single
  row takes its fast GEMV path: 4 rows of 4096→4096 cost 10 ms, against 0.5 ms for one row.
- `onednn::qlinear_pointwise` on a weight packed by `onednn::qlinear_prepack` (the Inductor int8 path) takes 1 to
  128 uint8 rows with a zero point at about the cost of one weight pass, and returns fp32(fp32(int32 sum) · w_scale).
  With int8 rows it is ~1000x slower.
- `aten._weight_int8pack_mm` (fp32 x and scales) is ~12x slower than `F.linear` for one row and ~40x for 32, and
  its bf16/fp16 forms round the output to bf16/fp16, so it is not used.

W8A16, y = (x @ qweightᵀ) * scales with x an fp32 tensor (fp16 activations are emulated in fp32): each row of x is
turned into fixed point, x ≈ 2^(e-30) · v with integers |v| < 2^30 where 2^(e-1) <= amax(row) < 2^e, and v is
split into four signed base-256 digits stored as bytes with zero point 128. One qlinear call multiplies all
4 · rows digit rows by the packed weight in one weight pass, applying the weight scale; a batched matmul adds the
four results per row with their place values 2^(8l+e-30) (exact powers of two). An fp16 value of x is represented
exactly when it is at least amax(row) · 2^-19; smaller ones are rounded to a multiple of 2^(e-30), at most
amax(row) · 2^-30 away. What remains are a few fp32 roundings of the four digit sums, so the result is within fp32
rounding noise of the fp64 reference: max |y - ref| / max |ref| is 5e-8..8e-8 at MPT shapes, against 3e-7..1.4e-6
for fp32 `F.linear` on the dequantized weight (tests/test_int8.py checks an error bound per element). Against fp32
`F.linear` at batch-1 decode it is ~0.2-0.3x the time for the 125M lm_head and the 7B layers, ~0.45x for the 125M
FFN layers when their weights stream from DRAM as in a model's decode step, and about even (within ±10%) when
those small weights stay in the L3 cache between calls; the fixed cost of ~10 small tensor ops is what remains.

W8A8: `torch._int_mm` gives the exact int32 sum (fp32 sums of int8 products are exact only below 2^24, i.e.
K <~ 1040 in the worst case); the fp32 output is that sum times x_scale · w_scale formed in fp64, rounded to fp32.

Both int8 GEMMs are exact on CPUs with AVX-512 VNNI. Older x86 kernels add adjacent u8·s8 products in saturating
int16 (2 · 255 · 127 > 2^15), so each kernel is checked once on its worst case, and where the check fails the
same results are computed with fp64 matmuls (exact for these integer sizes) instead.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from qeff_compiler.errors import InvalidArgumentError

#: largest int8 code; the range is symmetric, [-QMAX, QMAX]
QMAX = 127
#: longest reduction the int32 accumulators hold: the W8A16 kernel sums byte · int8 products (<= 255 · 127 each)
#: in int32, which overflows past K = 66,313. MPT-7B needs 16,384.
MAX_IN_FEATURES = 65536

#: W8A16 activations become fixed point with this many bits below the row's leading power of two
_FIXED_POINT_BITS = 30
#: Adding 1.5 · 2^52 to an fp64 t with |t| < 2^51 lands in the binade whose unit is 1, so the sum is t rounded half
#: to even (the constant is even) and its low mantissa bits hold that integer. The extra 0x80808080 adds the zero
#: point 128 to each of the four low bytes: for |t| < 2^30 those bytes are then t's digits, read straight from memory.
_ROUNDING_MAGIC = torch.tensor(1.5 * 2.0**52 + 0x80808080, dtype=torch.float64)
#: where those four bytes sit in an fp64 word in memory, and the bit offset (place value) of each in that order
_LOW_BYTES, _DIGIT_BITS = (slice(0, 4), (0, 8, 16, 24)) if sys.byteorder == "little" else (slice(4, 8), (24, 16, 8, 0))
#: cap of the fixed-point shift, so place values stay exact in fp32
_MAX_SHIFT = 127
#: zero point of a digit byte: byte b stands for the digit b - 128
_DIGIT_ZERO_POINT = 128


def quantize_weight_per_channel(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel int8 codes [out, in] and their fp32 scales [out] (scale = amax(row) / 127).

    A row whose scale is 0 — all zeros, or amax < 127 · 2^-150 so that amax / 127 underflows — gets scale 1.0, not
    the smallest normal: 1.0 exists in every format a scale may be stored in (fp16 flushes 2^-126 to zero) and is
    safe to divide by; such a row quantizes to zeros either way. Rows whose scale is a float32 subnormal can have
    codes past ±127.5, which the clamp saturates.
    """
    _check_float_matrix("weight", weight)
    if not torch.isfinite(weight).all():
        raise InvalidArgumentError(f"weight has non-finite values in rows {_bad_rows(weight)}")
    scales = weight.abs().amax(dim=1).float() / QMAX
    scales = torch.where(scales == 0, 1.0, scales)
    return _round_to_codes(weight.double() / scales.double()[:, None]), scales


def quantize_activation_per_tensor(x: Tensor, scale: float) -> Tensor:
    """int8 codes of x for one per-tensor scale, taken as the fp32 number the device holds; ±inf saturate to ±127."""
    if not x.is_floating_point():
        raise InvalidArgumentError(f"x must be a floating-point tensor, got {x.dtype}")
    if torch.isnan(x).any():
        raise InvalidArgumentError("x contains NaN, which has no int8 code")
    return _round_to_codes(x.double() / _fp32_scale("scale", scale))


@dataclass(frozen=True, eq=False)
class PreparedW8A16:
    """An int8 weight with its scales in the layouts the W8A16 kernel reads; build it with `prepare_w8a16`.

    `packed` is oneDNN's blocked copy of `qweight` (None when that kernel is not exact on this CPU). Keeping the
    plain copy too costs 2 bytes per parameter in all, half of fp32; it serves activations holding inf or NaN
    (fixed point cannot) and CPUs without an exact int8 GEMM.
    """

    qweight: Tensor  # int8 [out, in], contiguous
    scales: Tensor  # fp32 [out]
    packed: Tensor | None  # opaque oneDNN tensor
    zero_points: Tensor  # int64 zeros [out]: symmetric weight codes

    @property
    def in_features(self) -> int:
        return self.qweight.shape[1]

    @property
    def out_features(self) -> int:
        return self.qweight.shape[0]

    def __call__(self, x: Tensor) -> Tensor:
        """fp32 y [..., out] = (x @ qweightᵀ) * scales for x [..., in]."""
        if not x.is_floating_point():
            raise InvalidArgumentError(f"x must be a floating-point tensor, got {x.dtype}")
        rows = _rows(x, self.in_features).float()
        # per-row maxima go to Python once: the finiteness check and the units then cost no tensor ops
        amax = rows.abs().amax(dim=1).tolist()
        if self.packed is None or not math.isfinite(sum(amax)):
            y = (F.linear(rows.double(), self.qweight.double()) * self.scales.double()).float()
        else:
            y = self._fixed_point_linear(rows, [_fixed_point_shift(a) for a in amax])
        return y.reshape(*x.shape[:-1], self.out_features)

    def _fixed_point_linear(self, rows: Tensor, shifts: list[int]) -> Tensor:
        """The fast path: all digit rows of x through one packed u8·s8 GEMM, then one weighted sum per row."""
        m, k, digits_per_row = rows.shape[0], self.in_features, len(_DIGIT_BITS)
        to_fixed = torch.tensor([2.0**shift for shift in shifts], dtype=torch.float64)
        words = torch.addcmul(_ROUNDING_MAGIC, rows, to_fixed[:, None])
        digits = words.view(torch.uint8).view(m, k, 8)[:, :, _LOW_BYTES].transpose(1, 2).contiguous()
        partial = torch.ops.onednn.qlinear_pointwise.default(
            digits.view(m * digits_per_row, k), 1.0, _DIGIT_ZERO_POINT, self.packed, self.scales, self.zero_points,
            None, 1.0, 0, torch.float32, "none", [], "",
        )
        place_values = torch.tensor([2.0 ** (bits - shift) for shift in shifts for bits in _DIGIT_BITS])
        sums = torch.bmm(place_values.view(m, 1, digits_per_row), partial.view(m, digits_per_row, self.out_features))
        return sums.view(m, self.out_features)


def prepare_w8a16(qweight: Tensor, scales: Tensor) -> PreparedW8A16:
    """Check an int8 weight and its scales once and pack the weight for the W8A16 kernel."""
    _check_codes_and_scales(qweight, scales)
    bad = ~(torch.isfinite(scales) & (scales > 0))
    if bad.any():
        where = bad.nonzero().flatten()[:4].tolist()
        raise InvalidArgumentError(f"scales must be positive and finite, got {scales[where].tolist()} at {where}")
    qweight = qweight.contiguous()
    out_features = qweight.shape[0]
    return PreparedW8A16(
        qweight=qweight,
        scales=scales,
        packed=torch.ops.onednn.qlinear_prepack(qweight, None) if _qlinear_is_exact() else None,
        zero_points=torch.zeros(out_features, dtype=torch.int64),
    )


def linear_w8a16(x: Tensor, qweight: Tensor, scales: Tensor) -> Tensor:
    """A one-off W8A16 linear. Packing costs a pass over the weight, so callers reusing it keep `prepare_w8a16`."""
    return prepare_w8a16(qweight, scales)(x)


def linear_w8a8(xq: Tensor, x_scale: float, qweight: Tensor, w_scales: Tensor) -> Tensor:
    """fp32 y [..., out] = acc · x_scale · w_scales, acc the exact int32 sum of xq [..., in] · qweight [out, in].

    x_scale · w_scale is exact in fp64 (two 24-bit significands) and the product with acc is rounded once in fp64
    before the fp32 rounding, so y is the correctly rounded fp32 value except within 2^-53 of a rounding boundary.
    Only shapes and dtypes are checked per call; w_scales values are trusted, as the quantizer produced them.
    """
    _check_codes_and_scales(qweight, w_scales)
    if xq.dtype != torch.int8:
        raise InvalidArgumentError(f"xq must be an int8 tensor, got {xq.dtype}")
    rows = _rows(xq, qweight.shape[1])
    x_scale = _fp32_scale("x_scale", x_scale)
    if _int_mm_is_exact():
        acc = torch._int_mm(*_int_mm_operands(rows, qweight))
    else:
        acc = F.linear(rows.double(), qweight.double())
    y = acc.double() * (w_scales.double() * x_scale)
    return y.float().reshape(*xq.shape[:-1], qweight.shape[0])


def smoothing_factors(act_absmax: Tensor, weight: Tensor, alpha: float) -> Tensor:
    """SmoothQuant factors s [in] = max|X_j|^alpha / max|W_:,j|^(1 - alpha), fp32.

    linear(x / s, W * s) equals linear(x, W) and moves activation outliers into the weight, where per-channel
    scales absorb them. A channel whose activation max or weight-column max is 0 carries nothing through the
    product, so any factor keeps it; it gets 1, which avoids 0/0 and x/0.
    """
    _check_float_matrix("weight", weight)
    if not 0.0 <= alpha <= 1.0:
        raise InvalidArgumentError(f"alpha must be in [0, 1], got {alpha}")
    if act_absmax.shape != (weight.shape[1],):
        raise InvalidArgumentError(
            f"act_absmax must have shape [{weight.shape[1]}] (the weight's in_features), got {list(act_absmax.shape)}"
        )
    act = act_absmax.double()
    if not (torch.isfinite(act) & (act >= 0)).all():
        raise InvalidArgumentError("act_absmax must be finite and non-negative")
    col = weight.abs().amax(dim=0).double()
    if not torch.isfinite(col).all():
        raise InvalidArgumentError("weight has non-finite values")
    factors = torch.where((act == 0) | (col == 0), 1.0, act.pow(alpha) / col.pow(1.0 - alpha)).float()
    if not (torch.isfinite(factors) & (factors > 0)).all():
        raise InvalidArgumentError("smoothing factors fall outside the float32 range; the maxima are too extreme")
    return factors


def w8a8_parts(weight: Tensor, *, act_absmax: Tensor, alpha: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A W8A8 weight's stored parts: smoothing factors s [in], the per-tensor activation scale (0-d: the largest
    smoothed calibrated maximum / 127, 1.0 when that is 0), the int8 codes of W · diag(s) [out, in] and their
    per-output-channel scales [out]. a_j / s_j cannot overflow: a and the weight are fp16-bounded."""
    weight = weight.float()
    smooth = smoothing_factors(act_absmax, weight, alpha)
    qweight, w_scale = quantize_weight_per_channel(weight * smooth)
    act_scale = (act_absmax / smooth).max() / QMAX
    act_scale = torch.where(act_scale == 0, 1.0, act_scale)
    return smooth, act_scale, qweight, w_scale


def _round_to_codes(quotient: Tensor) -> Tensor:
    """Round half to even and saturate to the symmetric int8 range."""
    return torch.round(quotient).clamp_(-QMAX, QMAX).to(torch.int8)


def _fixed_point_shift(amax: float) -> int:
    """s such that 2^s · row is below 2^30 for a row with this max, and as large as that allows.

    With 2^(e-1) <= amax < 2^e, s = 30 - e; scaling by a power of two is exact, so rounding to integers is the only
    error. s is capped at 127 so that the place values 2^(8l - s) stay exact in fp32: rows with amax < 2^-97 get
    the coarser unit 2^-127, which fp16 activations (>= 2^-24) never need.
    """
    return min(_FIXED_POINT_BITS - math.frexp(amax)[1], _MAX_SHIFT)


@functools.cache
def _qlinear_is_exact() -> bool:
    """Whether oneDNN's prepacked u8·s8 linear returns the int32 sum rounded to fp32 on its worst case."""
    weight = torch.tensor([[QMAX] * 64, [-QMAX] * 64], dtype=torch.int8)
    digits = torch.full((1, 64), 255, dtype=torch.uint8)
    got = torch.ops.onednn.qlinear_pointwise.default(
        digits, 1.0, _DIGIT_ZERO_POINT, torch.ops.onednn.qlinear_prepack(weight, None), torch.ones(2),
        torch.zeros(2, dtype=torch.int64), None, 1.0, 0, torch.float32, "none", [], "",
    )
    return got.tolist() == [[127.0 * QMAX * 64, -127.0 * QMAX * 64]]


@functools.cache
def _int_mm_is_exact() -> bool:
    """Whether `torch._int_mm` returns the exact int32 sum on its worst case (±127 rows, adjacent pairs > 2^15)."""
    codes = torch.tensor([[QMAX] * 64, [-QMAX] * 64], dtype=torch.int8)
    full = QMAX * QMAX * 64
    return torch._int_mm(codes, codes.T).tolist() == [[full, -full], [-full, full]]


def _int_mm_operands(rows: Tensor, qweight: Tensor) -> tuple[Tensor, Tensor]:
    """rows [m, in] and qweightᵀ [in, out] with row-major strides on every dimension, size-1 ones included.

    torch 2.13's CPU `_int_mm` takes leading dimensions from the strides, also of size-1 dimensions whose stride is
    arbitrary (a transposed [out, 1] weight has strides (1, 1)); oneDNN then rejects the call and the output is
    left uninitialised (pytorch/pytorch#195066). `reshape` and `contiguous` give such dimensions proper strides.
    """
    weight_t = qweight.contiguous().T if qweight.shape[1] > 1 else qweight.reshape(1, -1)
    return rows.contiguous().reshape(rows.shape), weight_t


def _rows(x: Tensor, in_features: int) -> Tensor:
    """x [..., in] as a 2-D [rows, in] tensor."""
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise InvalidArgumentError(f"input must have shape [..., {in_features}], got {list(x.shape)}")
    return x.reshape(-1, in_features)


def _check_float_matrix(name: str, weight: Tensor) -> None:
    if not weight.is_floating_point() or weight.dim() != 2 or weight.numel() == 0:
        raise InvalidArgumentError(
            f"{name} must be a non-empty 2-D floating-point tensor [out, in], got {weight.dtype} {list(weight.shape)}"
        )


def _check_codes_and_scales(qweight: Tensor, scales: Tensor) -> None:
    if qweight.dtype != torch.int8 or qweight.dim() != 2 or qweight.numel() == 0:
        raise InvalidArgumentError(
            f"qweight must be a non-empty 2-D int8 tensor [out, in], got {qweight.dtype} {list(qweight.shape)}"
        )
    if qweight.shape[1] > MAX_IN_FEATURES:
        raise InvalidArgumentError(
            f"in_features {qweight.shape[1]} exceeds {MAX_IN_FEATURES}, past which int32 accumulators can overflow"
        )
    if scales.dtype != torch.float32 or scales.shape != qweight.shape[:1]:
        raise InvalidArgumentError(
            f"scales must be float32 of shape [{qweight.shape[0]}], got {scales.dtype} {list(scales.shape)}"
        )


def _fp32_scale(name: str, scale: float) -> float:
    """The fp32 value of a per-tensor scale, which must be positive and finite in fp32."""
    value = torch.tensor(scale, dtype=torch.float32).item()
    if not (math.isfinite(value) and value > 0):
        raise InvalidArgumentError(f"{name} must be positive and finite in float32, got {scale}")
    return value


def _bad_rows(weight: Tensor) -> list[int]:
    """Indices of the first rows holding inf or NaN, for error messages."""
    return (~torch.isfinite(weight)).any(dim=1).nonzero().flatten()[:8].tolist()
