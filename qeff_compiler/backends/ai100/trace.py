"""Chrome / Perfetto trace of a simulated run: one process per SoC, one track per AI core and one for the SoC's
PCIe P2P link, a span per op per core (its share of the op's core time) and per transfer.

Open the file in https://ui.perfetto.dev or chrome://tracing. Times are the cost model's (simulated), laid out
call after call in the order the run made them (prefill chunks, then decode steps).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from qeff_compiler.atomic import atomic_write_text
from qeff_compiler.backends.ai100.cost_model import StepTiming
from qeff_compiler.backends.ai100.plan import PartitionPlan

#: thread id of a SoC's PCIe link track (cores use their index)
_LINK_TRACK = 1000


def core_busy_fractions(step: StepTiming, plan: PartitionPlan) -> dict[tuple[int, int], list[float]]:
    """Per (SoC, core), for each op of `step`: the fraction of the op's core time that core works (its weight
    bytes of the op relative to the busiest core's; an op without weights is spread evenly)."""
    fractions: dict[tuple[int, int], list[float]] = {
        (device, core): [] for device in range(plan.num_devices) for core in range(plan.num_cores)
    }
    for op in step.ops:
        per_core: dict[tuple[int, int], int] = {}
        for shard in plan.op_shards(op.node):
            if shard.core is not None:
                per_core[shard.device, shard.core] = per_core.get((shard.device, shard.core), 0) + shard.nbytes
        busiest = max(per_core.values(), default=0)
        for key, series in fractions.items():
            series.append(per_core.get(key, 0) / busiest if busiest else 1.0)
    return fractions


def trace_events(calls: Sequence[tuple[str, StepTiming, PartitionPlan]]) -> list[dict[str, object]]:
    """Trace events of program calls (label, timing, plan) run back to back."""
    events: list[dict[str, object]] = []
    plan = calls[0][2] if calls else None
    if plan is not None:
        for device in range(plan.num_devices):
            events.append({"ph": "M", "name": "process_name", "pid": device, "args": {"name": f"SoC {device}"}})
            events.append(
                {"ph": "M", "name": "thread_name", "pid": device, "tid": _LINK_TRACK, "args": {"name": "PCIe P2P"}}
            )
            for core in range(plan.num_cores):
                events.append(
                    {"ph": "M", "name": "thread_name", "pid": device, "tid": core, "args": {"name": f"core {core}"}}
                )
    clock_us = 0.0
    for label, step, call_plan in calls:
        busy = core_busy_fractions(step, call_plan)
        for index, op in enumerate(step.ops):
            duration_us = op.seconds * 1e6
            args = {"call": label, "bound": op.bound, "memory_us": op.memory_s * 1e6, "core_us": op.core_s * 1e6}
            for (device, core), series in busy.items():
                if series[index] > 0:
                    busy_us = max(op.core_s, op.memory_s) * 1e6 * series[index]
                    events.append(_span(op.node, clock_us, busy_us, device, core, args))
            if op.transfer_s > 0:
                for device in range(call_plan.num_devices):
                    start = clock_us + duration_us - op.transfer_s * 1e6
                    events.append(_span(f"{op.node} transfer", start, op.transfer_s * 1e6, device, _LINK_TRACK, args))
            clock_us += duration_us
    return events


def write_trace(path: str | Path, calls: Sequence[tuple[str, StepTiming, PartitionPlan]]) -> None:
    """Write the trace-event JSON of `calls` to `path` (atomically)."""
    document = {"traceEvents": trace_events(calls), "displayTimeUnit": "ms", "otherData": {"clock": "simulated"}}
    atomic_write_text(path, json.dumps(document))


def _span(name: str, start_us: float, duration_us: float, pid: int, tid: int, args: dict) -> dict[str, object]:
    return {"ph": "X", "name": name, "ts": start_us, "dur": duration_us, "pid": pid, "tid": tid, "args": args}
