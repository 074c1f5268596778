"""Host decode speed per precision: tokens/s of a batch-1 decode step for every precision the compiler lowers to.

These are *host* figures (this machine's CPU running the exact emulation), not device figures: fp16 is emulated
in fp32 with rounding at op boundaries, and quantized weights are dequantized once when the executor binds them,
so every precision runs fp32 matmuls on the host. The goal is that quantizing never makes host runs slower than
fp32 (reported as a ratio, measured in one run with the precisions interleaved), on the shipped model and on a
model shaped like MPT-125M with random weights (w8a8 calibrated on random tokens there: timing only).

    python -m bench.precision_decode [--ctx-len 256] [--repeats 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from transformers import MptForCausalLM

import qeff_compiler as qc
from bench.decode_cost import decode_step, interleaved_times
from qeff_compiler.calibration import CALIBRATION_PIPELINE, activation_maxima, save_calibration
from qeff_compiler.capture import resolve_model
from qeff_compiler.capture.presets import preset_config
from qeff_compiler.data import TINY_MPT
from qeff_compiler.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results" / "precision_decode.json"
PRECISIONS = ("fp32", "fp16", "int8", "mxfp6", "w8a8")


def random_token_calibration(model: object, directory: Path) -> Path:
    """A w8a8 calibration table from 4 windows of random tokens, for a model without text of its own (its
    activation statistics do not matter for timing)."""
    config = resolve_model(model).config
    window = min(config.max_seq_len, 128)
    program = qc.PassManager(CALIBRATION_PIPELINE, verify=False).run(qc.capture(model, seq_len=window))
    windows = torch.randint(0, config.vocab_size, (4, window), generator=torch.Generator().manual_seed(0))
    path = directory / "calibration.safetensors"
    save_calibration(activation_maxima(program, windows), path)
    return path


def measure(name: str, model: object, ctx_len: int, repeats: int) -> list[dict]:
    """Median decode step time per precision at position ctx_len / 2."""
    resolved = resolve_model(model)
    ctx_len = min(ctx_len, resolved.config.max_seq_len)
    with tempfile.TemporaryDirectory() as directory:
        table = None if resolved.directory is not None else random_token_calibration(model, Path(directory))
        compiled = {
            p: qc.compile(model, precision=p, ctx_len=ctx_len, prefill_len=32, calibration=table, verify=False)
            for p in PRECISIONS
        }
    times = dict(zip(PRECISIONS, interleaved_times([decode_step(c, ctx_len // 2) for c in compiled.values()], repeats), strict=True))
    medians = {p: statistics.median(t) for p, t in times.items()}
    return [
        {
            "model": name,
            "precision": p,
            "ctx_len": ctx_len,
            "median_ms": 1e3 * medians[p],
            "min_max_ms": [1e3 * min(times[p]), 1e3 * max(times[p])],
            "tokens_per_s": 1 / medians[p],
            "time_vs_fp32": medians[p] / medians["fp32"],
        }
        for p in PRECISIONS
    ]


def run(quick: bool = False, repeats: int = 30, ctx_len: int = 256) -> list[dict]:
    """All rows; quick: the shipped model only, 5 repeats."""
    torch.manual_seed(0)
    models: dict[str, object] = {"tiny-mpt-pystdlib (shipped)": TINY_MPT}
    if not quick:
        models["mpt-125m shape (random weights)"] = MptForCausalLM(preset_config("mpt-125m")).eval()
    return [row for name, model in models.items() for row in measure(name, model, ctx_len, 5 if quick else repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctx-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(repeats=args.repeats, ctx_len=args.ctx_len)
    print("host decode, batch 1 (simulated-device figures are a separate cost model)")
    print(f"{'model':<34} {'precision':>9} {'median ms':>10} {'tok/s':>8} {'time vs fp32':>13}")
    for r in rows:
        print(f"{r['model']:<34} {r['precision']:>9} {r['median_ms']:>10.2f} {r['tokens_per_s']:>8.1f} {r['time_vs_fp32']:>13.3f}")
    RESULTS.parent.mkdir(exist_ok=True)
    atomic_write_text(RESULTS, json.dumps({"threads": args.threads, "repeats": args.repeats, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
