"""int8 quantization kernels: hand-computed cases, exact integer accumulation, and properties against fp64."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.numerics import int8
from qeff_compiler.numerics.int8 import (
    MAX_IN_FEATURES,
    linear_w8a8,
    linear_w8a16,
    prepare_w8a16,
    quantize_activation_per_tensor,
    quantize_weight_per_channel,
    smoothing_factors,
)

#: fp32 unit roundoff
U = 2.0**-24
#: smallest positive fp32 subnormal
TINY = 2.0**-149


def codes(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int8)


def random_codes(*shape: int, seed: int = 0, low: int = -127) -> torch.Tensor:
    return torch.randint(low, 128, shape, dtype=torch.int8, generator=torch.Generator().manual_seed(seed))


def w8a16_reference(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return x.double() @ (qweight.double() * scales.double()[:, None]).T


def w8a16_error_bound(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Per-element error bound of the fixed-point W8A16 kernel.

    Rounding x to the row's unit 2^(e-30) <= amax · 2^-29 costs at most sum|q| · amax · 2^-30. The four digit sums
    go through at most 5 fp32 roundings (int32 -> fp32, times the weight scale, a 4-term sum); with balanced digits
    sum_l |digit_l| · 256^l <= 7|v| + 2^18, so those roundings cost at most 5.01u · sum|q| · (7|x| + amax · 2^-11).
    """
    rows = x.double().reshape(-1, x.shape[-1])
    amax = rows.abs().amax(dim=1, keepdim=True)
    q = qweight.double().abs()
    bound = 40 * U * (rows.abs() @ q.T) + amax * q.sum(dim=1) * 2.0**-29
    return (bound * scales.double()).reshape(*x.shape[:-1], -1)


def fp16_activations(rows: int, in_features: int, seed: int, spread: int) -> torch.Tensor:
    """fp16-representable activations whose magnitudes span 2^±spread, with one outlier channel and one zero."""
    gen = torch.Generator().manual_seed(seed)
    exponents = torch.randint(-spread, spread + 1, (rows, in_features), generator=gen).float()
    x = torch.randn(rows, in_features, generator=gen) * torch.exp2(exponents)
    x[:, 0] *= 64
    x[:, -1] = 0
    return x.clamp(-60000, 60000).half().float()


# --- weight quantization ---------------------------------------------------------------------------------------


def test_weight_codes_round_half_to_even() -> None:
    weight = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5], [254, 1, 3, 5, -3, 0, 2, 7]])
    qweight, scales = quantize_weight_per_channel(weight)
    assert scales.tolist() == [1.0, 2.0]
    assert torch.equal(qweight, torch.stack([codes(127, 0, 2, 2, 0, -2, -2, 126), codes(127, 0, 2, 2, -2, 0, 1, 4)]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_quantize_like_their_fp32_values(dtype: torch.dtype) -> None:
    weight = torch.randn(6, 40, generator=torch.Generator().manual_seed(2)).to(dtype)
    for got, want in zip(quantize_weight_per_channel(weight), quantize_weight_per_channel(weight.float())):
        assert torch.equal(got, want)


def test_zero_and_underflowing_rows_get_scale_one() -> None:
    # 1e-44 is ~7 · 2^-149: divided by 127 it underflows to 0, like an all-zero row
    qweight, scales = quantize_weight_per_channel(torch.tensor([[0.0, 0.0, 0.0], [1e-44, -1e-44, 0.0]]))
    assert scales.tolist() == [1.0, 1.0]
    assert not qweight.any()


def test_codes_saturate_when_the_scale_is_subnormal() -> None:
    # amax = 257 · 2^-149, scale = fp32(257/127 · 2^-149) = 2 · 2^-149, quotient 128.5 -> 128 -> clamped to 127
    qweight, scales = quantize_weight_per_channel(torch.tensor([[257 * TINY, -257 * TINY, 3 * TINY]]))
    assert scales.tolist() == [2 * TINY]
    assert torch.equal(qweight, codes(127, -127, 2)[None])


finite_weights = st.floats(-1e6, 1e6, width=32, allow_subnormal=False).filter(lambda v: v == 0 or abs(v) > 1e-30)


weight_rows = st.integers(1, 4).flatmap(
    lambda cols: st.lists(st.lists(finite_weights, min_size=cols, max_size=cols), min_size=1, max_size=5)
)


@given(weight_rows)
def test_weight_error_is_at_most_half_a_step(rows: list[list[float]]) -> None:
    weight = torch.tensor(rows, dtype=torch.float32)
    qweight, scales = quantize_weight_per_channel(weight)
    amax = weight.abs().amax(dim=1)
    assert torch.equal(scales, torch.where(amax == 0, 1.0, amax / 127))
    error = (weight.double() - qweight.double() * scales.double()[:, None]).abs()
    assert (error <= scales.double()[:, None] / 2).all()
    assert qweight.abs().max() <= 127
    peak = qweight.gather(1, weight.abs().argmax(dim=1, keepdim=True)).squeeze(1)
    assert torch.equal(peak.abs(), torch.where(amax == 0, 0, 127).to(torch.int8))


# --- activation quantization -------------------------------------------------------------------------------------


def test_activation_codes_round_half_to_even_and_saturate() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, -2.5, 126.5, 200.0, -1000.0, float("inf"), float("-inf")])
    assert torch.equal(quantize_activation_per_tensor(x, 1.0), codes(0, 2, 2, -2, 126, 127, -127, 127, -127))


def test_activation_scale_is_its_fp32_value() -> None:
    # fp32(1/3) = 0.3333333433, so 0.5 / scale = 1.49999996 -> 1; with the fp64 1/3 it would be 1.5000000000000002 -> 2
    assert quantize_activation_per_tensor(torch.tensor([0.5]), 1 / 3).tolist() == [1]


exact_ties = st.builds(
    lambda k, odd, power: ((2 * k + 1) * odd * 2.0 ** (power - 1), odd * 2.0**power),
    st.integers(-130, 130), st.integers(0, 1023).map(lambda i: 2 * i + 1), st.integers(-60, 60),
)
any_pair = st.tuples(st.floats(-(2.0**100), 2.0**100, width=32), st.floats(2.0**-100, 2.0**100, width=32))


@given(st.one_of(exact_ties, any_pair))
def test_activation_codes_round_the_exact_quotient(pair: tuple[float, float]) -> None:
    value, scale = pair
    quotient = Fraction(value) / Fraction(scale)
    expected = max(-127, min(127, round(quotient)))  # Fraction rounds half to even
    assert quantize_activation_per_tensor(torch.tensor([value]), scale).tolist() == [expected]


# --- W8A8 ---------------------------------------------------------------------------------------------------------


def test_w8a8_accumulates_exactly_past_2_24() -> None:
    """4096 products of 127 · 127 sum to 66,064,384 > 2^24; a sequential fp32 sum drifts away from it."""
    xq = torch.full((1, 4096), 127, dtype=torch.int8)
    qweight = torch.stack([torch.full((4096,), 127, dtype=torch.int8), torch.full((4096,), -127, dtype=torch.int8)])
    y = linear_w8a8(xq, 1.0, qweight, torch.ones(2))
    assert y.tolist() == [[66_064_384.0, -66_064_384.0]]
    assert np.cumsum(np.full(4096, 16129, np.float32), dtype=np.float32)[-1] != 66_064_384


@pytest.mark.parametrize("in_features", [1, 7, 1024, 1040, 4096, 5000])
def test_w8a8_is_the_exact_sum_rounded_once(in_features: int) -> None:
    xq = random_codes(2, 3, in_features, seed=in_features, low=-128)
    qweight = random_codes(5, in_features, seed=in_features + 1, low=-128)
    w_scales = torch.rand(5, generator=torch.Generator().manual_seed(in_features)) + 0.01
    x_scale = 0.0123
    acc = xq.long() @ qweight.long().T
    assert torch.equal(linear_w8a8(xq, 1.0, qweight, torch.ones(5)), acc.float())  # random sums stay below 2^24
    y = linear_w8a8(xq, x_scale, qweight, w_scales)
    assert y.shape == (2, 3, 5)
    x_fp32 = Fraction(float(np.float32(x_scale)))
    for got, total, w_scale in zip(y.flatten().tolist(), acc.flatten().tolist(), w_scales.repeat(6).tolist()):
        exact = total * x_fp32 * Fraction(w_scale)
        assert abs(Fraction(got) - exact) <= Fraction(abs(float(np.spacing(np.float32(got))))) / 2


def test_w8a8_ignores_the_strides_of_size_one_dimensions() -> None:
    """A decode row may reach the kernel with stride 0 on its size-1 dimension (as Inductor emits it)."""
    row = random_codes(1, 64, seed=5)
    qweight = random_codes(8, 64, seed=6)
    expected = (row.long() @ qweight.long().T).float()
    assert torch.equal(linear_w8a8(row.as_strided((1, 64), (0, 1)), 1.0, qweight, torch.ones(8)), expected)
    assert torch.equal(linear_w8a8(row.expand(1, 1, 64), 1.0, qweight, torch.ones(8)), expected[None])


def test_w8a8_with_quantized_activations_matches_the_dequantized_product() -> None:
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    qweight, w_scales = quantize_weight_per_channel(torch.randn(8, 64, generator=torch.Generator().manual_seed(1)))
    x_scale = x.abs().max().item() / 127
    xq = quantize_activation_per_tensor(x, x_scale)
    reference = (xq.double() * float(np.float32(x_scale))) @ (qweight.double() * w_scales.double()[:, None]).T
    torch.testing.assert_close(linear_w8a8(xq, x_scale, qweight, w_scales).double(), reference, rtol=2 * U, atol=0)


# --- W8A16 --------------------------------------------------------------------------------------------------------


def test_fast_kernels_are_exact_on_this_host() -> None:
    """The other tests exercise the oneDNN fast paths only if these hold (AVX-512 VNNI)."""
    assert int8._qlinear_is_exact() and int8._int_mm_is_exact()


@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 300), st.integers(1, 24)),
    spread=st.integers(0, 12),
    seed=st.integers(0, 2**16),
)
def test_w8a16_is_within_fp32_noise_of_fp64(shape: tuple[int, int, int, int], spread: int, seed: int) -> None:
    batch, rows, in_features, out_features = shape
    x = fp16_activations(batch * rows, in_features, seed, spread).reshape(batch, rows, in_features)
    qweight = random_codes(out_features, in_features, seed=seed)
    scales = torch.rand(out_features, generator=torch.Generator().manual_seed(seed)) * 0.1 + 1e-4
    y = linear_w8a16(x, qweight, scales)
    assert y.shape == (batch, rows, out_features) and y.dtype == torch.float32
    assert ((y.double() - w8a16_reference(x, qweight, scales)).abs() <= w8a16_error_bound(x, qweight, scales)).all()


def test_w8a16_is_exact_for_fp16_values_within_2_19_of_the_row_max() -> None:
    """With amax = 2^14 the unit is 2^-15, the ulp of fp16 values in [2^-5, 2^-4); 16 inputs keep every digit sum
    and the 4-term sum below 2^24, so nothing is rounded at all."""
    gen = torch.Generator().manual_seed(7)
    small = (1 + torch.randint(0, 1024, (15,), generator=gen) / 1024) * 2.0**-5
    x = torch.cat([torch.tensor([2.0**14]), small * (torch.randint(0, 2, (15,), generator=gen) * 2 - 1)])[None]
    qweight = random_codes(9, 16, seed=7)
    qweight[:, 0] = 0  # the outlier carries nothing, so the result rests on the small values alone
    y = linear_w8a16(x, qweight, torch.ones(9))
    assert torch.equal(y.double(), x.double() @ qweight.double().T)


@pytest.mark.parametrize("magnitude", [1e-35, 1e-20, 1.0, 1e30])
def test_w8a16_handles_fp32_rows_of_any_magnitude(magnitude: float) -> None:
    x = torch.randn(3, 200, generator=torch.Generator().manual_seed(0)) * magnitude
    qweight, scales = random_codes(16, 200), torch.full((16,), 0.01)
    error = (linear_w8a16(x, qweight, scales).double() - w8a16_reference(x, qweight, scales)).abs()
    # rows below 2^-97 use the unit 2^-127: rounding x costs up to 2^-128 per element
    floor = qweight.double().abs().sum(dim=1) * 0.01 * 2.0**-128
    assert (error <= w8a16_error_bound(x, qweight, scales) + floor).all()


def test_w8a16_zero_and_empty_inputs() -> None:
    prepared = prepare_w8a16(random_codes(6, 10), torch.ones(6))
    assert torch.equal(prepared(torch.zeros(2, 10)), torch.zeros(2, 6))
    assert prepared(torch.zeros(0, 10)).shape == (0, 6)


def test_w8a16_non_finite_activations_propagate_like_the_reference() -> None:
    qweight = random_codes(6, 10)
    qweight[0] = 0  # inf · 0 is NaN in the reference
    scales = torch.full((6,), 0.5)
    x = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    x[0, 3], x[1, 5], x[2, 1] = float("inf"), float("nan"), float("-inf")
    y, reference = linear_w8a16(x, qweight, scales).double(), w8a16_reference(x, qweight, scales)
    assert torch.equal(y.isnan(), reference.isnan()) and torch.equal(y.isinf(), reference.isinf())
    finite = reference.isfinite()
    torch.testing.assert_close(y[finite], reference[finite], rtol=1e-6, atol=0)


def test_fp64_fallbacks_give_the_same_results(monkeypatch: pytest.MonkeyPatch) -> None:
    x = fp16_activations(5, 300, seed=3, spread=6)
    qweight, scales = random_codes(20, 300, seed=3), torch.rand(20) + 0.01
    xq = random_codes(5, 300, seed=4)
    fast_w8a8 = linear_w8a8(xq, 0.5, qweight, scales)
    monkeypatch.setattr(int8, "_qlinear_is_exact", lambda: False)
    monkeypatch.setattr(int8, "_int_mm_is_exact", lambda: False)
    prepared = prepare_w8a16(qweight, scales)
    assert prepared.packed is None
    error = (prepared(x).double() - w8a16_reference(x, qweight, scales)).abs()
    assert (error <= w8a16_error_bound(x, qweight, scales)).all()
    assert torch.equal(linear_w8a8(xq, 0.5, qweight, scales), fast_w8a8)


# --- SmoothQuant ----------------------------------------------------------------------------------------------------


def test_smoothing_factors_by_hand() -> None:
    act_absmax = torch.tensor([4.0, 0.0, 1.0, 9.0])
    weight = torch.tensor([[1.0, -2.0, 0.0, 3.0], [0.5, 1.0, 0.0, -1.0]])  # column maxima 1, 2, 0, 3
    assert smoothing_factors(act_absmax, weight, 0.5).tolist() == pytest.approx([2.0, 1.0, 1.0, 3**0.5])
    assert smoothing_factors(act_absmax, weight, 1.0).tolist() == [4.0, 1.0, 1.0, 9.0]
    assert smoothing_factors(act_absmax, weight, 0.0).tolist() == pytest.approx([1.0, 1.0, 1.0, 1 / 3])


@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 64), st.integers(1, 8)),
    alpha=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_smoothing_keeps_the_product(shape: tuple[int, int, int], alpha: float, seed: int) -> None:
    rows, in_features, out_features = shape
    gen = torch.Generator().manual_seed(seed)
    channel_scale = torch.exp2(torch.randint(-8, 9, (in_features,), generator=gen).float())
    x = torch.randn(rows, in_features, generator=gen) * channel_scale
    weight = torch.randn(out_features, in_features, generator=gen)
    s = smoothing_factors(x.abs().amax(dim=0), weight, alpha)
    smoothed, plain = F.linear(x / s, weight * s).double(), F.linear(x, weight).double()
    # each side is within gamma_(K+2) · sum|x||w| of the exact product (K products, one division, one multiplication)
    bound = 2 * (in_features + 2) * U * (x.double().abs() @ weight.double().abs().T) * (1 + 1e-6)
    assert ((smoothed - plain).abs() <= bound).all()


# --- argument checks ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: quantize_weight_per_channel(torch.ones(3)),
        lambda: quantize_weight_per_channel(torch.ones(2, 3, dtype=torch.int32)),
        lambda: quantize_weight_per_channel(torch.ones(0, 3)),
        lambda: quantize_weight_per_channel(torch.tensor([[1.0], [float("inf")]])),
        lambda: quantize_activation_per_tensor(torch.ones(3), 0.0),
        lambda: quantize_activation_per_tensor(torch.ones(3), -1.0),
        lambda: quantize_activation_per_tensor(torch.ones(3), float("nan")),
        lambda: quantize_activation_per_tensor(torch.ones(3), 1e-50),  # 0 in fp32
        lambda: quantize_activation_per_tensor(torch.ones(3), 1e39),  # inf in fp32
        lambda: quantize_activation_per_tensor(torch.tensor([1.0, float("nan")]), 1.0),
        lambda: quantize_activation_per_tensor(torch.ones(3, dtype=torch.int8), 1.0),
        lambda: prepare_w8a16(torch.ones(2, 3), torch.ones(2)),
        lambda: prepare_w8a16(random_codes(2, 3), torch.ones(3)),
        lambda: prepare_w8a16(random_codes(2, 3), torch.ones(2, dtype=torch.float64)),
        lambda: prepare_w8a16(random_codes(2, 3), torch.tensor([1.0, 0.0])),
        lambda: prepare_w8a16(torch.zeros(1, MAX_IN_FEATURES + 1, dtype=torch.int8), torch.ones(1)),
        lambda: prepare_w8a16(random_codes(2, 3), torch.ones(2))(torch.ones(4)),
        lambda: prepare_w8a16(random_codes(2, 3), torch.ones(2))(torch.ones(3, dtype=torch.int8)),
        lambda: prepare_w8a16(random_codes(2, 3), torch.ones(2))(torch.tensor(1.0)),
        lambda: linear_w8a8(torch.ones(1, 3), 1.0, random_codes(2, 3), torch.ones(2)),
        lambda: linear_w8a8(random_codes(1, 3), 0.0, random_codes(2, 3), torch.ones(2)),
        lambda: linear_w8a8(random_codes(1, 4), 1.0, random_codes(2, 3), torch.ones(2)),
        lambda: smoothing_factors(torch.ones(3), torch.ones(2, 3), 1.5),
        lambda: smoothing_factors(torch.ones(2), torch.ones(2, 3), 0.5),
        lambda: smoothing_factors(torch.tensor([1.0, -1.0, 1.0]), torch.ones(2, 3), 0.5),
        lambda: smoothing_factors(torch.ones(3), torch.ones(3), 0.5),
    ],
)
def test_bad_arguments_raise(call) -> None:
    with pytest.raises(InvalidArgumentError):
        call()


def test_errors_name_the_offending_value() -> None:
    with pytest.raises(InvalidArgumentError, match=r"\[2, 5\]"):
        prepare_w8a16(random_codes(4, 3), torch.ones(4))(torch.ones(2, 5))
    with pytest.raises(InvalidArgumentError, match=r"at \[2\]"):
        prepare_w8a16(random_codes(4, 3), torch.tensor([1.0, 1.0, 0.0, 1.0]))
    with pytest.raises(InvalidArgumentError, match="rows \\[1\\]"):
        quantize_weight_per_channel(torch.tensor([[1.0], [float("nan")]]))
