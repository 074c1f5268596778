"""Continuous batching and compute-context-length buckets: the passes against the plain program, the scheduler's
outputs against each request generated alone, the hand-off graph in ONNX Runtime, the simulated cost per bucket."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import qeff_compiler as qc
from qeff_compiler.backends.ai100.cost_model import tier_bandwidth
from qeff_compiler.backends.ai100.sharded import run_sharded
from qeff_compiler.backends.ai100.workload import program_workload
from qeff_compiler.backends.qaic.engine import HandoffSession
from qeff_compiler.capture.presets import preset_config
from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.ir.interpret import HostExecutor
from qeff_compiler.runtime.scheduler import ContinuousBatchScheduler, Request
from qeff_compiler.runtime.workload import PoissonWorkload
from tests.conftest import random_model, tiny_config

#: HF's greedy choice is only well defined where its top-2 logit margin exceeds this (as in test_generate)
MARGIN = 1e-3
CTX, PREFILL = 32, 4


@pytest.fixture(scope="module")
def hf_model() -> torch.nn.Module:
    return random_model(tiny_config(), seed=7)


@pytest.fixture(scope="module")
def served(hf_model) -> dict[str, qc.CompiledModel]:
    """The model compiled with 3 slots, without and with context buckets (its passes verified against the plain
    program by the pass manager), and plainly (batch 1)."""
    return {
        "cb": qc.compile(hf_model, precision="fp32", ctx_len=CTX, prefill_len=PREFILL, full_batch_size=3, verify=False),
        "cb+ccl": qc.compile(
            hf_model,
            precision="fp32",
            ctx_len=CTX,
            prefill_len=PREFILL,
            full_batch_size=3,
            comp_ctx_lengths_prefill=[8, 16, CTX],
            comp_ctx_lengths_decode=[6, 12, 20, CTX],
        ),
        "plain": qc.compile(hf_model, precision="fp32", ctx_len=CTX, prefill_len=PREFILL, verify=False),
    }


def hf_alone(model: torch.nn.Module, prompt: tuple[int, ...], max_new: int, eos: frozenset[int]) -> tuple[list, float]:
    """HF greedy for one prompt alone, cut after its first EOS; and the smallest top-2 margin over its steps."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new,
            min_new_tokens=max_new,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    tokens = out.sequences[0, len(prompt) :].tolist()
    end = next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))
    margins = [float(torch.topk(s[0], 2).values.diff().abs()) for s in out.scores[:end]]
    return tokens[:end], min(margins)


@settings(max_examples=30)
@given(data=st.data(), variant=st.sampled_from(["cb", "cb+ccl"]))
def test_greedy_continuous_batching_equals_each_request_alone(served, hf_model, data, variant) -> None:
    """More requests than slots, ragged prompts, their own max_new_tokens and EOS ids, submitted in a random order
    with random arrival times: each request's tokens are HF's for that request alone (cases where HF's own top-2
    margin is ≤ 1e-3 somewhere are filtered, as in test_generate)."""
    count = data.draw(st.integers(4, 7), label="requests")
    requests = []
    for index in range(count):
        length = data.draw(st.integers(1, 14), label="prompt length")
        requests.append(
            Request(
                f"r{index}",
                tuple(data.draw(st.lists(st.integers(0, 63), min_size=length, max_size=length), label="prompt")),
                data.draw(st.integers(1, 10), label="max_new_tokens"),
                eos_token_ids=frozenset(data.draw(st.sets(st.integers(0, 63), max_size=2), label="eos")),
                arrival_s=data.draw(st.sampled_from([0.0, 1e-4, 5e-4, 2e-3]), label="arrival"),
            )
        )
    order = data.draw(st.permutations(requests), label="submission order")
    expected = {r.request_id: hf_alone(hf_model, r.prompt_ids, r.max_new_tokens, r.eos_token_ids) for r in requests}
    assume(all(margin > MARGIN for _, margin in expected.values()))
    scheduler = ContinuousBatchScheduler(served[variant])
    results = scheduler.run(order)
    for result in results:
        tokens, _ = expected[result.request_id]
        assert list(result.tokens) == tokens, result.request_id
        ended_by_eos = tokens[-1] in next(r for r in requests if r.request_id == result.request_id).eos_token_ids
        assert result.finish_reason == ("eos" if ended_by_eos else "length")
    stats = scheduler.stats()
    assert stats.generated_tokens == sum(len(t) for t, _ in expected.values())
    assert max(stats.decode_live_slots, default=0) <= 3
    if variant == "cb+ccl":  # each step ran at the smallest bucket holding every live position
        for call in scheduler.calls:
            assert call.bucket in ((6, 12, 20, CTX) if call.kind == "decode" else (8, 16, CTX))


def test_generate_takes_more_prompts_than_slots(served) -> None:
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18]]
    out = served["cb+ccl"].generate(prompts, max_new_tokens=5)
    alone = [served["plain"].generate([p], max_new_tokens=5).new_tokens[0] for p in prompts]
    assert list(out.new_tokens) == alone
    assert out.sequences.shape == (5, 7 + 5)


def _filled_cache(program, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {s.name: torch.randn(s.shape, generator=generator) for s in program.inputs if s.role.startswith("past_")}


def test_prefill_into_slot_k_and_a_decode_step_equal_the_plain_program(served) -> None:
    """The continuous-batching program against the plain one on a filled cache: prefill into slot 2 reads and
    writes only row 2 and gives the plain program's logits and cache; a decode step of all slots equals the plain
    program run row by row. With context buckets, positions past the bucket are never read."""
    plain_prefill, plain_decode = served["plain"].host_executors()
    generator = torch.Generator().manual_seed(0)
    for variant in ("cb", "cb+ccl"):
        prefill, decode = served[variant].host_executors()
        cache = _filled_cache(served[variant].prefill, generator)
        ids = torch.tensor([[5, 9, 2, 0]])
        positions = torch.tensor([[6, 7, 8, -1]])  # the slot's positions 0..5 hold earlier tokens
        inputs = {"input_ids": ids, "position_ids": positions, "batch_index": torch.tensor([[2]]), **cache}
        row = {name: tensor[2:3].clone() for name, tensor in cache.items()}
        if variant == "cb+ccl":  # bucket 16: positions from 16 on are never read, so NaN there changes nothing
            inputs["comp_ctx_lengths"] = torch.zeros(16, dtype=torch.int64)
            for name in cache:
                cache[name][:, :, 16:] = float("nan")
                row[name][:, :, 16:] = 0.0
        out = prefill(inputs)
        reference = plain_prefill({"input_ids": ids, "position_ids": positions, **row})
        torch.testing.assert_close(out["logits"], reference["logits"], rtol=0, atol=1e-5)
        for name in cache:
            new = out[f"{name}_RetainedState"]
            torch.testing.assert_close(new[2:3, :, :16], reference[f"{name}_RetainedState"][:, :, :16])
            torch.testing.assert_close(new[:2], cache[name][:2], equal_nan=True, rtol=0, atol=0)  # others untouched

        state = {name: out[f"{name}_RetainedState"] for name in cache}
        step = {"input_ids": torch.tensor([[3], [4], [1]]), "position_ids": torch.tensor([[2], [-1], [9]])}
        step |= {"batch_index": torch.arange(3)[:, None], **state}
        if variant == "cb+ccl":
            step["comp_ctx_lengths"] = torch.zeros(12, dtype=torch.int64)
        logits = decode(step)["logits"]
        for slot in (0, 2):
            alone = {n: t[slot : slot + 1].clone() for n, t in state.items()}
            if variant == "cb+ccl":  # bucket 12: the NaN from position 16 on is never read
                for tensor in alone.values():
                    tensor[:, :, 12:] = 0.0
            single = {"input_ids": step["input_ids"][slot : slot + 1], "position_ids": step["position_ids"][slot : slot + 1]}
            expected = plain_decode({**single, **alone})["logits"]
            torch.testing.assert_close(logits[slot : slot + 1], expected, rtol=0, atol=1e-5)


def test_a_position_past_the_bucket_is_refused(served) -> None:
    prefill, _ = served["cb+ccl"].host_executors()
    cache = {s.name: torch.zeros(s.shape) for s in served["cb+ccl"].prefill.inputs if s.role.startswith("past_")}
    inputs = {"input_ids": torch.tensor([[1, 2, 3, 4]]), "position_ids": torch.tensor([[6, 7, 8, 9]])}
    inputs |= {"batch_index": torch.tensor([[0]]), "comp_ctx_lengths": torch.zeros(8, dtype=torch.int64), **cache}
    with pytest.raises(InvalidArgumentError, match="position 9 is outside the compute-context-length bucket 8"):
        prefill(inputs)


def test_onnxruntime_runs_the_cb_ccl_handoff_graph_like_the_host(served, tmp_path) -> None:
    """The hand-off graph (CtxScatterCB, batch_index, comp_ctx_lengths) in ONNX Runtime, as emitted: prefill into
    slot 1 at bucket 16, then a decode step of every slot at bucket 12, equal the host program's outputs."""
    model = served["cb+ccl"]
    session = HandoffSession(model).session
    names = [o.name for o in session.get_outputs()]
    inputs = [(i.name, i.shape) for i in session.get_inputs()]  # QEfficient's order and symbolic dims
    assert inputs[0] == ("input_ids", ["batch_size", "seq_len"])
    assert inputs[1] == ("past_key.0", ["full_batch_size", 4, "ctx_len", 8])
    assert inputs[-3:] == [("comp_ctx_lengths", ["comp_ctx_lengths"]), ("position_ids", ["batch_size", "seq_len"]),
                           ("batch_index", ["batch_size", 1])]
    prefill, decode = model.host_executors()
    cache = _filled_cache(model.prefill, torch.Generator().manual_seed(1))
    calls = [
        (prefill, {"input_ids": torch.tensor([[7, 8, 9, 1]]), "position_ids": torch.tensor([[0, 1, 2, 3]]),
                   "batch_index": torch.tensor([[1]]), "comp_ctx_lengths": torch.zeros(16, dtype=torch.int64)}),
        (decode, {"input_ids": torch.tensor([[2], [3], [4]]), "position_ids": torch.tensor([[5], [4], [-1]]),
                  "batch_index": torch.arange(3)[:, None], "comp_ctx_lengths": torch.zeros(12, dtype=torch.int64)}),
    ]
    for executor, inputs in calls:
        host = executor({**inputs, **cache})
        feed = {name: tensor.numpy() for name, tensor in {**inputs, **cache}.items()}
        ort = dict(zip(names, session.run(names, feed), strict=True))
        for name in names:
            torch.testing.assert_close(torch.from_numpy(ort[name]), host[name], rtol=1e-4, atol=1e-4)
        cache = {name: host[f"{name}_RetainedState"] for name in cache}
    written = model.export_qaic(tmp_path / "qaic")
    specs = json.loads((tmp_path / "qaic" / "specializations.json").read_text())["specializations"]
    assert [s["name"] for s in specs] == ["Prefill_0", "Prefill_1", "Prefill_2", "Decode_0", "Decode_1",
                                          "Decode_2", "Decode_3"]
    assert specs[0]["symbols"] == {"batch_size": "1", "seq_len": "4", "ctx_len": "32", "comp_ctx_lengths": "8",
                                   "full_batch_size": "3", "full_batch_exec_size": "1"}
    assert specs[-1]["symbols"] == {"batch_size": "3", "seq_len": "1", "ctx_len": "32", "comp_ctx_lengths": "32",
                                    "full_batch_size": "3"}
    assert tmp_path / "qaic" / "model.onnx" in written


def test_simulated_decode_cost_follows_the_bucket() -> None:
    """MPT-125M's layer shape (2 of its layers, to compile fast) at ctx_len 2048 with 8 slots (a config-only
    compile): every cached-attention op's KV bytes are
    the bucket's (2 x slots x bucket x d_model x 2 bytes read), its memory time is those bytes over the tier's
    bandwidth, and the step time grows with the bucket."""
    config = preset_config("mpt-125m")
    config.n_layers = 2
    buckets = [256, 512, 1024, 2048]
    model = qc.compile(
        config, precision="fp16", ctx_len=2048, full_batch_size=8, comp_ctx_lengths_decode=buckets, verify=False
    )
    device = model.simulation
    bandwidth = tier_bandwidth(device.spec, device.memory.tier)
    step_s = [device.decode_call_s(b) for b in buckets]
    assert step_s == sorted(step_s) and step_s[-1] == device.decode_step_s
    for bucket in buckets:
        attention = [w for w in program_workload(model.decode, context_len=bucket) if w.kind == "attention"]
        assert len(attention) == config.n_layers
        for work in attention:
            assert work.kv_read_bytes == 2 * 8 * bucket * config.d_model * 2
        timed = {op.node: op for op in device._timed("decode", bucket).ops}
        for work in attention:
            share = device.plans["decode"].device_share(work.node)
            memory_s = (work.weight_bytes + work.kv_read_bytes + work.kv_write_bytes) * share / bandwidth
            assert timed[work.node].memory_s == pytest.approx(memory_s)
    kv_s = [2 * 8 * b * config.d_model * 2 * config.n_layers / bandwidth for b in buckets]
    assert step_s[-1] - step_s[0] <= (kv_s[-1] - kv_s[0]) * 1.0001  # no more than the extra KV bytes cost
    assert step_s[-1] - step_s[0] > 0.5 * (kv_s[-1] - kv_s[0])  # and mostly that: decode reads the cache


def test_slot_trace_has_a_lane_per_slot_with_buckets(served, tmp_path) -> None:
    path = tmp_path / "slots.json"
    served["cb+ccl"].generate([[1, 2, 3], [4, 5], [6], [7, 8, 9, 10, 11]], max_new_tokens=6, trace=path)
    events = json.loads(path.read_text())["traceEvents"]
    lanes = {e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    assert lanes == {"slot 0", "slot 1", "slot 2"}
    spans = [e for e in events if e["ph"] == "X"]
    prefills = [e for e in spans if e["cat"] == "prefill"]
    assert sorted(e["args"]["request"] for e in prefills) == ["0", "1", "2", "3", "3"]  # request 3: two chunks
    assert all(e["args"]["bucket"] in (6, 12, 20, CTX) for e in spans if e["cat"] == "decode")
    assert [e["args"]["bucket"] for e in events if e["ph"] == "C"]
    starts = sorted({e["ts"] for e in spans})
    assert starts == sorted(starts) and spans[0]["ts"] == 0.0


def test_generation_executors_write_the_cache_in_place_with_the_same_numerics(served) -> None:
    """The host executors a generation loop uses write into the caches they are given (no copy of the cache per
    call) and compute what the copying executors compute."""
    model = served["cb+ccl"]
    copying, donating = model.host_executors()[1], model.generation_executors("host")[1]
    cache = _filled_cache(model.decode, torch.Generator().manual_seed(2))
    step = {"input_ids": torch.tensor([[3], [4], [1]]), "position_ids": torch.tensor([[2], [7], [-1]]),
            "batch_index": torch.arange(3)[:, None], "comp_ctx_lengths": torch.zeros(12, dtype=torch.int64)}
    expected = copying({**step, **cache})
    assert not torch.equal(expected["past_key.0_RetainedState"], cache["past_key.0"])  # the copy left the input
    out = donating({**step, **cache})
    assert out["past_key.0_RetainedState"] is cache["past_key.0"]
    for name, value in expected.items():
        torch.testing.assert_close(out[name], value, rtol=0, atol=0)


def test_donating_executor_reuses_its_read_buffers_with_the_same_numerics(hf_model) -> None:
    """With an fp16 cache the donating executor casts what attention reads into buffers kept between calls; calls
    at growing and shrinking buckets, with slots in and out of order, equal the copying executor exactly."""
    model = qc.compile(
        hf_model, ctx_len=CTX, prefill_len=PREFILL, full_batch_size=3, comp_ctx_lengths_decode=[6, 12, CTX],
        verify=False,
    )
    copying, donating = model.host_executors()[1], model.generation_executors("host")[1]
    filled = _filled_cache(model.decode, torch.Generator().manual_seed(5))
    cache = {name: value.half() for name, value in filled.items()}
    assert all(s.dtype == torch.float16 for s in model.decode.inputs if s.role.startswith("past_"))
    steps = [
        (12, [[3], [9], [1]], [[0], [1], [2]]),
        (CTX, [[20], [-1], [4]], [[2], [0], [1]]),
        (6, [[5], [2], [0]], [[1], [2], [0]]),
    ]
    for bucket, positions, rows in steps:
        step = {"input_ids": torch.tensor([[3], [4], [1]]), "position_ids": torch.tensor(positions),
                "batch_index": torch.tensor(rows), "comp_ctx_lengths": torch.zeros(bucket, dtype=torch.int64)}
        expected = copying({**step, **cache})
        out = donating({**step, **cache})
        for name, value in expected.items():
            torch.testing.assert_close(out[name], value, rtol=0, atol=0)


def test_poisson_workload_is_seeded_with_the_asked_rate_and_lengths() -> None:
    workload = PoissonWorkload(2000, 50.0, (3, 9), (2, 5), seed=4)
    requests = workload.requests(64)
    assert requests == workload.requests(64)
    gaps = [b.arrival_s - a.arrival_s for a, b in zip(requests, requests[1:])]
    assert min(gaps) >= 0 and abs(sum(gaps) / len(gaps) - 1 / 50) < 0.1 / 50  # exponential gaps of mean 1/rate
    assert {len(r.prompt_ids) for r in requests} == set(range(3, 10))
    assert {r.max_new_tokens for r in requests} == set(range(2, 6))
    assert all(r.arrival_s == 0 for r in PoissonWorkload(5, None, (1, 2), (1, 2)).requests(8))


def test_shard_wise_execution_honours_slots_and_buckets(served) -> None:
    """The partitioned numerics (shard by shard, as the plan splits the cores) equal the host program with
    permuted slots and a context bucket."""
    model = served["cb+ccl"]
    cache = _filled_cache(model.decode, torch.Generator().manual_seed(3))
    step = {"input_ids": torch.tensor([[3], [4], [1]]), "position_ids": torch.tensor([[2], [-1], [5]]),
            "batch_index": torch.tensor([[2], [0], [1]]), "comp_ctx_lengths": torch.zeros(6, dtype=torch.int64)}
    expected = model.host_executors()[1]({**step, **{k: v.clone() for k, v in cache.items()}})
    sharded = run_sharded(model.decode, model.simulation.plans["decode"], {**step, **cache})
    for name, value in expected.items():
        torch.testing.assert_close(sharded[name], value, rtol=1e-5, atol=1e-5)
