"""Decode step time at 1 and 2 CPU threads, per engine: the figures behind `runtime.threads`' default.

The shipped model compiled at the default precision (fp16) runs greedy generations of `--tokens` new tokens; each
(engine, threads) setting runs `--repeats` generations, the settings interleaved so load changes hit all alike.
Printed per setting: the median of the generations' host per-token p50 (min–max), and the 1-minute load average
before and after the setting's runs (the machine's other work is what makes two threads slow).

    python -m bench.threads [--tokens 48] [--repeats 5] [--precision fp16]
"""

from __future__ import annotations

import argparse
import os
import statistics

import qeff_compiler as qc
from qeff_compiler.data import TINY_MPT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="fp16")
    args = parser.parse_args()
    compiled = qc.compile(TINY_MPT, precision=args.precision, ctx_len=128, prefill_len=32, verify=False)
    settings = [(engine, threads) for engine in ("host", "onnxruntime") for threads in (1, 2)]
    times: dict[tuple[str, int], list[float]] = {s: [] for s in settings}
    loads: dict[tuple[str, int], list[float]] = {s: [] for s in settings}
    for engine, threads in settings:  # warm-up: sessions built, first calls paid
        compiled.generate([[1, 2, 3, 4]], 4, engine=engine, threads=threads)
    for _ in range(args.repeats):
        for setting in settings:
            loads[setting].append(os.getloadavg()[0])
            out = compiled.generate([[1, 2, 3, 4]], args.tokens, engine=setting[0], threads=setting[1])
            times[setting].append(out.stats.host_token_p50_s * 1e3)
    print(f"shipped model, {args.precision}, {args.tokens} new tokens, {args.repeats} runs per setting")
    print(f"{'engine':<12} {'threads':>7} {'decode step p50 (ms)':>22} {'min-max':>16} {'load avg 1 min':>16}")
    for setting, values in times.items():
        load = loads[setting]
        print(
            f"{setting[0]:<12} {setting[1]:>7} {statistics.median(values):>22.2f} "
            f"{min(values):>7.2f}-{max(values):<8.2f} {min(load):>7.2f}-{max(load):<8.2f}"
        )


if __name__ == "__main__":
    main()
