"""kv-cache{dtype=...}: the MXINT8 cache (op, pass, ONNX function and its MXINT8 builder) and the fp16 cache option.

The MXINT8 hand-picked blocks use INT8 elements k/64 (k in [-127, 127]) times 2^s, s = floor(log2(amax)).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import onnxscript
import pytest
import torch

import qeff_compiler as qc
from qeff_compiler.backends.onnx_export import export_onnx
from qeff_compiler.data import TINY_MPT
from qeff_compiler.errors import PassOptionError
from qeff_compiler.ir.interpret import HostExecutor
from qeff_compiler.ir.ops import ATTENTION_KV, mpt_attention_kv
from qeff_compiler.ir.program import Program, TensorSpec
from qeff_compiler.numerics.mx import fake_quantize_mx
from qeff_compiler.numerics.mx_onnx import MIN_OPSET, fake_quantize_mxint8
from qeff_compiler.passes import build_passes
from tests.conftest import random_model, tiny_config

BATCH, SEQ_LEN, CTX_LEN = 2, 4, 16
RAGGED = [[5, 6, 7, 8], [3, 4, -1, -1]]  # second row: two tokens, then padding
MXINT8 = f"kv-cache{{ctx_len={CTX_LEN},dtype=mxint8}}"
#: head_dim 40: one whole block and one zero-padded partial block per token and head
HEAD_DIM_40 = tiny_config(n_heads=2, d_model=80)


def _session(model: bytes | str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # tiny graphs; the machine is shared
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


# the op ------------------------------------------------------------------------------------------------------------


def _run_op(
    head_dim: int, fp16: bool, kv_cache_format: str | None, cache_dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """The op on seeded inputs (2 heads, ragged positions, a random past); returns (past keys, past values,
    updated keys, updated values)."""
    generator = torch.Generator().manual_seed(head_dim)
    heads, d_model = 2, 2 * head_dim
    hidden = torch.randn(BATCH, SEQ_LEN, d_model, generator=generator)
    wqkv = torch.randn(3 * d_model, d_model, generator=generator) / d_model**0.5
    out_proj = torch.randn(d_model, d_model, generator=generator) / d_model**0.5
    past = [torch.randn(BATCH, heads, CTX_LEN, head_dim, generator=generator).to(cache_dtype) for _ in range(2)]
    _, keys, values = mpt_attention_kv(
        hidden, wqkv, out_proj, torch.tensor([0.5, 0.25]), torch.tensor(RAGGED), *past,
        n_heads=heads, softmax_scale=head_dim**-0.5, clip_qkv=None, fp16_activations=fp16,
        kv_cache_format=kv_cache_format,
    )  # fmt: skip
    return past[0], past[1], keys, values


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("head_dim", [8, 64], ids=["partial-block", "two-blocks"])
def test_op_writes_mxint8_values_and_keeps_every_other_slot(head_dim: int, fp16: bool) -> None:
    """The slots written hold fake_quantize_mx of what the op writes without a format (read from an fp32 cache,
    which stores it as it is), in the cache dtype (fp16 with fp16 activations, as `lower-fp16` sets them up,
    without rounding); all other slots, including slot ctx_len - 1 that padding must not alias, keep their bits."""
    cache_dtype = torch.float16 if fp16 else torch.float32
    _, _, *exact = _run_op(head_dim, fp16, None, torch.float32)
    past_key, past_value, *quantized = _run_op(head_dim, fp16, "mxint8", cache_dtype)
    written = {(0, 5), (0, 6), (0, 7), (0, 8), (1, 3), (1, 4)}
    for past, new, stored in zip((past_key, past_value), exact, quantized, strict=True):
        assert stored.dtype == cache_dtype
        for row in range(BATCH):
            for slot in range(CTX_LEN):
                if (row, slot) in written:
                    mxint8 = fake_quantize_mx(new[row, :, slot], "int8", axis=-1)
                    assert not torch.equal(mxint8, new[row, :, slot])  # the quantization changed something
                    expected = mxint8.to(cache_dtype)
                    assert torch.equal(expected.float(), mxint8)  # an fp16 cache holds MXINT8 values of fp16 exactly
                else:
                    expected = past[row, :, slot]
                assert torch.equal(stored[row, :, slot], expected), (row, slot)


# the ONNX MXINT8 builder alone -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_quantize_sessions() -> dict[torch.dtype, ort.InferenceSession]:
    """`y = fake_quantize_mxint8(x)` as a one-graph model per input type, any shape."""
    sessions = {}
    for dtype, onnx_type in ((torch.float32, ir.DataType.FLOAT), (torch.float16, ir.DataType.FLOAT16)):
        x, y = ir.Value(name="x", type=ir.TensorType(onnx_type)), ir.Value(name="y", type=ir.TensorType(onnx_type))
        graph = onnxscript.build_graph(fake_quantize_mxint8, [x], [y], opset_imports={"": MIN_OPSET}, name="fq")
        sessions[dtype] = _session(ir.to_proto(ir.Model(graph, ir_version=10)).SerializeToString())
    return sessions


def _block(*values: float, length: int = 32) -> list[float]:
    return [*values, *[0.0] * (length - len(values))]


def _below(power_of_two: float) -> float:
    """The largest float32 below `power_of_two`."""
    return float(np.nextafter(np.float32(power_of_two), np.float32(0.0)))


HAND_PICKED = {
    "zeros": _block(),
    "amax-exactly-1": _block(1.0, 0.5, -1 / 64, 3 / 128),  # s = 0: 0.5 → 32/64; 3/128 ties to 2/64
    "amax-just-below-1": _block(_below(1.0), -0.25),  # s = -1: 0.99999994 saturates to 127/128
    # float32 Log/Floor in ONNX Runtime puts these one binade off; the comparisons with 2^s correct it
    "amax-just-below-8": _block(_below(8.0), 2.0**-4),  # too high: s = 2, 2^-4 rounds to 0 with s = 3
    "amax-exactly-2^15": _block(2.0**15, 3.0),  # too low
    "amax-exactly-2^-13": _block(-(2.0**-13), 2.0**-20),  # too low
    "amax-exactly-2^-126": _block(2.0**-126, 2.0**-133),  # smallest normal; s = -126
    "amax-subnormal": _block(2.0**-130, 2.0**-133, -(2.0**-149)),  # s = -127: elements are multiples of 2^-133
    "amax-2^127": _block(2.0**127, -(2.0**121)),  # s = 127: the largest scale
    "largest-float32": _block(float(np.finfo(np.float32).max), 1.0),
    "saturates-both-signs": _block(1.999, -1.999, 1.0),  # s = 0: 1.999 * 64 rounds to 128, clipped to ±127
    "ties-to-even": _block(1.0, 0.5 / 64, 1.5 / 64, 2.5 / 64, -0.5 / 64, -1.5 / 64, -2.5 / 64),  # k: 0, 2, 2, 0, -2, -2
    "negative-zero-rounding": _block(-1.0, -0.25 / 64, -0.0),  # elements round to 0 (int8 has no -0)
    "partial-block": _block(3.0, -0.7, 0.01, length=40),  # zero-padded to 64: two blocks
}


def _bits(array: np.ndarray) -> np.ndarray:
    return array.view(np.int32 if array.dtype == np.float32 else np.int16)


@pytest.mark.parametrize("name", list(HAND_PICKED))
def test_onnx_builder_reproduces_fake_quantize_on_hand_picked_blocks(
    fake_quantize_sessions: dict[torch.dtype, ort.InferenceSession], name: str
) -> None:
    x = torch.tensor([HAND_PICKED[name]], dtype=torch.float32)
    expected = fake_quantize_mx(x, "int8", axis=-1).numpy()
    (actual,) = fake_quantize_sessions[torch.float32].run(None, {"x": x.numpy()})
    np.testing.assert_array_equal(_bits(actual), _bits(expected))


def test_hand_picked_blocks_quantize_as_computed_by_hand() -> None:
    """The oracle itself on the tie and saturation blocks (elements k/64 times 2^s)."""
    ties = fake_quantize_mx(torch.tensor([HAND_PICKED["ties-to-even"]]), "int8")[0, :7] * 64
    assert ties.tolist() == [64, 0, 2, 2, 0, -2, -2]
    saturated = fake_quantize_mx(torch.tensor([HAND_PICKED["saturates-both-signs"]]), "int8")[0, :3] * 64
    assert saturated.tolist() == [127, -127, 64]
    below_one = fake_quantize_mx(torch.tensor([HAND_PICKED["amax-just-below-1"]]), "int8")[0, :2] * 128
    assert below_one.tolist() == [127, -32]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", [(3, 2, 5, 8), (4, 64), (2, 3, 40), (1, 1)])
def test_onnx_builder_reproduces_fake_quantize_on_random_tensors(
    fake_quantize_sessions: dict[torch.dtype, ort.InferenceSession], shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    """Gaussian values with one random binade per row (float32: 2^-140 … 2^120, fp16: 2^-30 … 2^10, so blocks
    whose scale lies below fp16's subnormal range round on the way back too)."""
    generator = torch.Generator().manual_seed(len(shape) * 100 + shape[-1])
    low, high = (-140, 120) if dtype == torch.float32 else (-30, 10)
    binades = torch.randint(low, high, (*shape[:-1], 1), generator=generator).float()
    x = (torch.randn(shape, generator=generator) * torch.exp2(binades)).to(dtype)
    expected = fake_quantize_mx(x, "int8", axis=-1).numpy()
    (actual,) = fake_quantize_sessions[dtype].run(None, {"x": x.numpy()})
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(_bits(actual), _bits(expected))


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), float("-inf")])
def test_onnx_builder_makes_a_non_finite_block_nan(
    fake_quantize_sessions: dict[torch.dtype, ort.InferenceSession], poison: float
) -> None:
    x = torch.tensor([[1.0, poison, *[0.0] * 30, 0.3, -0.01, *[0.0] * 6]])  # poisoned first block, finite second
    (actual,) = fake_quantize_sessions[torch.float32].run(None, {"x": x.numpy()})
    assert np.isnan(actual[0, :32]).all()
    np.testing.assert_array_equal(actual[0, 32:], fake_quantize_mx(x, "int8")[0, 32:].numpy())


# the pass ----------------------------------------------------------------------------------------------------------


def _cache_specs(program: Program) -> list[TensorSpec]:
    return [s for s in (*program.inputs, *program.outputs) if s.role.startswith(("past", "retained"))]


def test_bad_dtype_is_refused_when_the_pipeline_is_built() -> None:
    with pytest.raises(PassOptionError, match=r"dtype='int4' is not one of auto, fp16, mxint8"):
        qc.PassManager("patch-attention,kv-cache{ctx_len=16,dtype=int4}")


def test_pipeline_string_sets_ctx_len_and_dtype() -> None:
    (kv_cache,) = build_passes("kv-cache{ctx_len=64,dtype=mxint8}")
    assert (kv_cache.options.ctx_len, kv_cache.options.dtype) == (64, "mxint8")
    assert kv_cache.describe() == "kv-cache{ctx_len=64,dtype=mxint8}"


def test_fp16_dtype_gives_an_fp16_cache_over_fp32_activations() -> None:
    program = qc.PassManager(f"patch-attention,kv-cache{{ctx_len={CTX_LEN},dtype=fp16}}").run(
        qc.capture(random_model(tiny_config()), batch_size=BATCH, seq_len=SEQ_LEN)
    )
    caches = _cache_specs(program)
    assert len(caches) == 8 and {s.dtype for s in caches} == {torch.float16}
    assert [s.dtype for s in program.outputs if s.role == "logits"] == [torch.float32]
    assert "fp16-activations" not in program.properties


@pytest.mark.parametrize(
    "pipeline",
    [f"patch-attention,{MXINT8},lower-fp16", f"patch-attention,lower-fp16,{MXINT8}"],
    ids=["kv-then-lower", "lower-then-kv"],
)
def test_mxint8_survives_lower_fp16_in_either_order(pipeline: str) -> None:
    """The cache container follows the activations (fp16 here) and every layer keeps both settings; the
    pipeline passes the numeric checks on the shipped model, whose larger cache blocks (max in [4, 8)) make
    lower-fp16's rounding flip MXINT8 elements by a whole step (2^-4) in kv-then-lower order: lower-fp16 then
    applies the cache's tolerance."""
    program = qc.PassManager(pipeline).run(qc.capture(TINY_MPT, batch_size=BATCH, seq_len=SEQ_LEN))
    assert {s.dtype for s in _cache_specs(program)} == {torch.float16}
    layers = program.graph.find_nodes(op="call_function", target=ATTENTION_KV)
    assert len(layers) == program.config.n_layers
    assert all(n.kwargs["kv_cache_format"] == "mxint8" and n.kwargs["fp16_activations"] for n in layers)


# ONNX ----------------------------------------------------------------------------------------------------------------


def _inputs(program: Program) -> dict[str, torch.Tensor]:
    """Random ids, ragged positions with padding, and a random (nonzero) past in the cache dtype."""
    generator = torch.Generator().manual_seed(0)
    inputs = {
        s.name: torch.randn(s.shape, generator=generator).to(s.dtype)
        for s in program.inputs
        if s.role.startswith("past")
    }
    inputs["input_ids"] = torch.randint(0, program.config.vocab_size, (BATCH, SEQ_LEN), generator=generator)
    inputs["position_ids"] = torch.tensor(RAGGED)
    return inputs


@pytest.mark.parametrize(
    "pipeline", [f"patch-attention,{MXINT8},dce", f"patch-attention,lower-fp16,{MXINT8},dce"], ids=["fp32", "fp16"]
)
def test_onnx_function_reproduces_the_host_executor(tmp_path: Path, pipeline: str) -> None:
    """Retained states match exactly (measured: every element equal, fp32 and fp16, so the ONNX function
    quantizes the same values the same way and leaves padding alone); logits to 1e-4 (measured ≤ 2.4e-6 fp32,
    0 fp16), the tolerance of the unquantized export."""
    program = qc.PassManager(pipeline).run(qc.capture(random_model(HEAD_DIM_40), batch_size=BATCH, seq_len=SEQ_LEN))
    export_onnx(program, tmp_path / "program.onnx")
    inputs = _inputs(program)
    expected = HostExecutor(program)(inputs)
    results = _session(str(tmp_path / "program.onnx")).run(None, {k: v.numpy() for k, v in inputs.items()})
    actual = dict(zip([s.name for s in program.outputs], results, strict=True))
    np.testing.assert_allclose(actual.pop("logits"), expected.pop("logits").numpy(), rtol=0, atol=1e-4)
    assert len(actual) == 4
    for name, value in expected.items():
        np.testing.assert_array_equal(actual[name], value.numpy(), err_msg=name)
        past = inputs[name.removesuffix("_RetainedState")].numpy()
        np.testing.assert_array_equal(actual[name][1, :, 5:], past[1, :, 5:], err_msg=name)  # padding: never written
