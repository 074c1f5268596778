"""Structured pruning: accuracy cost, parameters and simulated decode per pruning level, and the autotuner's run.

- `run`: the shipped model at each (FFN share, head share, score), scored teacher-forced against HF's fp32 model
  (`qc.evaluate`'s Evaluator: HF's logits once, fp32 programs), its parameter count and simulated decode
  (`estimate`, fp16, ai100-standard, prompt 64, generate 64); and MPT-7B's shape (config only, mxfp6, ctx 2048,
  prompt 1024, generate 1024) dense and with 25 % of its FFN channels pruned.
- `tune`: `qc.tune` on the shipped model with its default search space and a 2 % perplexity budget: the choice,
  the Pareto front's size and the search's wall time.

    python -m bench --only pruning --only tune
"""

from __future__ import annotations

import os
import time

import qeff_compiler as qc
from qeff_compiler.capture.presets import preset_config
from qeff_compiler.data import TINY_MPT
from qeff_compiler.evaluate import Evaluator

#: (prune_ffn, prune_heads, prune_score) rows of the shipped model's table
LEVELS = ((0.0, 0.0, "magnitude"), (0.125, 0.0, "magnitude"), (0.25, 0.0, "magnitude"), (0.0, 0.25, "magnitude"),
          (0.25, 0.0, "activation"))
QUICK_LEVELS = ((0.0, 0.0, "magnitude"), (0.25, 0.0, "magnitude"))


def run(quick: bool = False) -> dict:
    """Quick: dense and 25 % FFN on 512 tokens; no MPT-7B rows."""
    evaluator = Evaluator(TINY_MPT, max_tokens=512 if quick else None)
    rows = []
    for ffn, heads, score in QUICK_LEVELS if quick else LEVELS:
        report = evaluator("fp32", prune_ffn=ffn, prune_heads=heads, prune_score=score)
        compiled = qc.compile(TINY_MPT, precision="fp16", prune_ffn=ffn, prune_heads=heads, prune_score=score,
                              ctx_len=128, prefill_len=32, verify=False)
        rows.append({
            "prune_ffn": ffn, "prune_heads": heads, "score": score, "tokens": report.tokens_scored,
            "parameters": compiled.decode.num_parameters(), "perplexity": report.perplexity,
            "reference_perplexity": report.reference_perplexity, "token_agreement": report.token_agreement,
            "simulated_decode_tokens_per_s": compiled.estimate(prompt_len=64, generation_len=64).decode_tokens_per_s,
        })
    at_7b = []
    for ffn in () if quick else (0.0, 0.25):
        compiled = qc.compile(preset_config("mpt-7b"), precision="mxfp6", ctx_len=2048, prefill_len=128, prune_ffn=ffn)
        at_7b.append({"prune_ffn": ffn, "parameters": compiled.decode.num_parameters(),
                      "simulated_decode_tokens_per_s": compiled.estimate(1024, 1024).decode_tokens_per_s})
    return {"shipped": rows, "mpt_7b_mxfp6": at_7b}


def tune(quick: bool = False) -> dict:
    """The full default search (quick: int8 alone, one SoC, prefill 32, 512 tokens)."""
    narrow = {"precisions": ("int8",), "kv_cache_dtypes": (None,), "prune_levels": (0.0,), "num_devices": (1,),
              "prefill_lens": (32,), "max_tokens": 512} if quick else {}
    start = time.perf_counter()
    result = qc.tune(TINY_MPT, device="ai100-standard", max_ppl_increase=0.02, **narrow)
    chosen = result.chosen
    return {
        "wall_s": time.perf_counter() - start, "search_s": result.seconds, "load_average_1min": os.getloadavg()[0],
        "evaluations": result.evaluations, "candidates": len(result.candidates),
        "pareto_front": len(result.pareto_front), "tokens_scored": result.tokens_scored,
        "chosen": None if chosen is None else chosen.describe(),
        "chosen_perplexity_increase": None if chosen is None else chosen.perplexity_increase,
        "chosen_tokens_per_s": None if chosen is None else chosen.tokens_per_s,
    }
