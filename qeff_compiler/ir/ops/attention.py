"""The compiler's custom operators (torch.library), each with a reference kernel and a fake (shape) kernel.

`qeff::mpt_attention` is one whole MPT attention layer without a cache: fused QKV projection (clamped by
`clip_qkv`), causal ALiBi attention with an fp32 softmax, and the output projection. `qeff::mpt_attention_kv`
is the same layer over a static `ctx_len` cache: it writes the new keys/values at `position_ids` (−1 = padding,
never written) and attends over the whole buffer, masking slots after each query's position. The cache may be
stored in a narrower dtype than the activations (fp16): values are cast to the cache dtype when written and the
attention math reads the buffer back in the activations' dtype, so it never runs in fp16 on the host.
`kv_cache_format="mxint8"` stores OCP MXINT8 values: the new keys and values are fake-quantized
(`fake_quantize_mx(x, "int8", axis=-1)`: one shared scale per 32 elements of head_dim, per token and head) before
they are written, so the buffer holds dequantized MXINT8 values and reads need no change; slots not written keep
their bits.

`fp16_activations=True` emulates AI 100 fp16 compute with fp32 accumulation: the math stays fp32 (fp16 matmuls
are ~1000× slower on a CPU), and values are rounded to fp16 at the op's internal boundaries — the QKV projection
(after the clip), the scores after scale and ALiBi bias, the softmax probabilities (softmax itself in fp32), the
context P·V, and the output projection. `lower-fp16` sets it; the ONNX functions round at the same points.

Masked scores are *replaced* by `MASK_VALUE`, the most negative finite fp16 number, rather than by fp32's
minimum: the same program stays finite when lowered to fp16.

ALiBi bias is `slope * (key_position − query_position)`. HF adds `slope * (key_index − (L − 1))` instead; the two
differ by a constant per query row, which softmax cancels (shift invariance), and ours stays bounded by
`slope * ctx_len` for every query, which keeps it representable in fp16.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.ir.ops.traits import OpTraits, register_traits
from qeff_compiler.numerics.mx import fake_quantize_mx

#: replaces masked attention scores; finfo(float16).min, so the mask is finite in fp16 as well as fp32
MASK_VALUE = -65504.0
#: values of `mpt_attention_kv`'s `kv_cache_format`: None stores the values as they are (in the cache dtype)
KV_CACHE_FORMATS = (None, "mxint8")
#: name of the shared ALiBi slopes constant (the attention ops' operand 3) in the weight store
ALIBI_SLOPES = "alibi_slopes"


def is_alibi_slopes(name: str) -> bool:
    """The shared slopes constant, or a layer's own `alibi_slopes.{i}` (`prune` removed some of its heads)."""
    return name == ALIBI_SLOPES or name.startswith(f"{ALIBI_SLOPES}.")


def round_fp16(tensor: torch.Tensor, enabled: bool = True) -> torch.Tensor:
    """`tensor` rounded to the nearest fp16 value (beyond ±65504: ±inf, as on the device), kept in its dtype."""
    return tensor.to(torch.float16).to(tensor.dtype) if enabled else tensor


def _project_qkv(
    hidden: torch.Tensor, wqkv: torch.Tensor, n_heads: int, clip_qkv: float | None, fp16: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused QKV projection → three [batch, heads, seq, head_dim] tensors."""
    qkv = F.linear(hidden, wqkv)
    if clip_qkv is not None:
        qkv = qkv.clamp(min=-clip_qkv, max=clip_qkv)
    qkv = round_fp16(qkv, fp16)
    batch, seq, _ = hidden.shape
    query, key, value = (t.reshape(batch, seq, n_heads, -1).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    return query, key, value


def _attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    slopes: torch.Tensor,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    softmax_scale: float,
    fp16: bool,
) -> torch.Tensor:
    """Causal ALiBi attention. query_positions [b, s], key_positions [b, k]; returns [b, heads, s, head_dim]."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * softmax_scale
    distance = key_positions[:, None, None, :] - query_positions[:, None, :, None]
    scores = round_fp16(scores + slopes.to(scores.dtype)[None, :, None, None] * distance.to(scores.dtype), fp16)
    allowed = distance <= 0
    scores = torch.where(allowed, scores, torch.full_like(scores, MASK_VALUE))
    probabilities = round_fp16(torch.softmax(scores.float(), dim=-1), fp16).to(value.dtype)
    return round_fp16(torch.matmul(probabilities, value), fp16)


def _merge_heads(context: torch.Tensor) -> torch.Tensor:
    batch, heads, seq, head_dim = context.shape
    return context.transpose(1, 2).reshape(batch, seq, heads * head_dim)


def write_cache(
    cache: torch.Tensor, new: torch.Tensor, position_ids: torch.Tensor, slots: torch.Tensor | None = None
) -> torch.Tensor:
    """A copy of `cache` [B, h, ctx, d] with `new` [b, h, s, d] written at positions `position_ids` [b, s] of
    cache rows `slots` [b] (default: row i of the input is cache row i).

    Position −1 is padding and is never written: the rows and columns to write are selected explicitly instead
    of relying on index arithmetic, where −1 would silently address the last slot.
    """
    return write_cache_in_place(cache.clone(), new, position_ids, slots)


def write_cache_in_place(
    cache: torch.Tensor, new: torch.Tensor, position_ids: torch.Tensor, slots: torch.Tensor | None = None
) -> torch.Tensor:
    """`write_cache` into `cache` itself (returned)."""
    rows, columns = torch.nonzero(position_ids >= 0, as_tuple=True)
    cache_rows = rows if slots is None else slots[rows]
    cache[cache_rows, :, position_ids[rows, columns], :] = new[rows, :, columns, :]
    return cache


def _cache_values(new: torch.Tensor, cache_dtype: torch.dtype, kv_cache_format: str | None) -> torch.Tensor:
    """New keys or values [b, h, s, head_dim] as the cache stores them: in `kv_cache_format` (MXINT8 blocks run
    along head_dim, the axis attention reduces over), then cast to the cache dtype."""
    if kv_cache_format not in KV_CACHE_FORMATS:
        raise InvalidArgumentError(
            f"kv_cache_format={kv_cache_format!r} is not one of {', '.join(map(repr, KV_CACHE_FORMATS))}"
        )
    if kv_cache_format == "mxint8":
        new = fake_quantize_mx(new, "int8", axis=-1)
    return new.to(cache_dtype)


@torch.library.custom_op("qeff::mpt_attention", mutates_args=())
def mpt_attention(
    hidden: torch.Tensor,
    wqkv: torch.Tensor,
    out_proj: torch.Tensor,
    alibi_slopes: torch.Tensor,
    n_heads: int,
    softmax_scale: float,
    clip_qkv: float | None,
    fp16_activations: bool = False,
) -> torch.Tensor:
    """One MPT attention layer over the sequence itself (no cache): hidden [b, s, d] → [b, s, d]."""
    query, key, value = _project_qkv(hidden, wqkv, n_heads, clip_qkv, fp16_activations)
    batch, seq, _ = hidden.shape
    positions = torch.arange(seq, device=hidden.device).expand(batch, seq)
    context = _attend(query, key, value, alibi_slopes, positions, positions, softmax_scale, fp16_activations)
    return round_fp16(F.linear(_merge_heads(context), out_proj), fp16_activations)


@mpt_attention.register_fake
def _mpt_attention_fake(
    hidden, wqkv, out_proj, alibi_slopes, n_heads, softmax_scale, clip_qkv, fp16_activations=False
):
    return hidden.new_empty(hidden.shape)


@torch.library.custom_op("qeff::mpt_attention_kv", mutates_args=())
def mpt_attention_kv(
    hidden: torch.Tensor,
    wqkv: torch.Tensor,
    out_proj: torch.Tensor,
    alibi_slopes: torch.Tensor,
    position_ids: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    n_heads: int,
    softmax_scale: float,
    clip_qkv: float | None,
    fp16_activations: bool = False,
    kv_cache_format: str | None = None,
    batch_index: torch.Tensor | None = None,
    comp_ctx_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One MPT attention layer over a static cache; returns (output, updated keys, updated values).

    `batch_index` [b, 1] (continuous batching) names the cache row (slot) each input row reads and writes; the
    caches then hold `full_batch_size` rows and the others pass through. `comp_ctx_lengths` (a compute-context-
    length bucket: only its length N is read) makes attention read the first N cache positions only; every
    position written must be below N."""
    return attention_kv(
        hidden, wqkv, out_proj, alibi_slopes, position_ids, past_key, past_value, n_heads, softmax_scale, clip_qkv,
        fp16_activations, kv_cache_format, batch_index, comp_ctx_lengths, in_place=False,
    )


def attention_kv(
    hidden: torch.Tensor,
    wqkv: torch.Tensor,
    out_proj: torch.Tensor,
    alibi_slopes: torch.Tensor,
    position_ids: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    n_heads: int,
    softmax_scale: float,
    clip_qkv: float | None,
    fp16_activations: bool = False,
    kv_cache_format: str | None = None,
    batch_index: torch.Tensor | None = None,
    comp_ctx_lengths: torch.Tensor | None = None,
    *,
    in_place: bool = False,
    read_buffers: ReadBuffers | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`mpt_attention_kv`'s computation. `in_place` writes the new keys and values into `past_key` /
    `past_value` themselves and returns them: for a caller that donates its cache (the host executor of a
    generation loop), so a step costs what it reads, not a copy of the whole cache. `read_buffers` holds the
    positions read, cast to the activations' dtype, in memory kept between calls."""
    query, key, value = _project_qkv(hidden, wqkv, n_heads, clip_qkv, fp16_activations)
    rows = None if batch_index is None else batch_index[:, 0]
    write = write_cache_in_place if in_place else write_cache
    key_cache = write(past_key, _cache_values(key, past_key.dtype, kv_cache_format), position_ids, rows)
    value_cache = write(past_value, _cache_values(value, past_value.dtype, kv_cache_format), position_ids, rows)
    context_len = past_key.shape[2] if comp_ctx_lengths is None else comp_ctx_lengths.shape[0]
    if int(position_ids.max()) >= context_len:
        raise InvalidArgumentError(
            f"position {int(position_ids.max())} is outside the compute-context-length bucket {context_len}"
        )
    keys, values = _read_cache(key_cache, rows, context_len), _read_cache(value_cache, rows, context_len)
    slots = torch.arange(context_len, device=hidden.device).expand(position_ids.shape[0], context_len)
    if keys.dtype != query.dtype:  # compute never runs in the cache dtype
        cast = read_buffers.cast if read_buffers is not None else lambda _, tensor, dtype: tensor.to(dtype)
        keys, values = cast("keys", keys, query.dtype), cast("values", values, query.dtype)
    context = _attend(query, keys, values, alibi_slopes, position_ids, slots, softmax_scale, fp16_activations)
    output = round_fp16(F.linear(_merge_heads(context), out_proj), fp16_activations)
    return output, key_cache, value_cache


def _read_cache(cache: torch.Tensor, rows: torch.Tensor | None, context_len: int) -> torch.Tensor:
    """The cache positions attention reads: the first `context_len` of each input row's slot (a view when the
    rows are the cache's own, in order, as in a continuous-batching decode step; else only those positions are
    gathered)."""
    cache = cache[:, :, :context_len]
    if rows is not None and not torch.equal(rows, torch.arange(cache.shape[0])):
        cache = cache[rows]
    return cache


class ReadBuffers:
    """Memory kept between calls (one set per thread) for the cache positions attention reads, cast to the
    activations' dtype. A fresh tensor of that size per layer and step is mapped from the OS and page-faulted in
    on every call: for 8 slots at ctx_len 2048 (MPT-125M shape), casting into fresh tensors took ~7× as long as
    the same copies into kept memory (~3/4 of the decode step). The values are the same either way."""

    def __init__(self) -> None:
        self._local = threading.local()

    def cast(self, name: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`tensor` cast to `dtype` into the buffer `name` (grown when too small), contiguous; valid until the
        next cast into the same buffer on this thread."""
        buffers: dict[str, torch.Tensor] = self._local.__dict__
        buffer = buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.numel() < tensor.numel():
            buffer = buffers[name] = torch.empty(tensor.numel(), dtype=dtype)
        return buffer[: tensor.numel()].view(tensor.shape).copy_(tensor)


@mpt_attention_kv.register_fake
def _mpt_attention_kv_fake(
    hidden, wqkv, out_proj, alibi_slopes, position_ids, past_key, past_value,
    n_heads, softmax_scale, clip_qkv, fp16_activations=False, kv_cache_format=None, batch_index=None,
    comp_ctx_lengths=None,
):
    return hidden.new_empty(hidden.shape), past_key.new_empty(past_key.shape), past_value.new_empty(past_value.shape)


ATTENTION = torch.ops.qeff.mpt_attention.default
ATTENTION_KV = torch.ops.qeff.mpt_attention_kv.default
register_traits(ATTENTION, OpTraits(attention=True, weight_operands=(1, 2)))
register_traits(ATTENTION_KV, OpTraits(attention=True, stateful=True, weight_operands=(1, 2)))
