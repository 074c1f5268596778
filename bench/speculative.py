"""Speculative decoding on the shipped model: acceptance, tokens per step, simulated and host speed-up.

The target is `tiny-mpt-pystdlib` compiled with `num_speculative_tokens=K`; the proposers are its draft
(`tiny-mpt-pystdlib-draft`, trained by `tools/train_fixture.py --draft`) and prompt lookup. Prompts are windows of
the held-back validation text (Python source the models never trained on): each row continues a 64-token
window of a validation file by greedy decoding, plain and speculative, in fp32 on the host.

Figures per proposer and K:
- acceptance rate and accepted tokens per verify step (measured on the shipped pair, greedy);
- simulated speed-up on the shipped shape (ai100-standard: the models' own verify, draft and plain steps);
- simulated speed-up at MPT-7B shape (ai100-standard, mxfp6): the measured step counts (verify steps, draft
  decode calls) re-timed with the cost model's steps of MPT-7B compiled from its config with the same K, and of
  the draft's shape scaled as the shipped model scales to MPT-7B (width x16, depth x8, heads x4, MPT-7B's
  vocabulary): d_model 2048, 16 heads, 16 layers. Plain decoding's step is MPT-7B's own single-token step;
- host speed-up: wall time of plain greedy over speculative greedy, same prompts, this machine: after a warm-up
  call of each model, plain and speculative runs alternate (REPEATS pairs per setting, 1 in --quick) and the
  medians are compared, so a change of the machine's load during the section skews both sides alike.

    python -m bench.speculative [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence

from transformers import AutoTokenizer, MptConfig

import qeff_compiler as qc
from qeff_compiler.capture.presets import preset_config
from qeff_compiler.data import TINY_MPT, TINY_MPT_DRAFT, TINY_MPT_VALIDATION_TEXT

#: (proposer, K) settings of the full run
SETTINGS = (("draft", 2), ("draft", 4), ("draft", 6), ("prompt-lookup", 4))
QUICK_SETTINGS = (("draft", 4), ("prompt-lookup", 4))
PROMPT_TOKENS, NEW_TOKENS, CTX = 64, 64, 256
#: alternating (plain, speculative) timing pairs per setting in the full run
REPEATS = 5
SEVEN_B = "mpt-7b"


def prompts(count: int) -> list[list[int]]:
    """`count` 64-token windows, one from the start of each of the first validation files (EOT-separated)."""
    tokenizer = AutoTokenizer.from_pretrained(TINY_MPT)
    files = [f for f in TINY_MPT_VALIDATION_TEXT.read_text(encoding="utf-8").split("<|endoftext|>") if f.strip()]
    windows = [tokenizer.encode(text)[:PROMPT_TOKENS] for text in files]
    return [w for w in windows if len(w) == PROMPT_TOKENS][:count]


def draft_shape_at_7b() -> MptConfig:
    """The draft's shape scaled by the factors that take the shipped model to MPT-7B."""
    target, draft, seven = qc.capture(TINY_MPT).config, qc.capture(TINY_MPT_DRAFT).config, preset_config(SEVEN_B)
    width, depth = seven.d_model // target.d_model, seven.n_layers // target.n_layers
    heads = seven.n_heads // target.n_heads
    return MptConfig(
        d_model=draft.d_model * width, n_heads=draft.n_heads * heads, n_layers=draft.n_layers * depth,
        vocab_size=seven.vocab_size, max_seq_len=seven.max_seq_len,
    )


def seven_b_steps(ks: Sequence[int]) -> dict[str, float]:
    """Simulated seconds of MPT-7B's plain step, its K+1 verify step per K, and the 7B-shaped draft's step."""
    options = {"precision": "mxfp6", "device": "ai100-standard", "ctx_len": 2048, "prefill_len": 128}
    steps = {
        "plain": qc.compile(preset_config(SEVEN_B), **options).simulation.decode_step_s,
        "draft": qc.compile(draft_shape_at_7b(), **options).simulation.decode_step_s,
    }
    for k in ks:
        target = qc.compile(preset_config(SEVEN_B), num_speculative_tokens=k, **options)
        steps[f"verify_{k}"] = target.simulation.decode_step_s
    return steps


def timed(call):
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def run(quick: bool = False) -> dict:
    settings = QUICK_SETTINGS if quick else SETTINGS
    rows_in = prompts(2 if quick else 8)
    new = 16 if quick else NEW_TOKENS
    options = {"ctx_len": CTX, "prefill_len": 32, "batch_size": 1, "verify": False}
    plain = qc.compile(TINY_MPT, **options)
    draft = qc.compile(TINY_MPT_DRAFT, **options)
    targets = {k: qc.compile(TINY_MPT, num_speculative_tokens=k, **options) for k in sorted({k for _, k in settings})}
    steps_7b = seven_b_steps(sorted(targets))
    plain.generate([rows_in[0]], 4, eos_token_id=[])  # warm-up: first calls pay one-off set-up costs
    for target in targets.values():
        for proposer in (draft, "prompt-lookup"):
            target.generate([rows_in[0]], 4, eos_token_id=[], draft=proposer)
    rows = []
    for name, k in settings:
        target, proposer = targets[k], draft if name == "draft" else "prompt-lookup"
        plain_times, spec_times = [], []
        for _ in range(1 if quick else REPEATS):
            plain_runs, plain_s = timed(lambda: [plain.generate([p], new, eos_token_id=[]) for p in rows_in])
            runs, spec_s = timed(
                lambda target=target, proposer=proposer: [
                    target.generate([p], new, eos_token_id=[], draft=proposer) for p in rows_in
                ]
            )
            plain_times.append(plain_s)
            spec_times.append(spec_s)
        assert all(a.new_tokens == b.new_tokens for a, b in zip(runs, plain_runs, strict=True)), "greedy differs"
        proposed = sum(r.stats.proposed_tokens for r in runs)
        accepted = sum(r.stats.accepted_tokens for r in runs)
        verify_steps = sum(r.stats.verify_slot_steps for r in runs)
        decode_tokens = sum(r.stats.decode_tokens for r in runs)
        simulated_shipped = sum(r.stats.decode_s for r in runs)
        plain_shipped = decode_tokens * target.plain_decode_step_s
        draft_calls = sum(r.stats.draft_decode_calls for r in runs)
        seven_spec = verify_steps * steps_7b[f"verify_{k}"] + draft_calls * steps_7b["draft"]
        rows.append({
            "proposer": name,
            "num_speculative_tokens": k,
            "prompts": len(rows_in),
            "new_tokens_per_prompt": new,
            "acceptance_rate": accepted / proposed if proposed else None,
            "accepted_tokens_per_step": (accepted + verify_steps) / verify_steps,
            "draft_decode_calls_per_step": draft_calls / verify_steps,
            "simulated_speedup_shipped_vs_plain": plain_shipped / simulated_shipped,
            "simulated_speedup_mpt7b_mxfp6_vs_plain": decode_tokens * steps_7b["plain"] / seven_spec,
            "simulated_mpt7b_mxfp6_decode_tokens_per_s": decode_tokens / seven_spec,
            "host_speedup_vs_plain": statistics.median(plain_times) / statistics.median(spec_times),
            "host_timing_pairs": len(plain_times),
        })
    return {
        "target": "tiny-mpt-pystdlib",
        "draft": "tiny-mpt-pystdlib-draft",
        "mpt7b_steps_s": steps_7b,
        "mpt7b_plain_decode_tokens_per_s": 1 / steps_7b["plain"],
        "draft_shape_at_7b": {
            field: getattr(draft_shape_at_7b(), field) for field in ("d_model", "n_heads", "n_layers", "vocab_size")
        },
        "load_average": os.getloadavg()[0],
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(run(parser.parse_args().quick), indent=2))


if __name__ == "__main__":
    main()
