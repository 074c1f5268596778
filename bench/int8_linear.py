"""int8 linear kernels against fp32 `F.linear` at MPT-125M and MPT-7B shapes, batch-1 decode and 32-token prefill.

Methods, each timed as the median, min and max of `--repeats` calls after warm-up:
- fp32:    F.linear(x, w) on the fp32 weight;
- w8a16:   the prepared W8A16 kernel (`prepare_w8a16(qweight, scales)(x)`), x fp32 holding fp16 values;
- w8a8:    `linear_w8a8` on int8 activations, as the previous op would hand them over;
- w8a8+q:  `quantize_activation_per_tensor` + `linear_w8a8`, starting from fp32 x.
Weight regimes:
- hot:      one weight called over and over, so after the first call it sits in the 32 MB L3 cache (125M shapes);
- streamed: calls cycle through copies of the weight totalling >= 128 MB of int8 (>= 512 MB of fp32), so each call
            reads its weight from DRAM, as a decode step through a whole model does.
The ratio columns are method / fp32 medians (< 1 is faster). The accuracy table gives max |y - ref| / max |ref|
against the fp64 product with the dequantized weight, for w8a16 and for fp32 `F.linear` on the dequantized weight.

The default is one thread: on this 2-core machine shared with other jobs, two oneDNN/OpenMP threads wait for a
busy core at every barrier (4-16 ms spikes on sub-millisecond calls).

    python -m bench.int8_linear [--repeats 15] [--threads 1] [--models 125m,7b] [--regimes hot,streamed]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from qeff_compiler.atomic import atomic_write_text
from qeff_compiler.numerics.int8 import (
    linear_w8a8,
    prepare_w8a16,
    quantize_activation_per_tensor,
    quantize_weight_per_channel,
)

RESULTS = Path(__file__).parent / "results" / "int8_linear.json"
SHAPES = {
    "125m": [("ffn up", 768, 3072), ("ffn down", 3072, 768), ("lm_head", 768, 50368)],
    "7b": [("Wqkv", 4096, 12288), ("ffn up", 4096, 16384), ("ffn down", 16384, 4096)],
}
TOKENS = (1, 32)
METHODS = ("fp32", "w8a16", "w8a8", "w8a8+q")
#: int8 bytes a streamed pool holds at least: 4x the L3 cache
STREAM_BYTES = 128 * 2**20
WARMUP = 3


def time_calls(calls: list[Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median/min/max wall time in ms of `repeats` calls taken round-robin from `calls`, after one warm-up round."""
    for i in range(max(WARMUP, len(calls))):
        calls[i % len(calls)]()
    times = []
    for i in range(repeats):
        call = calls[i % len(calls)]
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times)}


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    return ((y.double() - reference).abs().max() / reference.abs().max()).item()


def accuracy(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, w8a16: Callable) -> dict[str, float]:
    """Max relative error of w8a16 and of fp32 F.linear on the dequantized weight, against fp64."""
    dequantized = qweight.double() * scales.double()[:, None]
    reference = x.double() @ dequantized.T
    return {
        "w8a16_rel_error": relative_error(w8a16(x), reference),
        "fp32_rel_error": relative_error(F.linear(x, dequantized.float()), reference),
    }


def method_calls(weight: torch.Tensor, copies: int, x: torch.Tensor) -> dict[str, list[Callable[[], object]]]:
    """For each method, one call per weight copy (distinct memory, same values)."""
    qweight, scales = quantize_weight_per_channel(weight)
    x_scale = x.abs().max().item() / 127
    xq = quantize_activation_per_tensor(x, x_scale)
    fp32 = [weight] + [weight.clone() for _ in range(copies - 1)]
    int8 = [qweight] + [qweight.clone() for _ in range(copies - 1)]
    prepared = [prepare_w8a16(q, scales) for q in int8]
    def quantize_then_w8a8(q: torch.Tensor) -> torch.Tensor:
        return linear_w8a8(quantize_activation_per_tensor(x, x_scale), x_scale, q, scales)

    return {
        "fp32": [lambda w=w: F.linear(x, w) for w in fp32],
        "w8a16": [lambda p=p: p(x) for p in prepared],
        "w8a8": [lambda q=q: linear_w8a8(xq, x_scale, q, scales) for q in int8],
        "w8a8+q": [lambda q=q: quantize_then_w8a8(q) for q in int8],
    }


def measure(model: str, name: str, in_features: int, out_features: int, regimes: list[str], repeats: int) -> list[dict]:
    weight = torch.randn(out_features, in_features) * 0.02
    qweight, scales = quantize_weight_per_channel(weight)
    w8a16 = prepare_w8a16(qweight, scales)
    rows = []
    for tokens in TOKENS:
        x = torch.randn(1, tokens, in_features).half().float()
        errors = accuracy(x, qweight, scales, w8a16)
        for regime in regimes:
            copies = 1 if regime == "hot" else max(2, math.ceil(STREAM_BYTES / weight.numel()))
            calls = method_calls(weight, copies, x)
            row = {"model": model, "layer": name, "in": in_features, "out": out_features, "tokens": tokens,
                   "regime": regime, "weight_copies": copies, **errors}
            for method in METHODS:
                row[method] = time_calls(calls[method], repeats)
            for method in METHODS[1:]:
                row[f"{method}_over_fp32"] = row[method]["median_ms"] / row["fp32"]["median_ms"]
            rows.append(row)
            print_row(row)
            del calls
            gc.collect()
    return rows


def print_header() -> None:
    cells = [f"{'shape':<24}", f"{'tok':>3}", f"{'regime':<8}"] + [f"{m + ' ms (ratio)':>22}" for m in METHODS]
    print(" ".join(cells))


def print_row(row: dict) -> None:
    shape = f"{row['model']} {row['layer']} {row['in']}→{row['out']}"
    cells = [f"{shape:<24}", f"{row['tokens']:>3}", f"{row['regime']:<8}"]
    for method in METHODS:
        stats = row[method]
        ratio = "" if method == "fp32" else f" ({row[f'{method}_over_fp32']:.2f})"
        cells.append(f"{stats['median_ms']:>9.3f} [{stats['min_ms']:.2f}-{stats['max_ms']:.2f}]{ratio}".rjust(22))
    print(" ".join(cells), flush=True)


def print_accuracy(rows: list[dict]) -> None:
    print("\nmax |y - ref| / max |ref| against fp64 (weight dequantized)")
    seen = set()
    for r in rows:
        key = (r["model"], r["layer"], r["tokens"])
        if key not in seen:
            seen.add(key)
            print(f"  {r['model']} {r['layer']:<8} tokens {r['tokens']:>2}: w8a16 {r['w8a16_rel_error']:.1e}   "
                  f"fp32 F.linear {r['fp32_rel_error']:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="125m,7b", help="comma-separated subset of " + ",".join(SHAPES))
    parser.add_argument("--regimes", default="hot,streamed", help="comma-separated subset of hot,streamed")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    regimes = args.regimes.split(",")
    print_header()
    rows = [
        row
        for model in args.models.split(",")
        for name, in_features, out_features in SHAPES[model]
        for row in measure(model, name, in_features, out_features, regimes, args.repeats)
    ]
    print_accuracy(rows)
    RESULTS.parent.mkdir(exist_ok=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "repeats": args.repeats, "warmup": WARMUP}
    atomic_write_text(RESULTS, json.dumps({**meta, "rows": rows}, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
