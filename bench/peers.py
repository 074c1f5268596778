"""Host throughput of the compiled program vs its peers: HF eager `generate` and ONNX Runtime, same machine, same run.

A CPU user choosing a tool compares it with what they would otherwise run. This bench measures, interleaved within
one run, the host prefill and decode throughput (tokens/s, summed over the batch) of:

- `qeff-fp32`, `qeff-int8`: `qc.compile(model, precision=P, ctx_len=prompt+new, prefill_len=prompt, batch_size=B)`
  then `compiled.generate(prompts, max_new_tokens=N, eos_token_id=[])` on the reference host executor;
  `qeff-ort-fp32`, `qeff-ort-int8`: the same compiled models with `engine="onnxruntime"` (their ONNX emit, as the
  artifact ships it, on ONNX Runtime). Prefill is `out.stats.host_prefill_s`
  (the one prefill chunk); decode is the N − 1 `out.stats.host_token_latencies_s` (each step: program call + greedy
  pick), i.e. B × `host_decode_tokens_per_s`, which is per sequence.
- `qaic-ort`: the Cloud AI 100 hand-off graph of the fp32 compile (`backends.qaic`: one symbolic ONNX for prefill
  and decode, cache written by `CtxScatter`) on ONNX Runtime, driven by the same plain greedy loop as
  `onnxruntime` below: one prefill call over the prompt, then one call per token feeding back the retained state.
  (`qeff-ort-fp32` runs this graph too, through `compiled.generate`.)
- `hf-eager`: `MptForCausalLM.generate(ids, attention_mask=ones, max_new_tokens=N, min_new_tokens=N,
  do_sample=False, use_cache=True)` with its own `DynamicCache` (`use_cache=True` because the shipped config says
  false). A streamer timestamps every `put`: generate puts the prompt just before its prefill, then each new token,
  so prefill is prompt put → first token (cache set-up, the prompt forward with `logits_to_keep=1`, logits
  processors, argmax) and decode step k is token k → token k + 1, all inside one generate call.
- `onnxruntime`: a `torch.onnx.export(dynamo=True)` of HF's model through a wrapper that takes the past keys and
  values as flat tensors, builds a `DynamicCache` from them and returns the last position's logits and the new
  flat cache: a prefill graph (input_ids, attention_mask → logits, present.*) and a decode graph (input_ids,
  attention_mask, past.* → logits, present.*), batch, prompt and past length all dynamic (no padding). A plain
  greedy loop drives them (numpy in and out, `argmax` per step); prefill is the prefill run + argmax, each decode
  step a decode run + argmax. Before any timing, its greedy tokens must equal HF's on the shipped model.

Every system decodes exactly N greedy tokens from the same prompts (windows of the shipped validation text; seeded
random ids for the random model). Figures are medians of the timed runs after warm-up with min and max, the four
systems interleaved (order rotated each repeat); each ratio compares medians from this run. torch and ORT both get
`threads` intra-op threads (ORT: one inter-op thread, sequential execution).

    python -m bench.peers [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, MptForCausalLM
from transformers.generation.streamers import BaseStreamer

import qeff_compiler as qc
from qeff_compiler.capture.presets import preset_config
from qeff_compiler.data import TINY_MPT, TINY_MPT_VALIDATION_TEXT
from qeff_compiler.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results" / "peers.json"
#: qeff-P: the reference host executor; qeff-ort-P: the same compiled program's ONNX emit on ONNX Runtime
SYSTEMS = ("qeff-fp32", "qeff-int8", "qeff-ort-fp32", "qeff-ort-int8", "qaic-ort", "hf-eager", "onnxruntime")
SHIPPED = "tiny-mpt-pystdlib (shipped)"
RANDOM_125M = "mpt-125m shape (random weights)"


@dataclass(frozen=True)
class Settings:
    """What one mode measures: lengths, batches, models and how many runs."""

    prompt_len: int
    new_tokens: int
    batches: tuple[int, ...]
    models: tuple[str, ...]
    warmup: int
    repeats: int


FULL = Settings(prompt_len=128, new_tokens=64, batches=(1, 4), models=(SHIPPED, RANDOM_125M), warmup=1, repeats=5)
#: the CI check of the schema: shipped model, batch 1, one timed run (< 30 s on a 2-core machine)
QUICK = Settings(prompt_len=16, new_tokens=8, batches=(1,), models=(SHIPPED,), warmup=1, repeats=1)


@dataclass(frozen=True)
class Run:
    """One generate call: the greedy tokens [batch, new_tokens], the prefill wall time and each decode step's."""

    tokens: torch.Tensor
    prefill_s: float
    step_s: tuple[float, ...]


Generator = Callable[[torch.Tensor], Run]


def measure_peers(quick: bool = False, threads: int = 2) -> list[dict]:
    """One row per (model, batch, system) with tokens/s (median, min, max) and same-run ratios vs HF and ORT."""
    settings = QUICK if quick else FULL
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows = []
        for name in settings.models:
            model = load_model(name)
            with tempfile.TemporaryDirectory() as directory:
                ort_greedy = OrtGreedy(model, Path(directory), threads)
                for batch in settings.batches:
                    print(f"peers: {name}, batch {batch}", file=sys.stderr, flush=True)
                    ids = prompts(name, model, batch, settings.prompt_len)
                    runs = interleaved_runs(name, model, ort_greedy, ids, settings)
                    rows += summarize(runs, name, ids, settings, threads)
        return rows
    finally:
        torch.set_num_threads(previous_threads)


def load_model(name: str) -> MptForCausalLM:
    """The shipped trained MPT in fp32, or an MPT-125M-shaped model with seeded random weights."""
    if name == SHIPPED:
        return AutoModelForCausalLM.from_pretrained(TINY_MPT, dtype=torch.float32).eval()
    torch.manual_seed(0)
    return MptForCausalLM(preset_config("mpt-125m")).eval()


def prompts(name: str, model: MptForCausalLM, batch: int, length: int) -> torch.Tensor:
    """[batch, length] prompt ids: consecutive windows of the validation text for the shipped model (real code, so
    greedy decoding is meaningful), seeded random ids for the random model."""
    if name == SHIPPED:
        text = TINY_MPT_VALIDATION_TEXT.read_text()[:20_000]
        ids = AutoTokenizer.from_pretrained(TINY_MPT)(text, verbose=False)["input_ids"]
        return torch.tensor(ids[: batch * length], dtype=torch.int64).reshape(batch, length)
    return torch.randint(1, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(batch))


def interleaved_runs(
    name: str, model: MptForCausalLM, ort_greedy: OrtGreedy, ids: torch.Tensor, settings: Settings
) -> dict[str, list[Run]]:
    """Warm-up and timed runs of every system on one batch of prompts, interleaved (the order rotates each repeat)
    so that load changes on a shared machine hit all systems alike. Refuses to time an ORT that decodes the shipped
    model differently from HF."""
    new_tokens = settings.new_tokens
    generators: dict[str, Generator] = {"hf-eager": hf_generator(model, new_tokens)}
    for precision in ("fp32", "int8"):
        compiled = compile_for(model, precision, ids.shape, new_tokens)
        generators[f"qeff-{precision}"] = qeff_generator(compiled, "host", new_tokens)
        generators[f"qeff-ort-{precision}"] = qeff_generator(compiled, "onnxruntime", new_tokens)
        if precision == "fp32":
            handoff = HandoffGreedy(compiled, torch.get_num_threads())
            generators["qaic-ort"] = lambda prompt: handoff(prompt, new_tokens)
    generators.update({
        "onnxruntime": lambda prompt: ort_greedy(prompt, new_tokens),
    })
    runs: dict[str, list[Run]] = {system: [] for system in SYSTEMS}
    for repeat in range(settings.warmup + settings.repeats):
        shift = repeat % len(SYSTEMS)
        for system in SYSTEMS[shift:] + SYSTEMS[:shift]:
            runs[system].append(generators[system](ids))
        hf_tokens, ort_tokens = runs["hf-eager"][0].tokens, runs["onnxruntime"][0].tokens
        if repeat == 0 and name == SHIPPED and not torch.equal(ort_tokens, hf_tokens):
            raise AssertionError(f"ONNX Runtime's greedy tokens differ from HF's on the shipped model: {ort_tokens} "
                                 f"vs {hf_tokens}")
    return runs


def summarize(runs: dict[str, list[Run]], name: str, ids: torch.Tensor, settings: Settings, threads: int) -> list[dict]:
    """Rows of rates over the timed runs (tokens/s summed over the batch), same-run ratios of medians, and whether
    each system's greedy tokens equal HF eager's (every run; the agreement fraction is the first run's)."""
    batch, prompt_len = ids.shape
    timed = {system: system_runs[settings.warmup :] for system, system_runs in runs.items()}
    rates = {
        system: {
            "prefill": [batch * prompt_len / run.prefill_s for run in system_runs],
            "decode": [batch * len(run.step_s) / sum(run.step_s) for run in system_runs],
        }
        for system, system_runs in timed.items()
    }
    median = {system: {kind: statistics.median(v) for kind, v in by_kind.items()} for system, by_kind in rates.items()}
    reference = runs["hf-eager"][0].tokens
    rows = []
    for system in SYSTEMS:
        row = {
            "model": name,
            "batch": batch,
            "system": system,
            "prompt_len": prompt_len,
            "new_tokens": settings.new_tokens,
            "runs": settings.repeats,
            "torch_threads": threads,
            "ort_intra_op_threads": threads,
            "prefill_tokens_per_s": spread(rates[system]["prefill"]),
            "decode_tokens_per_s": spread(rates[system]["decode"]),
            "tokens_match_hf_eager": all(torch.equal(run.tokens, reference) for run in runs[system]),
            "token_agreement_with_hf_eager": (runs[system][0].tokens == reference).double().mean().item(),
        }
        for kind in ("decode", "prefill"):
            for peer in ("hf-eager", "onnxruntime"):
                row[f"{kind}_vs_{peer.replace('-', '_')}"] = median[system][kind] / median[peer][kind]
        rows.append(row)
    return rows


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def compile_for(model: MptForCausalLM, precision: str, shape: torch.Size, new_tokens: int) -> qc.CompiledModel:
    """The compiled program for this batch: one prefill chunk holding the whole prompt, a cache just long enough."""
    batch, prompt_len = shape
    return qc.compile(
        model, precision=precision, ctx_len=prompt_len + new_tokens, prefill_len=prompt_len, batch_size=batch,
        verify=False,
    )


def qeff_generator(compiled: qc.CompiledModel, engine: str, new_tokens: int) -> Generator:
    """`compiled.generate` on `engine`; EOS is disabled so that it decodes exactly `new_tokens` like its peers."""

    def run(ids: torch.Tensor) -> Run:
        out = compiled.generate(ids, max_new_tokens=new_tokens, eos_token_id=[], engine=engine)
        return Run(torch.tensor(out.new_tokens), out.stats.host_prefill_s, out.stats.host_token_latencies_s)

    return run


class _Clock(BaseStreamer):
    """Timestamps each `put` of HF generate: the prompt (just before prefill), then every new token."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def hf_generator(model: MptForCausalLM, new_tokens: int) -> Generator:
    """HF eager greedy generate with its own cache, prefill and decode steps timed by a streamer."""

    def run(ids: torch.Tensor) -> Run:
        clock = _Clock()
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, use_cache=True, pad_token_id=model.config.eos_token_id, streamer=clock,
        )
        times = clock.times
        steps = tuple(later - earlier for earlier, later in itertools.pairwise(times[1:]))
        return Run(out[:, ids.shape[1] :], times[1] - times[0], steps)

    return run


class _FlatCacheLM(torch.nn.Module):
    """HF's MPT with its cache as flat graph inputs/outputs (key.0, value.0, key.1, ...): transformers 5 wants a
    `DynamicCache`, which an ONNX graph cannot carry, so the cache is rebuilt from tensors inside the graph."""

    def __init__(self, model: MptForCausalLM) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        cache = DynamicCache(list(zip(past[0::2], past[1::2]))) if past else None
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True, logits_to_keep=1
        )
        present = [tensor for layer in out.past_key_values.layers for tensor in (layer.keys, layer.values)]
        return (out.logits[:, -1], *present)


class OrtGreedy:
    """ONNX Runtime over the prefill and decode graphs of `_FlatCacheLM`, driven by a plain greedy loop."""

    def __init__(self, model: MptForCausalLM, directory: Path, threads: int) -> None:
        config = model.config
        layers, heads, head_dim = config.n_layers, config.n_heads, config.d_model // config.n_heads
        self.past_names = [f"past_{kind}.{i}" for i in range(layers) for kind in ("key", "value")]
        present_names = [f"present_{kind}.{i}" for i in range(layers) for kind in ("key", "value")]
        # dynamic dims must stay below max_seq_len: HF slices its ALiBi table there, and 256 would specialize
        batch = torch.export.Dim("batch", min=1, max=64)
        seq = torch.export.Dim("seq", min=2, max=config.max_seq_len - 1)
        past_len = torch.export.Dim("past", min=2, max=config.max_seq_len - 2)
        ids = torch.ones(2, 8, dtype=torch.int64)  # batch 2 and length 8: example sizes that are not specialized
        wrapper = _FlatCacheLM(model).eval()
        with _quiet_export():
            prefill = torch.onnx.export(
                wrapper, (ids, torch.ones_like(ids)), dynamo=True, verbose=False,
                dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
                input_names=["input_ids", "attention_mask"], output_names=["logits", *present_names],
            )
            past = tuple(torch.zeros(2, heads, 8, head_dim) for _ in self.past_names)
            decode = torch.onnx.export(
                wrapper, (ids[:, :1], torch.ones(2, 9, dtype=torch.int64), *past), dynamo=True, verbose=False,
                dynamic_shapes=({0: batch}, {0: batch, 1: past_len + 1}, ({0: batch, 2: past_len},) * len(past)),
                input_names=["input_ids", "attention_mask", *self.past_names], output_names=["logits", *present_names],
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.sessions = []
        for name, program in (("prefill", prefill), ("decode", decode)):
            path = str(directory / f"{name}.onnx")
            program.save(path)
            self.sessions.append(ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]))

    def __call__(self, ids: torch.Tensor, new_tokens: int) -> Run:
        prefill, decode = self.sessions
        prompt = ids.numpy()
        start = time.perf_counter()
        logits, *past = prefill.run(None, {"input_ids": prompt, "attention_mask": np.ones_like(prompt)})
        token = logits.argmax(-1)
        prefill_s = time.perf_counter() - start
        tokens, steps = [token], []
        for _ in range(new_tokens - 1):
            start = time.perf_counter()
            mask = np.ones((prompt.shape[0], prompt.shape[1] + len(tokens)), dtype=np.int64)
            feed = {"input_ids": token[:, None], "attention_mask": mask}
            feed.update(zip(self.past_names, past, strict=True))
            logits, *past = decode.run(None, feed)
            token = logits.argmax(-1)
            steps.append(time.perf_counter() - start)
            tokens.append(token)
        return Run(torch.from_numpy(np.stack(tokens, axis=1)), prefill_s, tuple(steps))


class HandoffGreedy:
    """ONNX Runtime over the qaic hand-off graph of an fp32 compile, driven by a plain greedy loop: the prompt in one
    prefill call (the compile's prefill_len is the prompt length), then one call per token."""

    def __init__(self, compiled: qc.CompiledModel, threads: int) -> None:
        from qeff_compiler.backends.qaic.engine import HandoffSession

        self.handoff = HandoffSession(compiled, threads)  # keeps the exported graph alive
        self.ctx_len = compiled.options.ctx_len

    def __call__(self, ids: torch.Tensor, new_tokens: int) -> Run:
        session = self.handoff.session
        prompt = ids.numpy()
        batch, length = prompt.shape
        feed = {
            value.name: np.zeros((batch, value.shape[1], self.ctx_len, value.shape[3]), np.float32)
            for value in session.get_inputs()
            if value.name.startswith("past_")
        }
        names = [value.name for value in session.get_outputs()]
        positions = np.broadcast_to(np.arange(length), prompt.shape)
        tokens, steps, prefill_s = [], [], 0.0
        for step in range(new_tokens):
            start = time.perf_counter()
            logits, *cache = session.run(None, {**feed, "input_ids": prompt, "position_ids": positions})
            token = logits[:, 0].argmax(-1)
            elapsed = time.perf_counter() - start
            if step == 0:
                prefill_s = elapsed
            else:
                steps.append(elapsed)
            tokens.append(token)
            feed.update(zip((name.removesuffix("_RetainedState") for name in names[1:]), cache, strict=True))
            prompt, positions = token[:, None], np.full((batch, 1), length + step, np.int64)
        return Run(torch.from_numpy(np.stack(tokens, axis=1)), prefill_s, tuple(steps))


@contextmanager
def _quiet_export() -> Iterator[None]:
    """The exporter warns about unrelated optional packages and axis renames on every call; keep the table readable."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shipped model, batch 1, tiny lengths, one timed run")
    parser.add_argument("--threads", type=int, default=2, help="torch threads and ORT intra-op threads")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    load_before = os.getloadavg()[0]
    rows = measure_peers(quick=args.quick, threads=args.threads)
    print(f"host throughput, tokens/s summed over the batch: median [min-max] of {settings.repeats} run(s) after "
          f"{settings.warmup} warm-up; prompt {settings.prompt_len}, {settings.new_tokens} new tokens, "
          f"{args.threads} threads")
    print(f"{'model':<32} {'B':>2} {'system':<14} {'prefill tok/s':>24} {'decode tok/s':>24} "
          f"{'dec/HF':>7} {'dec/ORT':>7} {'pre/HF':>7} {'pre/ORT':>7} {'=HF':>4}")
    for r in rows:
        pre, dec = r["prefill_tokens_per_s"], r["decode_tokens_per_s"]
        print(f"{r['model']:<32} {r['batch']:>2} {r['system']:<14} "
              f"{pre['median']:>8.0f} [{pre['min']:>6.0f}-{pre['max']:>6.0f}] "
              f"{dec['median']:>8.1f} [{dec['min']:>6.1f}-{dec['max']:>6.1f}] "
              f"{r['decode_vs_hf_eager']:>7.2f} {r['decode_vs_onnxruntime']:>7.2f} {r['prefill_vs_hf_eager']:>7.2f} "
              f"{r['prefill_vs_onnxruntime']:>7.2f} {'yes' if r['tokens_match_hf_eager'] else 'no':>4}")
    RESULTS.parent.mkdir(exist_ok=True)
    atomic_write_text(RESULTS, json.dumps({
        "quick": args.quick,
        "torch_threads": args.threads,
        "ort_intra_op_threads": args.threads,
        "prompt_len": settings.prompt_len,
        "new_tokens": settings.new_tokens,
        "warmup": settings.warmup,
        "repeats": settings.repeats,
        # other work on a shared machine preempts the 2-thread parallel regions and skews every figure: judge by this
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "versions": {
            "torch": torch.__version__, "transformers": transformers.__version__, "onnxruntime": ort.__version__
        },
        "rows": rows,
    }, indent=2))


if __name__ == "__main__":
    main()
