"""Chrome / Perfetto trace of a simulated run: one process per SoC; on it a "program" track with nested spans
(call → layer → op → the costs the cost model charged), and with `detail="op"` one track per AI core, one for
on-chip NoC transfers and (on several SoCs) one for the PCIe P2P link.

Open the file in https://ui.perfetto.dev or chrome://tracing. Times are the cost model's (simulated), laid out
call after call in the order the run made them (prefill chunks, then decode steps). Every op's time is drawn as
what it was charged: "bandwidth" or "compute" (whichever bounds it; the core time split into tensor unit, MXFP6
decompression and vector unit), the fixed cost per op, and its transfers; the spans of an op add up to its time.

Detail levels: "layer" (the default) draws every call as one span, and breaks down the first prefill chunk and
the first decode step into layers and ops (shapes are static, so every other call of the same program costs the
same); "op" breaks down every call and adds the per-core and transfer tracks (large: every op of every call).

The event helpers (`metadata`, `span`, `write_events`) are shared with other timelines of a run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from qeff_compiler.atomic import atomic_write_text
from qeff_compiler.backends.ai100.breakdown import charged_parts
from qeff_compiler.backends.ai100.cost_model import OpTiming, StepTiming
from qeff_compiler.backends.ai100.plan import PartitionPlan
from qeff_compiler.errors import InvalidArgumentError

#: how much of a run a trace draws
TRACE_DETAILS = ("layer", "op")
#: thread ids of a SoC's tracks (AI cores use 1 + their index)
PROGRAM_TRACK = 0
NOC_TRACK = 1000
P2P_TRACK = 1001

Event = dict[str, object]
Call = tuple[str, StepTiming, PartitionPlan]


def metadata(pid: int, tid: int | None, name: str, sort_index: int | None = None) -> list[Event]:
    """Events naming a process (`tid` None) or a track, optionally ordered (Perfetto sorts tracks by index)."""
    kind = "process" if tid is None else "thread"
    events: list[Event] = [{"ph": "M", "name": f"{kind}_name", "pid": pid, "args": {"name": name}}]
    if sort_index is not None:
        events.append({"ph": "M", "name": f"{kind}_sort_index", "pid": pid, "args": {"sort_index": sort_index}})
    if tid is not None:
        for event in events:
            event["tid"] = tid
    return events


def span(name: str, start_us: float, duration_us: float, pid: int, tid: int, args: dict | None = None) -> Event:
    """A complete ("X") event; spans on one track nest when one lies within another."""
    event: Event = {"ph": "X", "name": name, "ts": start_us, "dur": duration_us, "pid": pid, "tid": tid}
    if args:
        event["args"] = args
    return event


def write_events(path: str | Path, events: list[Event]) -> None:
    """Write trace-event JSON (atomically), marked as a simulated clock."""
    document = {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"clock": "simulated"}}
    atomic_write_text(path, json.dumps(document, separators=(",", ":")))


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


def op_name(op: OpTiming) -> str:
    """A span's name: the layer and the op's role ("layer 3 ffn.up_proj"), never a graph node name."""
    where = f"layer {op.layer}" if op.layer is not None else "outside layers"
    return f"{where} {op.label or op.kind}"


def check_trace_detail(detail: object) -> None:
    if detail not in TRACE_DETAILS:
        raise InvalidArgumentError(f"trace_detail must be one of {', '.join(TRACE_DETAILS)}, got {detail!r}")


def trace_events(calls: Sequence[Call], detail: str = "layer") -> list[Event]:
    """Trace events of program calls (label, timing, plan) run back to back; `detail` as in the module docstring."""
    check_trace_detail(detail)
    if not calls:
        return []
    plan = calls[0][2]
    events = _tracks(plan, detail)
    clock_us = 0.0
    broken_down: set[int] = set()
    for label, step, call_plan in calls:
        duration_us = step.seconds * 1e6
        for device in range(call_plan.num_devices):
            events.append(span(label, clock_us, duration_us, device, PROGRAM_TRACK, {"ops": len(step.ops)}))
        if detail == "op" or id(step) not in broken_down:
            broken_down.add(id(step))
            events += _breakdown(step, call_plan, clock_us)
            if detail == "op":
                events += _core_and_link_spans(label, step, call_plan, clock_us)
        clock_us += duration_us
    return events


def write_trace(path: str | Path, calls: Sequence[Call], detail: str = "layer") -> None:
    """Write the trace-event JSON of `calls` to `path` (atomically)."""
    write_events(path, trace_events(calls, detail))


def _tracks(plan: PartitionPlan, detail: str) -> list[Event]:
    events: list[Event] = []
    for device in range(plan.num_devices):
        events += metadata(device, None, f"SoC {device} (simulated)", device)
        events += metadata(device, PROGRAM_TRACK, "program: call → layer → op → cost", 0)
        if detail == "op":
            for core in range(plan.num_cores):
                events += metadata(device, 1 + core, f"core {core:>2}", 1 + core)
            events += metadata(device, NOC_TRACK, "NoC (on-chip transfers)", NOC_TRACK)
            if plan.num_devices > 1:
                events += metadata(device, P2P_TRACK, "PCIe P2P (SoC to SoC)", P2P_TRACK)
    return events


def _breakdown(step: StepTiming, plan: PartitionPlan, start_us: float) -> list[Event]:
    """Layer spans holding op spans holding the op's charged parts, on every SoC's program track."""
    events: list[Event] = []
    clock_us = start_us
    layer_start, layer = start_us, step.ops[0].layer if step.ops else None
    for index, op in enumerate(step.ops):
        duration_us = op.seconds * 1e6
        args = {"bound": op.bound, "node": op.node, "kind": op.kind}
        for device in range(plan.num_devices):
            events.append(span(op_name(op), clock_us, duration_us, device, PROGRAM_TRACK, args))
            part_start = clock_us
            for name, seconds in charged_parts(op):
                events.append(span(name, part_start, seconds * 1e6, device, PROGRAM_TRACK))
                part_start += seconds * 1e6
        clock_us += duration_us
        following = step.ops[index + 1].layer if index + 1 < len(step.ops) else -1
        if following != layer:
            if layer is not None:
                for device in range(plan.num_devices):
                    events.append(span(f"layer {layer}", layer_start, clock_us - layer_start, device, PROGRAM_TRACK))
            layer_start, layer = clock_us, following
    return events


def _core_and_link_spans(label: str, step: StepTiming, plan: PartitionPlan, start_us: float) -> list[Event]:
    """Per core, its share of each op's bound time; transfers on the NoC or PCIe P2P track at the op's end."""
    events: list[Event] = []
    busy = core_busy_fractions(step, plan)
    clock_us = start_us
    for index, op in enumerate(step.ops):
        duration_us = op.seconds * 1e6
        name = op_name(op)
        for (device, core), series in busy.items():
            if series[index] > 0:
                busy_us = max(op.core_s, op.memory_s) * 1e6 * series[index]
                events.append(span(name, clock_us, busy_us, device, 1 + core, {"call": label, "share": series[index]}))
        if op.transfer_s > 0:
            on_chip = all(transfer.link == "noc" for transfer in plan.transfers_for(op.node))
            track = NOC_TRACK if on_chip else P2P_TRACK
            start = clock_us + duration_us - op.transfer_s * 1e6
            for device in range(plan.num_devices):
                events.append(span(f"{name} transfer", start, op.transfer_s * 1e6, device, track, {"call": label}))
        clock_us += duration_us
    return events
