"""The cost model against Qualcomm's published AI 100 Standard decode rates, and the fit of its two constants.

Published (Qualcomm MX blog, batch 1, prompt 1024, generate 1024, ctx 2048): GPT-J-6B 8.08 tok/s fp16
and 13.9 MXFP6 (the calibration points), OPT-2.7B 15.44 fp16 and 27.72 MXFP6, OPT-13B 6.98 MXFP6 with fp16 not
fitting (validation points). Models are MPTs of those sizes (`*-shape` presets), compiled from their configs.

`--fit` solves, by bisection, DDR_EFFICIENCY for GPT-J fp16 and then MXFP6_DECOMPRESS_ELEMENTS_PER_S_PER_CORE for
GPT-J MXFP6 and prints them (copy them into cost_model.py); without it the module's constants are evaluated.

    python -m bench.cost_model_calibration [--fit]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import qeff_compiler as qc
from qeff_compiler.backends.ai100 import cost_model
from qeff_compiler.backends.ai100.cost_model import tier_bandwidth, time_step
from qeff_compiler.backends.ai100.workload import program_workload
from qeff_compiler.capture.presets import preset_config
from qeff_compiler.errors import ModelDoesNotFitError
from qeff_compiler.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results" / "cost_model_calibration.json"
#: (preset, precision) → published decode tok/s (None: published as not fitting), and whether it was fitted
POINTS = {
    ("gpt-j-6b-shape", "fp16"): (8.08, "calibration"),
    ("gpt-j-6b-shape", "mxfp6"): (13.9, "calibration"),
    ("opt-2.7b-shape", "fp16"): (15.44, "validation"),
    ("opt-2.7b-shape", "mxfp6"): (27.72, "validation"),
    ("opt-13b-shape", "fp16"): (None, "validation"),
    ("opt-13b-shape", "mxfp6"): (6.98, "validation"),
}


def compile_point(preset: str, precision: str) -> qc.CompiledModel:
    return qc.compile(preset_config(preset), precision=precision, ctx_len=2048, prefill_len=128, verify=False)


def decode_rate(compiled: qc.CompiledModel) -> float:
    """Decode tok/s with the cost model's current constants (re-timed: the constants may have changed)."""
    simulation = compiled.simulation
    step = time_step(program_workload(compiled.decode), simulation.plans["decode"], simulation.spec, simulation.memory.tier)
    return 1 / step.seconds


def bisect(rate: Callable[[float], float], low: float, high: float, target: float) -> float:
    """The constant in [low, high] for which the (increasing) rate hits target."""
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if rate(middle) < target else (low, middle)
    return (low + high) / 2


def fit(fp16: qc.CompiledModel, mxfp6: qc.CompiledModel) -> dict[str, float]:
    def with_efficiency(value: float) -> float:
        cost_model.DDR_EFFICIENCY = value
        return decode_rate(fp16)

    efficiency = bisect(with_efficiency, 0.2, 1.0, POINTS["gpt-j-6b-shape", "fp16"][0])
    cost_model.DDR_EFFICIENCY = efficiency

    def with_decompression(value: float) -> float:
        cost_model.MXFP6_DECOMPRESS_ELEMENTS_PER_S_PER_CORE = value
        return decode_rate(mxfp6)

    rate = bisect(with_decompression, 1e8, 1e12, POINTS["gpt-j-6b-shape", "mxfp6"][0])
    cost_model.MXFP6_DECOMPRESS_ELEMENTS_PER_S_PER_CORE = rate
    return {"DDR_EFFICIENCY": efficiency, "MXFP6_DECOMPRESS_ELEMENTS_PER_S_PER_CORE": rate}


def compile_points(keys: tuple[tuple[str, str], ...] = tuple(POINTS)) -> dict[tuple[str, str], qc.CompiledModel | str]:
    """Each point compiled, or the refusal message of one that does not fit."""
    compiled: dict[tuple[str, str], qc.CompiledModel | str] = {}
    for key in keys:
        try:
            compiled[key] = compile_point(*key)
        except ModelDoesNotFitError as exc:
            compiled[key] = str(exc)
    return compiled


def run(compiled: dict[tuple[str, str], qc.CompiledModel | str] | None = None) -> list[dict]:
    """Published vs simulated decode rate per point, with the bandwidth roofline of the plan's memory tier."""
    compiled = compile_points() if compiled is None else compiled
    rows = []
    for (preset, precision), result in compiled.items():
        published, role = POINTS[preset, precision]
        if isinstance(result, qc.CompiledModel):
            simulated, roofline = decode_rate(result), roofline_rate(result)
        else:
            simulated = roofline = None
        rows.append({
            "model": preset, "precision": precision, "published": published, "simulated": simulated,
            "roofline": roofline, "simulated_vs_published": None if not (published and simulated) else simulated / published,
            "role": role, "refused": None if simulated is not None else result,
        })
    return rows


def roofline_rate(compiled: qc.CompiledModel) -> float:
    """Decode tok/s if every byte a step streams moved at the memory tier's peak bandwidth, on every SoC."""
    work = program_workload(compiled.decode)
    step_bytes = sum(op.weight_bytes + op.kv_read_bytes + op.kv_write_bytes for op in work)
    simulation = compiled.simulation
    bandwidth = simulation.spec.ddr_bytes_per_s_per_soc if simulation.memory.tier == "ddr" else tier_bandwidth(simulation.spec, "vtcm")
    return simulation.target.num_devices * bandwidth / step_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", action="store_true", help="fit the two constants on GPT-J and print them")
    args = parser.parse_args()
    compiled = compile_points()
    if args.fit:
        fitted = fit(compiled["gpt-j-6b-shape", "fp16"], compiled["gpt-j-6b-shape", "mxfp6"])
        print("fitted: " + ", ".join(f"{name} = {value:.4g}" for name, value in fitted.items()))
    rows = run(compiled)
    print(f"{'model':<16} {'precision':>9} {'published':>10} {'simulated':>10} {'error':>8} {'roofline':>9}  role")
    for row in rows:
        shown = "refused" if row["simulated"] is None else f"{row['simulated']:.2f}"
        ratio = row["simulated_vs_published"]
        roofline = "" if row["roofline"] is None else f"{row['roofline']:.2f}"
        print(f"{row['model']:<16} {row['precision']:>9} {row['published'] or 'no fit':>10} {shown:>10} "
              f"{'' if ratio is None else f'{100 * (ratio - 1):+.1f}%':>8} {roofline:>9}  {row['role']}")
    RESULTS.parent.mkdir(exist_ok=True)
    atomic_write_text(RESULTS, json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
