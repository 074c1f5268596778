"""Every benchmark behind the README's figures, in one run: `python -m bench [--quick]`.

Writes bench/results.json (all figures, the machine they ran on) and PNG plots in bench/plots/. Figures that
compare two systems are ratios measured in the same run; timings are medians of >= 5 runs after warm-up, with
min/max. `--quick` runs a reduced set (shipped model only, small counts) in under two minutes; CI runs it to check
the schema, not the numbers.

Sections: host decode per precision (bench.precision_decode), host decode cost vs position (bench.decode_cost),
host throughput vs HF eager and ONNX Runtime (bench.peers), compile time and RSS vs depth up to MPT-7B and MPT-30B
(bench.compile_layers), simulated AI 100 vs published figures and the roofline (bench.cost_model_calibration),
accuracy per precision and KV-cache dtype (qc.evaluate), pruning's cost and the autotuner's run (bench.pruning),
a streamed compile of a synthetic MPT-7B checkpoint from disk (bench.stream_7b: ~32 GB of disk, ~20 min),
continuous batching under load and the context buckets' decode saving (bench.serving), `qeffc serve` under 1-64
concurrent streaming clients (bench.http_serving), speculative decoding with the shipped draft and prompt lookup
(bench.speculative). The README's figures are rendered from the committed
full-mode results by `python -m bench.readme` (tests/test_bench.py checks they agree).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench import (
    compile_layers, cost_model_calibration, decode_cost, http_serving, precision_decode, pruning, serving, speculative,
    stream_7b,
)
from qeff_compiler.data import TINY_MPT, TINY_MPT_VALIDATION_TEXT
from qeff_compiler.evaluate import Evaluator
from qeff_compiler.atomic import atomic_write_text

ROOT = Path(__file__).parent
#: the quick mode's simulated point: a 2.7B-parameter shape compiles from its config in a few seconds
QUICK_SIMULATED = ("OPT-2.7B MXFP6 decode",)
ACCURACY_PRECISIONS = ("fp32", "fp16", "int8", "mxfp6", "w8a8")


def accuracy(quick: bool) -> list[dict]:
    """qc.evaluate per precision, without and with an MXINT8 KV cache, on the shipped validation text (quick: 8,000
    characters, fp32 and int8 without)."""
    text = TINY_MPT_VALIDATION_TEXT.read_text()[:8_000] if quick else None
    settings = [(p, None) for p in ("fp32", "int8")] if quick else [
        (p, kv) for p in ACCURACY_PRECISIONS for kv in (None, "mxint8")
    ]
    evaluator = Evaluator(TINY_MPT, text)  # HF's reference logits once for every setting
    rows = []
    for precision, kv_cache_dtype in settings:
        report = evaluator(precision, kv_cache_dtype)
        rows.append({
            "precision": precision, "kv_cache_dtype": kv_cache_dtype, "tokens": report.tokens_scored, "perplexity": report.perplexity,
            "reference_perplexity": report.reference_perplexity, "perplexity_vs_reference": report.perplexity / report.reference_perplexity,
            "token_agreement": report.token_agreement, "max_logit_error": report.max_logit_error,
            "gate_failures": report.gate_failures(),
        })
    return rows


def peers(quick: bool) -> list[dict]:
    from bench.peers import measure_peers

    return measure_peers(quick=quick)


SECTIONS: dict[str, Callable[[bool], object]] = {
    "host_precision": lambda quick: precision_decode.run(quick=quick),
    "decode_cost": lambda quick: decode_cost.run(quick=quick),
    "peers": peers,
    "compile_layers": lambda quick: compile_layers.run(quick=quick),
    "simulated_vs_published": lambda quick: cost_model_calibration.run(
        cost_model_calibration.compile_points(QUICK_SIMULATED) if quick else None
    ),
    "accuracy": accuracy,
    "pruning": pruning.run,
    "tune": pruning.tune,
    "stream_7b": stream_7b.section,
    "serving": serving.run,
    "http_serving": http_serving.run,
    "speculative": lambda quick: speculative.run(quick=quick),
}


def machine() -> dict[str, object]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def non_finite_ratios(node: object, path: str = "") -> list[str]:
    """Paths of ratio fields (scalars named `..._vs_...`; None where a system could not run) that are not finite."""
    bad = []
    if isinstance(node, dict):
        for key, value in node.items():
            ratio = "_vs_" in key and not isinstance(value, (dict, list)) and value is not None
            if ratio and not (isinstance(value, (int, float)) and math.isfinite(value)):
                bad.append(f"{path}.{key}")
            bad += non_finite_ratios(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            bad += non_finite_ratios(value, f"{path}[{index}]")
    return bad


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced set for CI (< 2 min)")
    parser.add_argument("--out", type=Path, help="results file (default: bench/results.json, quick: bench/results-quick.json)")
    parser.add_argument("--plots", type=Path, help="plot directory (default: bench/plots, quick: bench/plots-quick)")
    parser.add_argument("--only", choices=list(SECTIONS), action="append", help="run only these sections")
    args = parser.parse_args(argv)
    args.out = args.out or ROOT / ("results-quick.json" if args.quick else "results.json")
    args.plots = args.plots or ROOT / ("plots-quick" if args.quick else "plots")  # quick never replaces committed ones
    results: dict[str, object] = {
        "machine": machine(), "quick": args.quick, "sections": {}
    }
    if args.only and args.out.is_file():  # refresh some sections of an earlier run of the same mode
        earlier = json.loads(args.out.read_text())
        if earlier.get("quick") == args.quick:
            for key in ("sections", "section_seconds", "section_load_average"):
                results[key] = earlier.get(key, {})
    seconds = results.setdefault("section_seconds", {})
    #: 1-minute load average when each section ended: other work on a shared machine skews timings, judge by this
    load = results.setdefault("section_load_average", {})
    for name, section in SECTIONS.items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        results["sections"][name] = section(args.quick)
        seconds[name] = time.perf_counter() - start
        load[name] = os.getloadavg()[0]
    atomic_write_text(args.out, json.dumps(results, indent=2))
    from bench.plots import write_plots

    written = write_plots(results, args.plots)
    print(f"wrote {args.out} and {', '.join(str(p) for p in written)}")
    bad = non_finite_ratios(results)
    if bad:
        raise SystemExit(f"non-finite ratios: {bad}")


if __name__ == "__main__":
    main()
