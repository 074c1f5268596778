"""Speculative decoding: greedy output equals plain greedy, sampling keeps the target's distribution, rejected
tokens are never attended, and the simulator's verify/plain step costs agree with a plain compile."""

from __future__ import annotations

import functools
import json
import re

import onnx
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, MptConfig, MptForCausalLM

import qeff_compiler as qc
from qeff_compiler.backends.ai100.cost_model import OP_OVERHEAD_S
from qeff_compiler.cli import main as cli
from qeff_compiler.data import TINY_MPT, TINY_MPT_DRAFT, TINY_MPT_VALIDATION_TEXT
from qeff_compiler.runtime.proposers import PromptLookup, lookup
from qeff_compiler.runtime.sampling import SamplingConfig, TokenSampler
from qeff_compiler.runtime.scheduler import ContinuousBatchScheduler, Request
from qeff_compiler.runtime.speculative import verify_row
from tests.conftest import random_model, tiny_config
from tests.test_fixture_model import perplexity

CTX = 40


def perturbed(model: MptForCausalLM, scale: float, seed: int) -> MptForCausalLM:
    """A draft that agrees with `model` often but not always: its weights plus seeded noise."""
    draft = MptForCausalLM(model.config).eval()
    draft.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in draft.parameters():
            if parameter.dim() > 1:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return draft


@functools.lru_cache(maxsize=4)
def compiled_pair(n_heads: int, n_layers: int, vocab: int, batch: int, k: int, seed: int):
    """(HF target, its K compile, a perturbed draft's plain compile), cached across hypothesis examples."""
    config = tiny_config(d_model=4 * n_heads, n_heads=n_heads, n_layers=n_layers, vocab_size=vocab, max_seq_len=CTX)
    target = random_model(config, seed)
    options = {"ctx_len": CTX, "prefill_len": 8, "batch_size": batch, "verify": False}
    tlm = qc.compile(target, num_speculative_tokens=k, **options)
    draft = qc.compile(perturbed(target, 0.05, seed + 1), **options)
    return target, tlm, draft


def hf_greedy(model: MptForCausalLM, prompt: list[int], new: int, eos: int) -> tuple[list[int], float]:
    """HF's greedy continuation of one prompt (alone) and its smallest top-2 logit margin over the steps."""
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=new, do_sample=False, eos_token_id=eos, pad_token_id=eos,
        output_scores=True, return_dict_in_generate=True,
    )
    margins = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores]
    tokens = out.sequences[0, len(prompt):].tolist()
    if eos in tokens:
        tokens = tokens[: tokens.index(eos) + 1]
    return tokens, min(margins)


@settings(max_examples=6)
@given(
    n_heads=st.sampled_from([1, 2, 3]),
    n_layers=st.integers(1, 2),
    vocab=st.sampled_from([6, 16, 40]),
    batch=st.sampled_from([1, 3]),
    k=st.integers(1, 7),
    seed=st.integers(0, 3),
    data=st.data(),
)
def test_greedy_speculative_equals_plain_greedy(n_heads, n_layers, vocab, batch, k, seed, data):
    target, tlm, draft = compiled_pair(n_heads, n_layers, vocab, batch, k, seed)
    # short alphabets repeat, so prompt lookup finds n-grams; ragged rows
    prompts = [
        data.draw(st.lists(st.integers(0, min(vocab, 5) - 1), min_size=1, max_size=12)) for _ in range(batch)
    ]
    new = data.draw(st.integers(1, CTX - 12))
    eos = vocab - 1
    expected = []
    for prompt in prompts:
        tokens, margin = hf_greedy(target, prompt, new, eos)
        assume(margin > 1e-3)  # HF's own near-ties: fp32 rounding may pick either token
        expected.append(tuple(tokens))
    for proposer in ("prompt-lookup", draft):
        out = tlm.generate(prompts, max_new_tokens=new, draft=proposer, eos_token_id=eos)
        assert list(out.new_tokens) == expected, proposer
        assert out.stats.verify_slot_steps == 0 or out.stats.accepted_tokens_per_step >= 1  # new=1: no verify step


def test_a_shared_draft_is_accepted_whole_and_a_poor_one_rarely():
    """The statistics measure what happened: a draft equal to the target accepts every proposal."""
    target, tlm, _ = compiled_pair(2, 1, 16, 1, 3, 0)
    same = qc.compile(target, ctx_len=CTX, prefill_len=8, verify=False)
    stats = tlm.generate([[1, 2, 3]], max_new_tokens=20, draft=same).stats
    assert stats.acceptance_rate == 1.0
    assert stats.accepted_tokens_per_step == pytest.approx(4.0, abs=0.5)  # the last steps have less room
    unrelated = qc.compile(random_model(target.config, seed=9), ctx_len=CTX, prefill_len=8, verify=False)
    poor = tlm.generate([[1, 2, 3]], max_new_tokens=20, draft=unrelated).stats
    assert poor.acceptance_rate < 0.5 and poor.speedup < stats.speedup


def test_rejected_tokens_are_never_attended():
    """Before every verify call, every cache slot from the call's first position on (the stale keys/values of
    rejected proposals among them) is overwritten with garbage: the logits of every real position stay
    bit-identical. The same garbage
    in one slot before that position (an accepted token) changes them: the check can fail."""
    target, tlm, draft = compiled_pair(2, 2, 16, 3, 4, 1)
    _check_poisoned_runs(tlm, draft, [[1, 2, 3, 1, 2, 3, 1], [4, 5], [6, 6, 6, 7]], 24)


def chi_square_p(observed: torch.Tensor, expected: torch.Tensor) -> float:
    """Survival function of Pearson's statistic; cells expected below 5 are pooled into one."""
    small = expected < 5
    observed = torch.cat([observed[~small], observed[small].sum().reshape(1)])
    expected = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    keep = expected > 0
    statistic = float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(statistic / 2)))


@pytest.mark.parametrize("deterministic", [False, True], ids=["sampled-draft", "one-hot-proposal"])
def test_rejection_rule_keeps_the_target_distribution(deterministic):
    """verify_row's first token is distributed as p, whatever q proposed (6,000 seeded trials)."""
    generator = torch.Generator().manual_seed(0)
    vocab, trials = 5, 6_000
    p_logits = torch.randn(3, vocab, generator=generator) * 1.5
    q = torch.softmax(torch.randn(2, vocab, generator=generator), dim=-1).double()
    sampler = TokenSampler(SamplingConfig(do_sample=True, seed=1))
    target = sampler.probabilities(p_logits)
    likely = int(target[0].argmax())
    firsts, seconds = torch.zeros(vocab), torch.zeros(vocab)
    for _ in range(trials):
        drawn = [int(torch.multinomial(q[i], 1, generator=generator)) for i in (0, 1)]
        proposed = [likely, likely] if deterministic else drawn
        tokens = verify_row(proposed, p_logits, None if deterministic else q, sampler)
        firsts[tokens[0]] += 1
        if tokens[0] == proposed[0]:
            seconds[tokens[1]] += 1  # given the first proposal was accepted, the next is distributed as p[1]
    assert chi_square_p(firsts, target[0] * trials) > 1e-3
    assert chi_square_p(seconds, target[1] * seconds.sum()) > 1e-3
    assert 0 < seconds.sum() < trials - 1000  # proposals were accepted and rejected
    assert seconds.sum() > 1000


def test_sampled_generation_follows_the_target_distribution():
    """End to end on a 4-token vocabulary: the joint distribution of the 2nd and 3rd generated tokens (made by
    one verify step with K=2, a perturbed draft proposing) matches the target's exact one, chi-square over
    48 seeds x 32 rows."""
    config = tiny_config(d_model=8, n_heads=2, n_layers=1, vocab_size=4, max_seq_len=16)
    target = random_model(config, seed=3)
    options = {"ctx_len": 16, "prefill_len": 4, "batch_size": 32, "verify": False}
    tlm = qc.compile(target, num_speculative_tokens=2, **options)
    draft = qc.compile(perturbed(target, 0.3, 4), **options)
    prompt, first = [1, 2, 0], 3
    sampling = {"do_sample": True, "temperature": 0.9}
    counts = torch.zeros(16)
    for seed in range(48):
        out = tlm.generate([prompt] * 32, max_new_tokens=3, draft=draft, seed=seed, eos_token_id=[], **sampling)
        for row in out.new_tokens:
            if row[0] == first:
                counts[row[1] * 4 + row[2]] += 1
    with torch.no_grad():
        second = torch.softmax(target(torch.tensor([prompt + [first]])).logits[0, -1].double() / 0.9, -1)
        thirds = torch.softmax(
            target(torch.tensor([prompt + [first, t] for t in range(4)])).logits[:, -1].double() / 0.9, -1
        )
    joint = (second[:, None] * thirds).reshape(-1)
    assert counts.sum() > 200
    assert chi_square_p(counts, joint * counts.sum()) > 1e-3


def test_prompt_lookup_proposes_what_followed_the_latest_match():
    assert lookup([5, 6, 7, 8, 5, 6, 9, 5, 6], 3, 3) == [9, 5, 6]  # "5 6" last seen before 9
    assert lookup([1, 2, 3], 2, 3) == []
    assert lookup([4, 4], 5, 3) == [4]
    assert PromptLookup().propose([[1, 2, 1]], [0]).tokens == [[]]


def test_plain_decode_cost_derived_from_the_verify_step_matches_a_plain_compile():
    config = MptConfig(d_model=64, n_heads=4, n_layers=2, vocab_size=512, max_seq_len=128)
    plain = qc.compile(config, ctx_len=128, prefill_len=32, precision="fp16")
    tlm = qc.compile(config, ctx_len=128, prefill_len=32, precision="fp16", num_speculative_tokens=4)
    assert tlm.decode.outputs[0].shape == (1, 5, 512)  # K+1 logits
    # the plain program has one op the verify program lacks (the gather of the last position)
    assert tlm.plain_decode_step_s == pytest.approx(plain.simulation.decode_step_s, abs=2 * OP_OVERHEAD_S)
    assert tlm.plain_decode_step_s < tlm.simulation.decode_step_s  # the verify step does K+1 positions' work


def test_handoff_of_a_target_runs_prefill_and_verify_in_onnxruntime(tmp_path):
    """QEfficient's TLM I/O: a num_logits_to_keep input, logits [batch, num_logits_to_keep, vocab], Decode
    specialized at K+1 positions; ONNX Runtime runs the file as emitted and generates what the host does."""
    _, tlm, _ = compiled_pair(2, 1, 16, 3, 3, 0)
    tlm.export_qaic(tmp_path)
    specs = json.loads((tmp_path / "specializations.json").read_text())["specializations"]
    common = {"batch_size": "3", "ctx_len": str(CTX)}
    assert specs == [
        {"name": "Prefill", "symbols": {**common, "seq_len": "8", "num_logits_to_keep": "1"}},
        {"name": "Decode", "symbols": {**common, "seq_len": "4", "num_logits_to_keep": "4"}},
    ]
    graph = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False).graph
    assert graph.input[-1].name == "num_logits_to_keep"
    dims = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch_size", "num_logits_to_keep", 16]
    prompts = [[1, 2, 3, 1, 2], [4, 4, 4], [5]]
    host = tlm.generate(prompts, 12, draft="prompt-lookup")
    onnxruntime = tlm.generate(prompts, 12, draft="prompt-lookup", engine="onnxruntime")
    assert onnxruntime.new_tokens == host.new_tokens
    assert onnxruntime.stats.accepted_tokens == host.stats.accepted_tokens


def test_shipped_draft_matches_its_card_and_speaks_the_targets_vocabulary():
    """The draft was trained as its model card says (perplexity on the target's validation text) and shares the
    target's tokenizer, so `check_draft` accepts it for the shipped model."""
    card = (TINY_MPT_DRAFT / "README.md").read_text(encoding="utf-8")
    stated = float(re.search(r"^\| validation perplexity \| ([0-9.]+) \|$", card, re.M).group(1))
    draft = AutoModelForCausalLM.from_pretrained(TINY_MPT_DRAFT, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(TINY_MPT)
    ids = torch.tensor(tokenizer(TINY_MPT_VALIDATION_TEXT.read_text(encoding="utf-8"))["input_ids"])
    seq_len = draft.config.max_seq_len
    windows = ids[: len(ids) // seq_len * seq_len].view(-1, seq_len)
    assert perplexity(draft, windows) == pytest.approx(stated, rel=0.01)
    target_config = AutoConfig.from_pretrained(TINY_MPT)
    assert draft.num_parameters() < MptForCausalLM(target_config).num_parameters() / 2
    ours, theirs = (json.loads((d / "tokenizer.json").read_text())["model"] for d in (TINY_MPT, TINY_MPT_DRAFT))
    assert ours == theirs and draft.config.vocab_size == target_config.vocab_size


# -- speculative decoding with continuous batching: per-slot acceptance ------------------------------------------

SLOT_OPTIONS = {"ctx_len": CTX, "prefill_len": 8, "precision": "fp32", "verify": False}
#: context buckets of the bucketed variant (the last is ctx_len)
PREFILL_BUCKETS, DECODE_BUCKETS = [16, CTX], [12, 24, CTX]


@functools.lru_cache(maxsize=4)
def slot_target(n_heads: int, n_layers: int, vocab: int, seed: int) -> MptForCausalLM:
    config = tiny_config(d_model=4 * n_heads, n_heads=n_heads, n_layers=n_layers, vocab_size=vocab, max_seq_len=CTX)
    return random_model(config, seed)


@functools.lru_cache(maxsize=4)
def slot_tlm(n_heads: int, n_layers: int, vocab: int, seed: int, slots: int, k: int, buckets: bool):
    """A continuous-batching speculative target (with context buckets or not), cached across examples."""
    extra = {"comp_ctx_lengths_prefill": PREFILL_BUCKETS, "comp_ctx_lengths_decode": DECODE_BUCKETS} if buckets else {}
    target = slot_target(n_heads, n_layers, vocab, seed)
    return qc.compile(target, num_speculative_tokens=k, full_batch_size=slots, **SLOT_OPTIONS, **extra)


@functools.lru_cache(maxsize=2)
def slot_draft(n_heads: int, n_layers: int, vocab: int, seed: int, slots: int):
    """A perturbed draft with one slot per target slot."""
    target = slot_target(n_heads, n_layers, vocab, seed)
    return qc.compile(perturbed(target, 0.05, seed + 1), full_batch_size=slots, **SLOT_OPTIONS)


def hf_alone(model: MptForCausalLM, request: Request) -> tuple[tuple[int, ...], float]:
    """HF's plain greedy continuation of one request alone, cut where its stop rules end it (EOS, a stop
    sequence, max_new_tokens), and the smallest top-2 logit margin over the tokens kept."""
    ids = torch.tensor([request.prompt_ids])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=request.max_new_tokens,
        min_new_tokens=request.max_new_tokens, do_sample=False, pad_token_id=0, output_scores=True,
        return_dict_in_generate=True,
    )
    tokens = out.sequences[0, len(request.prompt_ids):].tolist()
    stops = request.stop_sequences
    end = next(
        (
            i + 1 for i, token in enumerate(tokens)
            if token in request.eos_token_ids or any(tuple(tokens[: i + 1][-len(s):]) == s for s in stops)
        ),
        len(tokens),
    )
    margins = [float(s[0].topk(2).values.diff().abs()) for s in out.scores[:end]]
    return tuple(tokens[:end]), min(margins)


@settings(max_examples=8, deadline=None)
@given(
    n_heads=st.sampled_from([1, 2]),
    n_layers=st.integers(1, 2),
    vocab=st.sampled_from([6, 16]),
    seed=st.integers(0, 1),
    slots=st.sampled_from([2, 3]),
    k=st.integers(1, 4),
    buckets=st.booleans(),
    data=st.data(),
)
def test_continuous_batching_speculation_equals_each_request_alone(
    n_heads, n_layers, vocab, seed, slots, k, buckets, data
):
    """More requests than slots (ragged prompts, own max_new_tokens, EOS and stop sequences, random arrival times
    and submission order): greedy verify steps with per-slot acceptance, proposed by prompt lookup and by a draft
    with its own slots, give each request HF's plain greedy output for it alone."""
    target = slot_target(n_heads, n_layers, vocab, seed)
    tlm = slot_tlm(n_heads, n_layers, vocab, seed, slots, k, buckets)
    alphabet = st.integers(0, min(vocab, 5) - 1)  # short alphabets repeat: prompt lookup finds n-grams
    requests, expected = [], {}
    for i in range(data.draw(st.integers(slots + 1, slots + 3), label="requests")):
        prompt = tuple(data.draw(st.lists(alphabet, min_size=1, max_size=12), label="prompt"))
        request = Request(
            f"r{i}",
            prompt,
            data.draw(st.integers(1, 20), label="max_new_tokens"),
            eos_token_ids=data.draw(st.sampled_from([frozenset(), frozenset({vocab - 1})]), label="eos"),
            stop_sequences=tuple(data.draw(st.lists(st.tuples(alphabet, alphabet), max_size=1), label="stops")),
            arrival_s=data.draw(st.sampled_from([0.0, 1e-4, 1e-3]), label="arrival"),
        )
        expected[request.request_id], margin = hf_alone(target, request)
        assume(margin > 1e-3)  # HF's own near-ties: rounding may pick either token
        requests.append(request)
    order = data.draw(st.permutations(requests), label="submission order")
    for draft in ("prompt-lookup", slot_draft(n_heads, n_layers, vocab, seed, slots)):
        scheduler = ContinuousBatchScheduler(tlm, proposer=tlm.slot_proposer(draft))
        results = scheduler.run(order)
        assert {r.request_id: r.tokens for r in results} == expected, draft
        stats = scheduler.stats()
        assert stats.accepted_tokens <= stats.proposed_tokens
        assert stats.verify_slot_steps == 0 or stats.accepted_tokens_per_step >= 1


def test_a_draft_equal_to_the_target_is_accepted_whole_in_every_slot():
    """The figures measure what happened: a draft with the target's weights has every proposal accepted, so each
    slot gains K+1 tokens per verify step (less where a request's room ends), and there are fewer verify steps
    than tokens; the draft's calls are charged on the simulated clock."""
    target = slot_target(2, 1, 16, 0)
    tlm = slot_tlm(2, 1, 16, 0, 2, 3, True)
    same = qc.compile(target, full_batch_size=2, **SLOT_OPTIONS)
    requests = [Request(f"r{i}", (1 + i, 2, 3), 12) for i in range(3)]
    scheduler = ContinuousBatchScheduler(tlm, proposer=tlm.slot_proposer(same))
    results = scheduler.run(requests)
    stats = scheduler.stats()
    assert stats.acceptance_rate == 1.0
    assert 3.0 < stats.accepted_tokens_per_step <= 4.0
    verify_steps = [c for c in scheduler.calls if c.kind == "decode"]
    assert len(verify_steps) < sum(len(r.tokens) for r in results) / 2
    draft_s = sum(c.seconds for c in scheduler.calls if c.kind.startswith("draft"))
    assert draft_s > 0 and scheduler.device_time_s == pytest.approx(sum(c.seconds for c in scheduler.calls))
    assert ("acceptance rate", "1.000 (" + f"{stats.accepted_tokens}/{stats.proposed_tokens})") in stats.rows()
    out = tlm.generate([list(r.prompt_ids) for r in requests], max_new_tokens=12, draft=same)
    assert out.new_tokens == tuple(r.tokens for r in results)
    assert out.stats.acceptance_rate == 1.0
    assert 3.0 < out.stats.kept_tokens_per_step <= out.stats.accepted_tokens_per_step <= 4.0


def test_rejected_tokens_of_a_slot_are_never_attended():
    """As `test_rejected_tokens_are_never_attended`, through slots: before every verify step, each live slot's
    cache from that step's first position on (its rejected proposals, and what an earlier request left in the
    slot) is overwritten with garbage; the logits of every real position stay bit-identical. Garbage from one
    position earlier (an accepted token) changes them."""
    tlm = slot_tlm(2, 2, 16, 1, 2, 4, False)
    draft = qc.compile(perturbed(slot_target(2, 2, 16, 1), 0.3, 5), full_batch_size=2, **SLOT_OPTIONS)
    _check_poisoned_runs(tlm, draft, [[1, 2, 3, 1, 2, 3, 1], [4, 5], [6, 6, 6, 7], [3, 1]], 16)


def test_handoff_of_a_target_with_slots_and_buckets_runs_in_onnxruntime(tmp_path):
    """A target with full_batch_size and context buckets: the hand-off writes every specialization with
    QEfficient's TLM and continuous-batching symbols, and ONNX Runtime runs the file as emitted (batch_index,
    comp_ctx_lengths, num_logits_to_keep) through the scheduler to what the host generates (whose streamer saw
    every token a verify step gained)."""
    tlm = slot_tlm(2, 1, 16, 0, 2, 3, True)
    tlm.export_qaic(tmp_path)
    specs = json.loads((tmp_path / "specializations.json").read_text())["specializations"]
    prefill = {"batch_size": "1", "seq_len": "8", "ctx_len": str(CTX)}
    decode = {"batch_size": "2", "seq_len": "4", "ctx_len": str(CTX)}
    expected = [
        {"name": f"Prefill_{i}", "symbols": {**prefill, "comp_ctx_lengths": str(b), "num_logits_to_keep": "1",
                                             "full_batch_size": "2", "full_batch_exec_size": "1"}}
        for i, b in enumerate(PREFILL_BUCKETS)
    ] + [
        {"name": f"Decode_{i}", "symbols": {**decode, "comp_ctx_lengths": str(b), "num_logits_to_keep": "4",
                                            "full_batch_size": "2"}}
        for i, b in enumerate(DECODE_BUCKETS)
    ]
    assert specs == expected
    graph = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False).graph
    names = [i.name for i in graph.input]
    assert names[-4:] == ["comp_ctx_lengths", "position_ids", "batch_index", "num_logits_to_keep"]
    prompts = [[1, 2, 3, 1, 2], [4, 4, 4], [5], [2, 3, 2, 3]]
    streamed: list[list[int]] = [[] for _ in prompts]

    def streamer(step, tokens):  # every token a verify step gained, in order
        for row, token in enumerate(tokens.tolist()):
            streamed[row] += [token] * (token >= 0)

    host = tlm.generate(prompts, 12, draft="prompt-lookup", streamer=streamer)
    assert tuple(map(tuple, streamed)) == host.new_tokens
    onnxruntime = tlm.generate(prompts, 12, draft="prompt-lookup", engine="onnxruntime")
    assert onnxruntime.new_tokens == host.new_tokens
    assert onnxruntime.stats.accepted_tokens == host.stats.accepted_tokens > 0


def test_qeffc_run_serves_a_workload_with_a_draft(tmp_path, capsys):
    """`qeffc run --requests FILE --draft DIR` on a speculative target with slots: the draft's calls are on the
    per-slot trace and the serving table reports acceptance."""
    slot_tlm(2, 1, 16, 0, 2, 3, True).save(tmp_path / "target")
    slot_draft(2, 1, 16, 0, 2).save(tmp_path / "draft")
    workload = tmp_path / "workload.json"
    requests = [{"id": f"r{i}", "token_ids": [1 + i, 2, 1 + i, 2], "max_new_tokens": 6 + i} for i in range(3)]
    workload.write_text(json.dumps({"requests": requests}))
    trace = tmp_path / "slots.json"
    argv = ["run", str(tmp_path / "target"), "--requests", str(workload), "--draft", str(tmp_path / "draft")]
    capsys.readouterr()
    assert cli.run([*argv, "--trace", str(trace)]) == 0
    printed = capsys.readouterr().out
    assert "acceptance rate" in printed and "accepted tokens per slot per step" in printed
    events = json.loads(trace.read_text())["traceEvents"]
    kinds = {e["cat"] for e in events if e["ph"] == "X"}
    assert kinds == {"prefill", "draft-prefill", "draft", "decode"}


def test_sampled_requests_in_slots_draw_what_they_draw_alone():
    """Each slot accepts with its own request's sampler (settings and seeded stream): sampled requests served
    together through two slots produce exactly what each produces served alone, and proposals were both
    accepted and rejected on the way."""
    tlm = slot_tlm(2, 1, 16, 0, 2, 3, False)
    settings_ = [SamplingConfig(True, 0.8, 0, 1.0, 1), SamplingConfig(True, 1.3, 5, 0.9, 2),
                 SamplingConfig(True, 1.0, 0, 1.0, 3), SamplingConfig(False)]
    requests = [Request(f"r{i}", (1, 2, 1, 2, 1 + i), 10, sampling) for i, sampling in enumerate(settings_)]
    together = ContinuousBatchScheduler(tlm, proposer=tlm.slot_proposer("prompt-lookup"))
    results = together.run(requests)
    stats = together.stats()
    assert 0 < stats.accepted_tokens < stats.proposed_tokens
    for request, result in zip(requests, results, strict=True):
        alone = ContinuousBatchScheduler(tlm, proposer=tlm.slot_proposer("prompt-lookup")).run([request])
        assert alone[0].tokens == result.tokens, request.request_id


def _poisoned(verify, run: int, recorded: list[torch.Tensor]):
    """`verify` with each row's (slot's) cache overwritten by garbage before the call: run 1 from the call's
    first position on (where rejected proposals stay), run 2 from one position earlier (an accepted token: the
    control), run 0 untouched. Records the logits of every real position (padding's and idle slots' are unused)."""

    def call(inputs):
        inputs = dict(inputs)
        valid = inputs["position_ids"] >= 0
        first = inputs["position_ids"].masked_fill(~valid, CTX).amin(dim=1)
        for name in [n for n in inputs if n.startswith("past_")]:
            cache = inputs[name].clone()
            for row, start in enumerate(first.tolist()):
                begin = start if run == 1 else max(start - 1, 0)
                if start < CTX and run:
                    cache[row, :, begin:] = 1e4 * torch.sign(torch.randn(cache[row, :, begin:].shape))
            inputs[name] = cache
        outputs = verify(inputs)
        recorded.append(outputs["logits"][valid])
        return outputs

    return call


def _check_poisoned_runs(tlm, draft, prompts, max_new_tokens):
    """Generate with each of `_poisoned`'s three runs: the stale slots are never read when the outputs and logits
    of runs 0 and 1 agree, and run 2 shows the poisoning reaches what attention reads."""
    prefill, verify = tlm.generation_executors()
    recorded: list[list[torch.Tensor]] = [[], [], []]
    results = []
    for run in range(3):
        tlm._executors["host-donating"] = (prefill, _poisoned(verify, run, recorded[run]))
        results.append(tlm.generate(prompts, max_new_tokens=max_new_tokens, draft=draft))
    tlm._executors["host-donating"] = (prefill, verify)
    stats = results[0].stats
    assert 0 < stats.accepted_tokens < stats.proposed_tokens  # there were rejected proposals to roll back
    assert results[1].new_tokens == results[0].new_tokens
    assert all(torch.equal(a, b) for a, b in zip(recorded[0], recorded[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(recorded[0], recorded[2], strict=False))
