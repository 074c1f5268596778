"""OCP MX encoders/decoders: hand-computed blocks per format, an independent float64 + ml_dtypes oracle under
hypothesis, the error bound, idempotence, FP6 packing, storage size, and the ONNX dequantize function in ORT.

Element grids used in the hand-computed cases (value of magnitude code c):
  E2M3 (bias 1): c 0-7 → c/8 (subnormals), 8-15 → 1 + (c-8)/8, 16-23 → 2 + (c-16)/4, 24-31 → 4 + (c-24)/2 (max 7.5)
  E3M2 (bias 3): c 0-3 → c/16 (subnormals), then binades of 4 codes: 0.25, 0.5, 1, 2, 4, 8, 16 (c 28-31: 16, 20, 24, 28)
  INT8: k/64, k in [-127, 127]
The sign of an FP6 code is bit 5 (0x20). Scale code = s + 127 with s = floor(log2(amax)) - emax (2, 4, 0).
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.numerics.mx import (
    MX_FORMATS,
    MXTensor,
    dequantize_mx,
    e8m0_values,
    element_values,
    fake_quantize_mx,
    mx_storage_bits_per_element,
    pack_fp6,
    quantize_mx,
    unpack_fp6,
)
from qeff_compiler.numerics.mx_onnx import dequantize_mxfp6_model, pack_mxfp6_weight

FP6 = ("fp6_e2m3", "fp6_e3m2")
ML_DTYPE = {"fp6_e2m3": ml_dtypes.float6_e2m3fn, "fp6_e3m2": ml_dtypes.float6_e3m2fn}
EMAX = {"fp6_e2m3": 2, "fp6_e3m2": 4, "int8": 0}
MANTISSA_BITS = {"fp6_e2m3": 3, "fp6_e3m2": 2, "int8": 6}
EMIN = {"fp6_e2m3": 0, "fp6_e3m2": -2}
MAX_NORMAL = {"fp6_e2m3": 7.5, "fp6_e3m2": 28.0, "int8": 127 / 64}
BELOW_FOUR = float(np.nextafter(np.float32(4.0), np.float32(0.0)))  # 3.9999998


def encode(values: list[float], fmt: str) -> tuple[list[int], list[int], list[float]]:
    """Scale codes, element codes and decoded values of one short 1-D tensor."""
    q = quantize_mx(torch.tensor(values, dtype=torch.float32), fmt)
    return q.scales.tolist(), q.codes.tolist(), dequantize_mx(q).tolist()


# hand-computed blocks: MXFP6 E2M3 -------------------------------------------------------------------------------


def test_e2m3_amax_a_power_of_two() -> None:
    # amax 1024 = 2^10 → s = 10 - 2 = 8, code 135; y = x / 256 = 4, -1, 0.375, 0.5
    # 4 = 1.0 * 2^2 → field 3 → 0b11000 = 24; -1 → 8 | 0x20 = 40; 0.375 = 3/8 subnormal → 3; 0.5 = 4/8 → 4
    assert encode([1024.0, -256.0, 96.0, 128.0], "fp6_e2m3") == ([135], [24, 40, 3, 4], [1024.0, -256.0, 96.0, 128.0])


def test_e2m3_amax_just_below_a_power_of_two() -> None:
    # amax 3.75 → floor(log2) = 1 → s = -1 (code 126), not 0: y = 7.5 = max normal, code 31, exact
    assert encode([3.75, 1.0], "fp6_e2m3") == ([126], [31, 16], [3.75, 1.0])  # 1.0 → y 2.0 → field 2 → 16
    # amax 3.9999998 → still s = -1; y = 7.9999995 > 7.5 → saturates to 7.5 (code 31) → 3.75
    assert encode([BELOW_FOUR], "fp6_e2m3") == ([126], [31], [3.75])


def test_e2m3_saturates_what_the_floor_rule_puts_above_the_max_normal() -> None:
    # amax 15.92 = 1.99 * 2^3 → s = 1 (code 128); y = ±7.96 > 7.5 → ±7.5 (codes 31, 63) → ±15.0
    # 15.0 → y 7.5 → 31 exactly; 14.5 → y 7.25, a tie between 7.0 (30) and 7.5 (31) → 30, even → 14.0
    scales, codes, values = encode([15.92, -15.92, 15.0, 14.5], "fp6_e2m3")
    assert (scales, codes) == ([128], [31, 63, 31, 30])
    assert values == [15.0, -15.0, 15.0, 14.0]


def test_e2m3_ties_round_to_even_both_ways() -> None:
    x = [4.75, 1.0625, 1.1875, 2.125, 2.375, 4.25, 0.0625, 0.1875, -1.0625, -0.0625, 1.9375, 3.875]
    scales, codes, values = encode(x, "fp6_e2m3")
    assert scales == [127]  # amax 4.75 → s = 0
    assert codes == [
        26,  # 4.75: tie 4.5 (25) | 5.0 (26) → up to 26
        8,  # 1.0625: tie 1.0 (8) | 1.125 (9) → down to 8
        10,  # 1.1875: tie 1.125 (9) | 1.25 (10) → up to 10
        16,  # 2.125: tie 2.0 (16) | 2.25 (17) → down to 16
        18,  # 2.375: tie 2.25 (17) | 2.5 (18) → up to 18
        24,  # 4.25: tie 4.0 (24) | 4.5 (25) → down to 24
        0,  # 0.0625: tie 0 (0) | 0.125 (1) → down to 0
        2,  # 0.1875: tie 0.125 (1) | 0.25 (2) → up to 2
        40,  # -1.0625: → -1.0 = 8 | 0x20
        32,  # -0.0625: → -0.0, the sign survives (0x20)
        16,  # 1.9375: tie 1.875 (15) | 2.0 (16) → up to 16, carrying into the exponent field
        24,  # 3.875: tie 3.75 (23) | 4.0 (24) → up to 24, carrying into the exponent field
    ]
    assert values == [5.0, 1.0, 1.25, 2.0, 2.5, 4.0, 0.0, 0.25, -1.0, -0.0, 2.0, 4.0]
    assert math.copysign(1.0, values[9]) == -1.0


def test_e2m3_subnormal_elements() -> None:
    # amax 4 → s = 0; subnormal grid k/8: 0.125 → 1, 0.875 → 7, 0.3 → 2.4 steps → 2, 0.44 → 3.52 → 4, 0.05 → 0.4 → 0
    scales, codes, values = encode([4.0, 0.125, 0.875, 0.3, 0.44, 0.05, -0.3], "fp6_e2m3")
    assert (scales, codes) == ([127], [24, 1, 7, 2, 4, 0, 34])
    assert values == [4.0, 0.125, 0.875, 0.25, 0.5, 0.0, -0.25]


def test_e2m3_scale_clamps_at_the_bottom_of_e8m0() -> None:
    # 2^-130 (a float32 subnormal): floor(log2) - 2 = -132 → clamped to -127 (code 0); y = 2^-3 → code 1 → exact
    tiny = 2.0**-130
    assert encode([tiny, -tiny], "fp6_e2m3") == ([0], [1, 33], [tiny, -tiny])


def test_e2m3_near_the_largest_float32() -> None:
    # 3e38: floor(log2) = 127 → s = 125 (code 252); y = 3e38 / 2^125 = 7.05 → 7.0 (code 30) → 7 * 2^125
    assert encode([3e38], "fp6_e2m3") == ([252], [30], [7.0 * 2.0**125])


# hand-computed blocks: MXFP6 E3M2 -------------------------------------------------------------------------------


def test_e3m2_amax_a_power_of_two() -> None:
    # amax 16 = 2^4 → s = 0 (code 127); 16 → field 7 → 28; 1.0 → field 3 → 12; -0.5 → field 2 → 8 | 0x20 = 40;
    # 0.1875 = 3/16 subnormal → 3
    assert encode([16.0, 1.0, -0.5, 0.1875], "fp6_e3m2") == ([127], [28, 12, 40, 3], [16.0, 1.0, -0.5, 0.1875])


def test_e3m2_amax_just_below_a_power_of_two() -> None:
    # amax 3.5 → floor(log2) = 1 → s = -3 (code 124); y = 28 = max normal (31)
    assert encode([3.5], "fp6_e3m2") == ([124], [31], [3.5])
    # amax 3.9999998 → s = -3; y = 31.999998 > 28 → saturates to 28 → 3.5
    assert encode([BELOW_FOUR], "fp6_e3m2") == ([124], [31], [3.5])


def test_e3m2_saturates_what_the_floor_rule_puts_above_the_max_normal() -> None:
    # amax 63.68 = 1.99 * 2^5 → s = 1 (code 128); y = 31.84 > 28 → ±28 (31, 63) → ±56
    assert encode([63.68, -63.68, 40.0], "fp6_e3m2") == ([128], [31, 63, 29], [56.0, -56.0, 40.0])  # 40 → y 20 → 29


def test_e3m2_ties_round_to_even_both_ways() -> None:
    x = [22.0, 18.0, 1.125, 1.375, 0.03125, 0.09375, 0.21875, -1.125]
    scales, codes, values = encode(x, "fp6_e3m2")
    assert scales == [127]  # amax 22 → floor(log2) 4 → s = 0
    assert codes == [
        30,  # 22: tie 20 (29) | 24 (30) → up to 30
        28,  # 18: tie 16 (28) | 20 (29) → down to 28
        12,  # 1.125: tie 1.0 (12) | 1.25 (13) → down to 12
        14,  # 1.375: tie 1.25 (13) | 1.5 (14) → up to 14
        0,  # 0.03125: tie 0 (0) | 0.0625 (1) → down to 0
        2,  # 0.09375: tie 0.0625 (1) | 0.125 (2) → up to 2
        4,  # 0.21875: tie 0.1875 (3, last subnormal) | 0.25 (4, first normal) → 4
        44,  # -1.125 → -1.0 = 12 | 0x20
    ]
    assert values == [24.0, 16.0, 1.0, 1.5, 0.0, 0.125, 0.25, -1.0]


def test_e3m2_subnormal_elements() -> None:
    # amax 16 → s = 0; subnormal grid k/16: 0.0625 → 1, 0.1 → 1.6 steps → 2, 0.02 → 0.32 → 0
    scales, codes, values = encode([16.0, 0.0625, 0.1, 0.02, -0.1], "fp6_e3m2")
    assert (scales, codes) == ([127], [28, 1, 2, 0, 34])  # -0.1 → -0.125 = 2 | 0x20
    assert values == [16.0, 0.0625, 0.125, 0.0, -0.125]


# hand-computed blocks: MXINT8 -----------------------------------------------------------------------------------


def test_int8_amax_a_power_of_two() -> None:
    # amax 8 → s = 3 (code 130); k = round(x * 2^(6-3)) = 8x: 64, 8, -24, 1
    assert encode([8.0, 1.0, -3.0, 0.125], "int8") == ([130], [64, 8, -24, 1], [8.0, 1.0, -3.0, 0.125])


def test_int8_amax_just_below_a_power_of_two() -> None:
    # amax 127/64 → s = 0 (code 127), k = 127 exactly; 1.9999999 → s = 0, 127.99999 → 128 → clamped to 127
    assert encode([127 / 64], "int8") == ([127], [127], [127 / 64])
    assert encode([BELOW_FOUR / 2], "int8") == ([127], [127], [127 / 64])


def test_int8_saturates_symmetrically() -> None:
    # amax 15.992 = 1.999 * 2^3 → s = 3; ±127.936 → ±128 → clamped to +127 and to -127 (not -128) → ±15.875
    assert encode([15.992, -15.992], "int8") == ([130], [127, -127], [15.875, -15.875])


def test_int8_ties_round_to_even_both_ways() -> None:
    # amax 1 → s = 0, k = round(64x): 2.5 → 2 (down), 3.5 → 4 (up), 0.5 → 0, 1.5 → 2, -2.5 → -2; 0.007 → 0.448 → 0
    x = [1.0, 2.5 / 64, 3.5 / 64, 0.5 / 64, 1.5 / 64, -2.5 / 64, 0.007]
    assert encode(x, "int8") == ([127], [64, 2, 4, 0, 2, -2, 0], [1.0, 2 / 64, 4 / 64, 0.0, 2 / 64, -2 / 64, 0.0])


def test_int8_near_the_largest_float32() -> None:
    # 3e38 → s = 127 (code 254); 3e38 * 2^(6-127) = 112.8 → 113 → 113 * 2^121
    assert encode([3e38], "int8") == ([254], [113], [113 * 2.0**121])


# blocks shared by all formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", MX_FORMATS)
def test_all_zero_block_gets_the_smallest_scale(fmt: str) -> None:
    q = quantize_mx(torch.zeros(2, 32), fmt)
    assert q.scales.tolist() == [[0], [0]]
    assert not q.codes.any()
    assert torch.equal(dequantize_mx(q), torch.zeros(2, 32))


@pytest.mark.parametrize("fmt", MX_FORMATS)
@pytest.mark.parametrize("poison", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_make_their_block_nan(fmt: str, poison: float) -> None:
    x = torch.ones(96)
    x[40] = poison  # block 1 of 3
    q = quantize_mx(x, fmt)
    assert q.scales.tolist() == [127 - EMAX[fmt], 0xFF, 127 - EMAX[fmt]]
    assert not q.codes[32:64].any()  # codes of a NaN block are 0
    values = dequantize_mx(q)
    assert values[32:64].isnan().all()
    assert torch.equal(values[:32], x[:32]) and torch.equal(values[64:], x[64:])


@pytest.mark.parametrize("fmt", MX_FORMATS)
def test_partial_last_block(fmt: str) -> None:
    # 40 elements: block 0 = 32 x 1.0, block 1 = 8 elements with amax 0.5 (its own scale, padding ignored)
    x = torch.cat([torch.ones(32), torch.tensor([0.5, -0.25, 0, 0, 0, 0, 0, 0.0625])])
    q = quantize_mx(x, fmt)
    assert q.codes.shape == (40,) and q.scales.shape == (2,)
    # amax 1 → s = -emax; amax 0.5 → s = -1 - emax
    assert q.scales.tolist() == [127 - EMAX[fmt], 126 - EMAX[fmt]]
    assert torch.equal(dequantize_mx(q), x)  # every value is on the grid of its block


def test_negative_values_mirror_positive_ones() -> None:
    x = torch.randn(8, 64)
    for fmt in MX_FORMATS:
        assert torch.equal(dequantize_mx(quantize_mx(-x, fmt)), -dequantize_mx(quantize_mx(x, fmt)))


# the decode tables against ml_dtypes -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FP6)
def test_fp6_element_values_match_ml_dtypes(fmt: str) -> None:
    expected = np.arange(64, dtype=np.uint8).view(ML_DTYPE[fmt]).astype(np.float32)
    assert element_values(fmt).view(np.int32).tolist() == expected.view(np.int32).tolist()  # -0 included


def test_e8m0_values_match_ml_dtypes() -> None:
    expected = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    np.testing.assert_array_equal(e8m0_values(), expected)  # NaN at 0xFF on both sides


# properties -------------------------------------------------------------------------------------------------------


@st.composite
def float_tensors(draw: st.DrawFn, allow_nan: bool = False) -> tuple[np.ndarray, int]:
    """A float32 array of 1-3 dims (up to ~600 elements) and a block axis.

    Values mix any float32 (subnormals to 3.4e38), grid points and ties near 1, values just below a power of two
    (where the floor rule saturates), and the 1e-30 and 1e30 ranges; or one magnitude 2^k (k in [-140, 120])
    times values in [-4, 4], so whole blocks share an extreme binade.
    """
    dims = draw(st.lists(st.integers(1, 70), min_size=1, max_size=3).filter(lambda s: math.prod(s) <= 600))
    axis = draw(st.integers(-len(dims), len(dims) - 1))
    mixed = st.one_of(
        st.floats(width=32, allow_nan=allow_nan, allow_infinity=allow_nan),
        st.floats(-4.0, 4.0, width=32).map(lambda v: round(v * 16) / 16),
        st.builds(
            lambda sign, k, e: sign * (2 - 2.0**-k) * 2.0**e,
            st.sampled_from([-1.0, 1.0]),
            st.integers(1, 23),
            st.integers(-120, 120),
        ),
        st.floats(-(2.0**-97), 2.0**-97, width=32),  # ±6.3e-30
        st.floats(-(2.0**101), 2.0**101, width=32),  # ±2.5e30
    )
    if draw(st.booleans()):
        return draw(hnp.arrays(np.float32, dims, elements=mixed)), axis
    unit = draw(hnp.arrays(np.float32, dims, elements=st.floats(-4.0, 4.0, width=32)))
    return np.ldexp(unit.astype(np.float64), draw(st.integers(-140, 120))).astype(np.float32), axis


def reference(x: np.ndarray, fmt: str, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independent float64 model of MX quantization: (scale exponents s, elements y = x / 2^s, decoded values).

    Scale from frexp, elements rounded by ml_dtypes' FP6 cast (round to nearest even) after clipping to the max
    normal, or by rint for INT8.
    """
    moved = np.moveaxis(x.astype(np.float64), axis, -1)
    length = moved.shape[-1]
    padded = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, -length % 32)])
    blocks = padded.reshape(*moved.shape[:-1], -1, 32)
    amax = np.abs(blocks).max(axis=-1)
    _, exponent = np.frexp(amax)  # amax = f * 2^exponent with f in [0.5, 1)
    s = np.where(amax > 0, exponent - 1 - EMAX[fmt], -127).clip(-127, 127)
    y = blocks / np.ldexp(1.0, s)[..., None]
    if fmt == "int8":
        q = np.clip(np.rint(y * 64), -127, 127) / 64
    else:
        q = np.clip(y, -MAX_NORMAL[fmt], MAX_NORMAL[fmt]).astype(ML_DTYPE[fmt]).astype(np.float64)
    values = (q * np.ldexp(1.0, s)[..., None]).reshape(padded.shape)[..., :length]
    return s, y, np.moveaxis(values, -1, axis).astype(np.float32)


@pytest.mark.parametrize("fmt", MX_FORMATS)
@given(case=float_tensors())
def test_matches_the_independent_reference(fmt: str, case: tuple[np.ndarray, int]) -> None:
    x, axis = case
    q = quantize_mx(torch.from_numpy(x), fmt, axis)
    s, _, expected = reference(x, fmt, axis)
    np.testing.assert_array_equal(np.moveaxis(q.scales.numpy(), q.axis, -1), s + 127)
    np.testing.assert_array_equal(dequantize_mx(q).numpy(), expected)


@pytest.mark.parametrize("fmt", MX_FORMATS)
@given(case=float_tensors())
def test_error_is_within_half_an_element_ulp(fmt: str, case: tuple[np.ndarray, int]) -> None:
    """Per element y = x / 2^s: |q - y| <= ulp(y) / 2 when |y| <= max normal (round to nearest), where
    ulp(y) = 2^(max(floor(log2|y|), emin) - m) for FP6 and 2^-6 for INT8; above the max normal (only the top
    binade, the floor rule's overshoot) the saturation error is below one top-binade step 2^(emax - m)."""
    x, axis = case
    s, y, _ = reference(x, fmt, axis)
    decoded = dequantize_mx(quantize_mx(torch.from_numpy(x), fmt, axis)).numpy().astype(np.float64)
    moved = np.moveaxis(decoded, axis, -1)
    padded = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, -moved.shape[-1] % 32)])
    q = padded.reshape(y.shape) / np.ldexp(1.0, s)[..., None]
    m = MANTISSA_BITS[fmt]
    if fmt == "int8":
        ulp = np.full_like(y, 2.0**-m)
    else:
        _, exponent = np.frexp(np.abs(y))
        ulp = np.ldexp(1.0, np.maximum(exponent - 1, EMIN[fmt]) - m)
    error = np.abs(q - y)
    saturated = np.abs(y) > MAX_NORMAL[fmt]
    assert (error[~saturated] <= ulp[~saturated] / 2).all()
    assert (error[saturated] < 2.0 ** (EMAX[fmt] - m)).all()


@pytest.mark.parametrize("fmt", MX_FORMATS)
@given(case=float_tensors(allow_nan=True))
def test_quantizing_decoded_values_is_idempotent(fmt: str, case: tuple[np.ndarray, int]) -> None:
    x, axis = case
    q = quantize_mx(torch.from_numpy(x), fmt, axis)
    again = quantize_mx(dequantize_mx(q), fmt, axis)
    assert torch.equal(again.codes, q.codes) and torch.equal(again.scales, q.scales)


@given(codes=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=3, max_side=37), elements=st.integers(0, 63)))
def test_pack_unpack_round_trip(codes: np.ndarray) -> None:
    packed = pack_fp6(torch.from_numpy(codes))
    assert packed.shape == (*codes.shape[:-1], 3 * math.ceil(codes.shape[-1] / 4))
    assert torch.equal(unpack_fp6(packed, codes.shape[-1]), torch.from_numpy(codes))


def test_pack_bit_order_is_little_endian() -> None:
    # w = 1 | 2 << 6 | 3 << 12 | 4 << 18 = 0x103081 → bytes 0x81, 0x30, 0x10; a partial group is zero-padded
    assert pack_fp6(torch.tensor([1, 2, 3, 4], dtype=torch.uint8)).tolist() == [0x81, 0x30, 0x10]
    assert pack_fp6(torch.tensor([63, 63, 63, 63, 5], dtype=torch.uint8)).tolist() == [255, 255, 255, 5, 0, 0]


@pytest.mark.parametrize("fmt", MX_FORMATS)
@given(rows=st.integers(1, 5), blocks=st.integers(1, 6))
def test_storage_bits_per_element(fmt: str, rows: int, blocks: int) -> None:
    q = quantize_mx(torch.randn(rows, 32 * blocks), fmt)
    codes = pack_fp6(q.codes) if fmt in FP6 else q.codes
    stored_bits = 8 * (codes.numel() * codes.element_size() + q.scales.numel())
    assert stored_bits / q.codes.numel() == mx_storage_bits_per_element(fmt) == (8.25 if fmt == "int8" else 6.25)


# API details --------------------------------------------------------------------------------------------------------


def test_kv_cache_shape_blocks_along_head_dim() -> None:
    cache = torch.randn(2, 3, 5, 48)  # [b, h, ctx, head_dim]: 48 = one full and one partial block per row
    q = quantize_mx(cache, "int8")
    assert q.codes.shape == cache.shape and q.codes.dtype == torch.int8
    assert q.scales.shape == (2, 3, 5, 2) and q.axis == 3
    moved = quantize_mx(cache.transpose(1, 3).contiguous(), "int8", axis=1)
    assert torch.equal(moved.codes.transpose(1, 3), q.codes)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_fake_quantize_keeps_the_dtype(dtype: torch.dtype) -> None:
    x = torch.randn(4, 40).to(dtype)
    fake = fake_quantize_mx(x, "fp6_e2m3")
    assert fake.dtype == dtype
    assert torch.equal(fake, dequantize_mx(quantize_mx(x.float(), "fp6_e2m3")).to(dtype))


def test_bad_arguments_are_rejected() -> None:
    x = torch.randn(4, 32)
    with pytest.raises(InvalidArgumentError, match="unknown MX format 'fp4'"):
        quantize_mx(x, "fp4")
    with pytest.raises(InvalidArgumentError, match="float64"):
        quantize_mx(x.double())
    with pytest.raises(InvalidArgumentError, match="block axis 2"):
        quantize_mx(x, axis=2)
    with pytest.raises(InvalidArgumentError, match="6-bit codes"):
        pack_fp6(torch.tensor([64], dtype=torch.uint8))
    with pytest.raises(InvalidArgumentError, match="do not pack"):
        unpack_fp6(torch.zeros(6, dtype=torch.uint8), 9)
    q = quantize_mx(x)
    with pytest.raises(InvalidArgumentError, match="scales must be"):
        MXTensor(codes=q.codes, scales=q.scales[:2], shape=q.shape, fmt=q.fmt, axis=q.axis)
    with pytest.raises(InvalidArgumentError, match="int8 codes must be"):
        MXTensor(codes=q.codes, scales=q.scales, shape=q.shape, fmt="int8", axis=q.axis)


# ONNX --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FP6)
@pytest.mark.parametrize(("rows", "cols", "opset"), [(7, 77, 18), (4, 64, 18), (3, 3, 21)])
def test_onnx_function_reproduces_dequantize_bit_exactly(fmt: str, rows: int, cols: int, opset: int) -> None:
    weight = torch.randn(rows, cols) * torch.logspace(-20, 20, rows).unsqueeze(1)
    weight[0, cols // 2] = math.nan
    q = quantize_mx(weight, fmt)
    packed, scales = pack_mxfp6_weight(q)
    model = ir.to_proto(dequantize_mxfp6_model(rows, cols, fmt, opset))
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (decoded,) = session.run(None, {"packed": packed.numpy(), "scales": scales.numpy()})
    expected = dequantize_mx(q).numpy()
    assert decoded.shape == (rows, cols) and decoded.dtype == np.float32
    assert np.array_equal(np.isnan(decoded), np.isnan(expected))
    finite = ~np.isnan(expected)
    assert np.array_equal(decoded[finite].view(np.int32), expected[finite].view(np.int32))  # bits, sign of zero too


def test_only_2d_fp6_weights_pack_for_onnx() -> None:
    with pytest.raises(InvalidArgumentError, match="MXFP6"):
        pack_mxfp6_weight(quantize_mx(torch.randn(2, 32), "int8"))
    with pytest.raises(InvalidArgumentError, match="axis 1"):
        pack_mxfp6_weight(quantize_mx(torch.randn(32, 2), axis=0))
