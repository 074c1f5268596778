"""Compile time and peak RSS against model depth: MPT-7B width (d_model 4096, 32 heads) with 4 to 32 layers (32 is
MPT-7B), and MPT-30B on 2 SoCs; config only, mxfp6, ai100-standard, ctx 2048, prefill 128. Each compile runs in a
fresh process (its peak RSS is its own), `--repeats` times (median, min, max; the Amendment's "median of 3" for
7B-scale benchmarks): "compile s" is the cold `qc.compile` call (capture at both shapes, every pass with its lint
and shape checks, partitioning, memory plan, cost model), "process s" adds starting Python and importing torch
and transformers. Each row also has the simulated decode rate (prompt 1024, generate 1024) and the per-pass
timings of the decode specialization.

Compile work is per layer, so time and memory should grow linearly with depth; the fit's slope and intercept
are reported next to the points.

    python -m bench.compile_layers [--quick] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from qeff_compiler.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results" / "compile_layers.json"
LAYERS = (4, 8, 16, 32)
QUICK_LAYERS = (2, 4)


def child(layers: int | None) -> None:
    """Compile (mxfp6, ai100-standard; MPT-30B on 2 SoCs) and print the timings as JSON."""
    from transformers import MptConfig

    import qeff_compiler as qc
    from qeff_compiler.capture.presets import preset_config

    if layers is None:
        config, devices = preset_config("mpt-30b"), 2
    else:
        config, devices = MptConfig(d_model=4096, n_heads=32, n_layers=layers, vocab_size=50432, max_seq_len=2048), 1
    start = time.perf_counter()
    compiled = qc.compile(config, precision="mxfp6", ctx_len=2048, prefill_len=128, num_devices=devices)
    seconds = time.perf_counter() - start
    estimate = compiled.estimate(prompt_len=1024, generation_len=1024)
    print(json.dumps({
        "compile_s": seconds, "peak_rss_mb": peak_rss_kb() / 1024, "num_devices": devices,
        "simulated_decode_tokens_per_s": estimate.decode_tokens_per_s, "passes": compiled.pass_reports["decode"],
    }))


def peak_rss_kb() -> int:
    """This process's peak RSS. Linux keeps getrusage's ru_maxrss across fork+exec, so a child of a large parent
    would report the parent's peak; /proc's VmHWM belongs to the process's own memory map."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(layers: int | None, repeats: int) -> dict:
    """`repeats` cold compiles in fresh processes: median, min and max of each timing and of the peak RSS."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "bench.compile_layers", "--child", "30b" if layers is None else str(layers)],
            capture_output=True, text=True, check=True,
        )
        runs.append({**json.loads(result.stdout.strip().splitlines()[-1]), "process_s": time.perf_counter() - start})
    row = {"model": "mpt-30b" if layers is None else f"mpt-7b width, {layers} layers", "layers": layers or 48}
    for field in ("compile_s", "process_s", "peak_rss_mb"):
        values = [run[field] for run in runs]
        row[field] = statistics.median(values)
        row[f"{field}_min_max"] = [min(values), max(values)]
    last = runs[-1]
    return {**row, "runs": repeats, "num_devices": last["num_devices"],
            "simulated_decode_tokens_per_s": last["simulated_decode_tokens_per_s"], "passes": last["passes"]}


def linear_fit(rows: list[dict], field: str) -> dict[str, float]:
    """Least-squares slope and intercept of `field` against layers (7B-width rows)."""
    points = [(r["layers"], r[field]) for r in rows if r["model"] != "mpt-30b"]
    slope, intercept = statistics.linear_regression([x for x, _ in points], [y for _, y in points])
    return {"per_layer": slope, "intercept": intercept}


def run(quick: bool = False, repeats: int = 3) -> dict:
    """Quick: 2 and 4 layers, one compile each (the schema, for CI)."""
    repeats = 1 if quick else repeats
    rows = [measure(n, repeats) for n in (QUICK_LAYERS if quick else LAYERS)]
    if not quick:
        rows.append(measure(None, repeats))
    return {"rows": rows, "fit_compile_s": linear_fit(rows, "compile_s"), "fit_peak_rss_mb": linear_fit(rows, "peak_rss_mb")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(None if args.child == "30b" else int(args.child))
        return
    result = run(args.quick, args.repeats)
    print(f"{'model':<26} {'compile s':>10} {'process s':>10} {'peak RSS MB':>12} {'sim. decode tok/s':>18}")
    for r in result["rows"]:
        print(f"{r['model']:<26} {r['compile_s']:>10.2f} {r['process_s']:>10.2f} {r['peak_rss_mb']:>12.0f} "
              f"{r['simulated_decode_tokens_per_s']:>18.2f}")
    fit = result["fit_compile_s"]
    print(f"fit: {fit['per_layer']:.3f} s per layer + {fit['intercept']:.2f} s")
    RESULTS.parent.mkdir(exist_ok=True)
    atomic_write_text(RESULTS, json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
