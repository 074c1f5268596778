"""OCP Microscaling (MX v1.0) block formats: MXFP6 for weights, MXINT8 for the KV cache.

A tensor is cut into blocks of `BLOCK_SIZE` (32) consecutive elements along one axis — the reduction axis, so a
dot product walks along a block: axis -1 for a linear weight [out, in] and for a KV cache [b, h, ctx, head_dim].
Each block stores one shared scale X = 2^s and 32 narrow elements P; a value decodes as P * X.

Shared scale (E8M0: uint8 biased exponent, bias 127, code 0xFF = NaN, no zero, no Inf):
    s = floor(log2(amax)) - emax_elem, clamped to [-127, 127]
where amax is the block's largest magnitude and emax_elem the exponent of the element type's largest normal
number. The code is computed from the float32 bits of amax (biased exponent − emax_elem, clamped at 0), which is
exact — no log2 — and sends zero and float32-subnormal amax to code 0 (s = -127), the scale OCP gives all-zero
blocks. A finite float32 amax is below 2^128, so the code is at most 254 without an upper clamp.

Formats (`fmt`):
- "fp6_e2m3" (default MXFP6 element): 1 sign, 2 exponent (bias 1), 3 mantissa bits; emax 2, max normal 7.5.
- "fp6_e3m2": 1 sign, 3 exponent (bias 3), 2 mantissa bits; emax 4, max normal 28.0.
- "int8" (MXINT8): two's complement int8 k, value k * 2^-6 (fixed point with an implicit scale 2^-6). OCP
  defines emax_elem as the exponent of the largest element; for INT8 that is 127 * 2^-6 = 1.98..., exponent 0,
  so emax_elem = 0 and the block max lands in [64, 128) before rounding.
  Elements are clamped to [-127, 127], not [-128, 127]: the range is symmetric, so quantization commutes with
  negation and the saturation error is the same on both sides, and -128 (whose negation overflows int8) never
  has to be handled by a kernel. With the floor rule, -128 would only hold a negative block max within half a
  step of -2^(s+1), whose positive mirror saturates to 127 anyway.

Elements: x / 2^s rounded to nearest, ties to even, onto the element grid and saturated to ± max normal (the
elements have no Inf and no NaN). The floor rule puts the block max in [2^emax, 2^(emax+1)), which can lie above
the max normal (e.g. 7.9 for E2M3): such elements saturate. Per element y = x / 2^s the error is therefore
    |q - y| <= ulp(y) / 2                       if |y| <= max normal (round to nearest),
    |q - y| <  2^(emax - mantissa_bits)         otherwise (saturation; one step of the top binade),
with ulp(y) = 2^(max(floor(log2|y|), emin) - mantissa_bits) for FP6 (emin = smallest normal exponent) and 2^-6
for INT8; in value units multiply by 2^s. FP6 keeps the sign of a negative value that rounds to zero (code 0x20,
-0.0), as an element-type cast does; INT8 has no -0.

NaN and Inf: a block holding a NaN gets scale code 0xFF, so the whole block decodes to NaN (OCP: an E8M0 NaN
scale makes every element of its block NaN). A block holding ±Inf is treated the same way: no element or scale
can represent Inf, and saturating it would turn an overflow (e.g. an fp16 activation past 65504 on its way into
the KV cache) into a plausible finite number; a NaN block keeps the failure visible. Element codes of a NaN
block are 0 (they are meaningless).

A partial last block is padded with zeros, which never change amax; codes are stored without the padding (same
shape as the input) and the padding is dropped on decode. Storage counts whole blocks: 6.25 bits per element for
MXFP6 and 8.25 for MXINT8 (one 8-bit scale per 32 elements).

Decoding is exact in float32: an element has at most 4 (FP6) or 7 (INT8) significant bits and its lowest bit is
never below 2^-6 * 2^-127 = 2^-133, above float32's smallest subnormal 2^-149.

FP6 bit packing (`pack_fp6`): four 6-bit codes c0..c3 form the little-endian 24-bit word
w = c0 | c1 << 6 | c2 << 12 | c3 << 18, stored as the bytes w & 0xFF, (w >> 8) & 0xFF, w >> 16 — the first code
sits in the low bits of the first byte.

The element rounding is done here on float32 bits rather than by ml_dtypes' float6 casts: those do round to
nearest even and saturate (checked), but cost ~20 ns per element and turn NaN into -0; the tests use them as the
independent oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from qeff_compiler.errors import InvalidArgumentError

#: elements per shared scale (OCP MX v1.0 uses 32 for every concrete format)
BLOCK_SIZE = 32
#: scale code of a NaN block
E8M0_NAN = 0xFF
#: the format names `quantize_mx` accepts
MX_FORMATS = ("fp6_e2m3", "fp6_e3m2", "int8")

_F32_BIAS = 127
_F32_MANTISSA_BITS = 23
_SCALE_BITS = 8
#: blocks encoded or decoded per vectorised numpy step: 64 Ki elements, so the temporaries stay in cache
_CHUNK_BLOCKS = 2048
#: dtypes quantized exactly by widening to float32
_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class _Format:
    """What the scale rule and the element rounding need to know about one element type."""

    element_bits: int
    #: exponent of the largest normal element; the scale rule subtracts it
    emax: int
    #: FP6: stored mantissa bits; INT8: fraction bits of the fixed point (the implicit 2^-6)
    mantissa_bits: int
    #: FP6: exponent of the smallest normal element (1 - bias); None for the fixed-point INT8
    emin: int | None


_FORMATS = {
    "fp6_e2m3": _Format(element_bits=6, emax=2, mantissa_bits=3, emin=0),
    "fp6_e3m2": _Format(element_bits=6, emax=4, mantissa_bits=2, emin=-2),
    "int8": _Format(element_bits=8, emax=0, mantissa_bits=6, emin=None),
}


@dataclass(frozen=True, eq=False)  # eq would compare tensors with ==, which has no single truth value
class MXTensor:
    """One MX-quantized tensor: element codes in the input's shape plus one E8M0 scale code per block."""

    #: FP6: uint8 holding 6-bit codes (sign, exponent, mantissa); INT8: the int8 elements
    codes: torch.Tensor
    #: uint8 E8M0 codes; the input's shape with the block axis replaced by the number of blocks
    scales: torch.Tensor
    #: shape of the quantized tensor (= codes.shape)
    shape: tuple[int, ...]
    fmt: str
    #: block axis, non-negative
    axis: int

    def __post_init__(self) -> None:
        """Reject inconsistent parts here, so a hand-built MXTensor fails where it is made, not deep in a decode."""
        spec = _format(self.fmt)
        code_dtype = _code_dtype(spec)
        if self.codes.dtype != code_dtype or tuple(self.codes.shape) != self.shape:
            raise InvalidArgumentError(
                f"{self.fmt} codes must be {code_dtype} of shape {self.shape}, got {self.codes.dtype} "
                f"{tuple(self.codes.shape)}"
            )
        if not 0 <= self.axis < len(self.shape):
            raise InvalidArgumentError(f"block axis {self.axis} is outside shape {self.shape}")
        scale_shape = list(self.shape)
        scale_shape[self.axis] = _n_blocks(self.shape[self.axis])
        if self.scales.dtype != torch.uint8 or list(self.scales.shape) != scale_shape:
            raise InvalidArgumentError(
                f"scales must be torch.uint8 of shape {tuple(scale_shape)}, got {self.scales.dtype} "
                f"{tuple(self.scales.shape)}"
            )


def quantize_mx(x: torch.Tensor, fmt: str = "fp6_e2m3", axis: int = -1) -> MXTensor:
    """Encode `x` (float32, float16 or bfloat16) in MX format `fmt` with blocks of 32 along `axis`.

    The arithmetic runs in numpy on chunks of blocks: a dozen passes over data that stays in cache are ~5x faster
    than whole-tensor passes, and numpy's single thread is immune to the stalls that many short multi-threaded
    torch ops suffer on an oversubscribed machine.
    """
    spec = _format(fmt)
    axis = _normalize_axis(x, axis)
    if x.dtype not in _INPUT_DTYPES:
        raise InvalidArgumentError(f"quantize_mx takes {', '.join(map(str, _INPUT_DTYPES))} tensors, got {x.dtype}")
    blocks = _to_blocks(x.detach().float(), axis)
    rows = blocks.reshape(-1, BLOCK_SIZE).numpy()
    scales = np.empty(rows.shape[0], dtype=np.uint8)
    codes = np.empty(rows.shape, dtype=np.int8 if spec.emin is None else np.uint8)
    for chunk in _chunks(rows.shape[0]):
        scales[chunk] = _shared_scales(rows[chunk], spec.emax)
        elements = rows[chunk] * _E8M0_INVERSES[scales[chunk], None]  # x / 2^s, exact for every kept element
        elements[scales[chunk] == E8M0_NAN] = 0.0  # NaN blocks get codes 0; no NaN reaches an integer cast
        if spec.emin is None:
            codes[chunk] = _round_to_int8(elements)
        else:
            codes[chunk] = _round_to_fp6(elements, spec.mantissa_bits, spec.emin)
    return MXTensor(
        codes=_from_blocks(torch.from_numpy(codes).view(blocks.shape), x.shape[axis], axis),
        scales=torch.from_numpy(scales).view(blocks.shape[:-1]).movedim(-1, axis).contiguous(),
        shape=tuple(x.shape),
        fmt=fmt,
        axis=axis,
    )


def dequantize_mx(q: MXTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decode `q` to `dtype`; exact in float32 (powers of two times short elements), rounded once for narrower."""
    if not dtype.is_floating_point:
        raise InvalidArgumentError(f"dequantize_mx produces floating-point tensors, not {dtype}")
    code_blocks = _to_blocks(q.codes.view(torch.uint8), q.axis)  # the code bytes index the value tables
    codes = code_blocks.reshape(-1, BLOCK_SIZE).numpy()
    scales = _E8M0_VALUES[q.scales.movedim(q.axis, -1).reshape(-1).numpy()]
    element_values = _ELEMENT_VALUES[q.fmt]
    values = np.empty(codes.shape, dtype=np.float32)
    for chunk in _chunks(codes.shape[0]):
        np.multiply(element_values[codes[chunk]], scales[chunk, None], out=values[chunk])
    return _from_blocks(torch.from_numpy(values).view(code_blocks.shape), q.shape[q.axis], q.axis).to(dtype)


def fake_quantize_mx(x: torch.Tensor, fmt: str = "fp6_e2m3", axis: int = -1) -> torch.Tensor:
    """`x` rounded through MX format `fmt` and back, in `x`'s dtype: the numerics of a quantized tensor."""
    return dequantize_mx(quantize_mx(x, fmt, axis), dtype=x.dtype)


def pack_fp6(codes: torch.Tensor) -> torch.Tensor:
    """Pack 6-bit codes along the last axis, four into three bytes: uint8 [..., n] → uint8 [..., 3 * ceil(n / 4)].

    The last axis is zero-padded to a multiple of 4 first; the bit order is in the module docstring.
    """
    if codes.dtype != torch.uint8 or codes.dim() == 0:
        raise InvalidArgumentError(f"pack_fp6 takes a uint8 tensor of rank >= 1, got {codes.dtype} {codes.dim()}-D")
    if codes.numel() and int(codes.max()) > 0x3F:
        raise InvalidArgumentError(f"pack_fp6 takes 6-bit codes, got a code of {int(codes.max())}")
    padded = F.pad(codes, (0, -codes.shape[-1] % 4))
    c0, c1, c2, c3 = padded.unflatten(-1, (-1, 4)).unbind(-1)  # uint8 shifts drop the bits that leave the byte
    packed = torch.stack((c0 | (c1 << 6), (c1 >> 2) | (c2 << 4), (c2 >> 4) | (c3 << 2)), dim=-1)
    return packed.flatten(-2)


def unpack_fp6(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of `pack_fp6`: uint8 [..., 3 * ceil(count / 4)] → the first `count` 6-bit codes, uint8 [..., count]."""
    if packed.dtype != torch.uint8 or packed.dim() == 0:
        raise InvalidArgumentError(f"unpack_fp6 takes a uint8 tensor of rank >= 1, got {packed.dtype} {packed.dim()}-D")
    if count < 0 or packed.shape[-1] != 3 * -(-count // 4):
        raise InvalidArgumentError(f"{count} six-bit codes do not pack into {packed.shape[-1]} bytes")
    b0, b1, b2 = packed.unflatten(-1, (-1, 3)).unbind(-1)
    codes = torch.stack((b0 & 0x3F, (b0 >> 6) | ((b1 << 2) & 0x3F), (b1 >> 4) | ((b2 << 4) & 0x3F), b2 >> 2), dim=-1)
    return codes.flatten(-2)[..., :count].contiguous()


def element_values(fmt: str) -> np.ndarray:
    """float32 value of every element code byte of `fmt` (64 FP6 codes; 256 INT8 bytes read as int8), exact."""
    return _ELEMENT_VALUES[_format_name(fmt)].copy()


def e8m0_values() -> np.ndarray:
    """float32 value 2^(code - 127) of every E8M0 scale code, NaN for 0xFF; code 0 is the subnormal 2^-127."""
    return _E8M0_VALUES.copy()


def mx_storage_bits_per_element(fmt: str) -> float:
    """Stored bits per element for whole blocks: the element plus its share of the 8-bit scale."""
    return _format(fmt).element_bits + _SCALE_BITS / BLOCK_SIZE


# encoding (numpy, on [n_blocks, 32] float32 chunks) --------------------------------------------------------------


def _shared_scales(blocks: np.ndarray, emax: int) -> np.ndarray:
    """E8M0 code of each block: floor(log2(amax)) - emax + 127 from amax's float32 bits, NaN/Inf → 0xFF."""
    amax = np.abs(blocks).max(axis=-1)  # NaN if the block holds one
    biased_exponent = amax.view(np.int32) >> _F32_MANTISSA_BITS  # 255 for NaN and Inf
    codes = np.maximum(biased_exponent - emax, 0)
    return np.where(biased_exponent == 0xFF, E8M0_NAN, codes).astype(np.uint8)


def _round_to_fp6(elements: np.ndarray, mantissa_bits: int, emin: int) -> np.ndarray:
    """FP6 codes of float32 `elements` (|y| < 2^(emax+1)): round to nearest even, saturate at the max normal.

    In the binade of exponent e >= emin (element subnormals share e = emin) the grid step is 2^(e - m), so the
    magnitude code is (e - emin) * 2^m + round(|y| / 2^(e - m)): the count of steps, carrying into the exponent
    field when rounding reaches the next binade. All scaling is by powers of two built from float32 bits, so the
    only inexact operation is the one rounding.
    """
    bits = elements.view(np.int32)
    magnitude = bits & 0x7FFFFFFF
    exponent = np.maximum(magnitude >> _F32_MANTISSA_BITS, _F32_BIAS + emin)  # biased e
    inverse_step = ((2 * _F32_BIAS + mantissa_bits - exponent) << _F32_MANTISSA_BITS).view(np.float32)
    steps = np.rint(magnitude.view(np.float32) * inverse_step).astype(np.int32)  # rint: ties to even
    code = steps + ((exponent - (_F32_BIAS + emin)) << mantissa_bits)
    np.minimum(code, 0x1F, out=code)  # every FP6 code is finite: the largest magnitude code is the max normal
    sign = (bits >> 26) & 0x20  # float32 sign bit (bit 31) → FP6 sign bit (bit 5)
    return (code | sign).astype(np.uint8)


def _round_to_int8(elements: np.ndarray) -> np.ndarray:
    """INT8 elements of float32 `elements`: rint(y * 2^6) (ties to even), clamped to the symmetric [-127, 127]."""
    return np.clip(np.rint(elements * 64.0), -127, 127).astype(np.int8)


# layout ----------------------------------------------------------------------------------------------------------


def _chunks(n_blocks: int) -> list[slice]:
    return [slice(start, start + _CHUNK_BLOCKS) for start in range(0, n_blocks, _CHUNK_BLOCKS)]


def _n_blocks(length: int) -> int:
    return -(-length // BLOCK_SIZE)


def _to_blocks(x: torch.Tensor, axis: int) -> torch.Tensor:
    """`x` with `axis` moved last, zero-padded to whole blocks and split: [..., n_blocks, BLOCK_SIZE]."""
    moved = x.movedim(axis, -1)
    padding = -moved.shape[-1] % BLOCK_SIZE
    if padding:  # F.pad copies even when it adds nothing
        moved = F.pad(moved, (0, padding))
    return moved.unflatten(-1, (-1, BLOCK_SIZE))


def _from_blocks(blocks: torch.Tensor, length: int, axis: int) -> torch.Tensor:
    """Inverse of `_to_blocks`: merge the blocks, drop the padding, move the block axis back to `axis`."""
    return blocks.flatten(-2)[..., :length].movedim(-1, axis).contiguous()


def _code_dtype(spec: _Format) -> torch.dtype:
    return torch.int8 if spec.emin is None else torch.uint8


def _normalize_axis(x: torch.Tensor, axis: int) -> int:
    if x.dim() == 0 or not -x.dim() <= axis < x.dim():
        raise InvalidArgumentError(f"block axis {axis} is outside a tensor of shape {tuple(x.shape)}")
    return axis % x.dim()


def _format(fmt: str) -> _Format:
    return _FORMATS[_format_name(fmt)]


def _format_name(fmt: str) -> str:
    if fmt not in _FORMATS:
        raise InvalidArgumentError(f"unknown MX format {fmt!r}; expected one of {', '.join(MX_FORMATS)}")
    return fmt


# lookup tables (exact: built in float64 from powers of two, every value representable in float32) -----------------


def _e8m0_table(sign: int) -> np.ndarray:
    """2^(sign * (code - 127)) for every E8M0 code, NaN for 0xFF."""
    exponents = sign * (np.arange(E8M0_NAN) - _F32_BIAS)
    return np.append(np.ldexp(1.0, exponents), np.nan).astype(np.float32)


def _fp6_values(mantissa_bits: int, emin: int) -> np.ndarray:
    """Value of every 6-bit code: sign | exponent field | mantissa; exponent field 0 holds the subnormals."""
    codes = np.arange(64)
    field, mantissa = (codes & 0x1F) >> mantissa_bits, codes & ((1 << mantissa_bits) - 1)
    significand = np.where(field == 0, mantissa, mantissa + (1 << mantissa_bits))
    magnitude = np.ldexp(significand.astype(np.float64), np.maximum(field, 1) - 1 + emin - mantissa_bits)
    return np.where(codes & 0x20, -magnitude, magnitude).astype(np.float32)


def _int8_values() -> np.ndarray:
    """Value of every int8 element, indexed by its byte: k * 2^-6."""
    return np.ldexp(np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float64), -6).astype(np.float32)


#: 2^s and 2^-s of every scale code
_E8M0_VALUES = _e8m0_table(+1)
_E8M0_INVERSES = _e8m0_table(-1)
#: element value of every code byte, for decoding by one table lookup
_ELEMENT_VALUES = {
    name: _int8_values() if spec.emin is None else _fp6_values(spec.mantissa_bits, spec.emin)
    for name, spec in _FORMATS.items()
}
