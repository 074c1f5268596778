"""Chrome / Perfetto trace of a continuous batch: one lane per slot, on the simulated clock.

The same trace-event JSON as `trace.py` (open it in https://ui.perfetto.dev or chrome://tracing), drawn per slot
instead of per core: a span per prefill chunk on the slot it writes ("prefill r3 chunk 0"), a span per decode step
(a speculative target's verify step, and each draft-model call) on every slot that was live in it, each with its
context bucket in its arguments, and a counter track with the bucket of every call. Times are the cost model's
(simulated), as the scheduler charged them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from qeff_compiler.atomic import atomic_write_text

#: the trace's one process: the device the slots live on
_PID = 0


class SlotCall(Protocol):
    """A program call as the scheduler records it (`runtime.scheduler.CallRecord`)."""

    @property
    def kind(self) -> str: ...

    @property
    def slots(self) -> tuple[int, ...]: ...

    @property
    def request_ids(self) -> tuple[str, ...]: ...

    @property
    def bucket(self) -> int: ...

    @property
    def start_s(self) -> float: ...

    @property
    def seconds(self) -> float: ...


def slot_trace_events(calls: Sequence[SlotCall], num_slots: int, device: str) -> list[dict[str, object]]:
    """Trace events of the calls: lane metadata, one span per slot a call served, a bucket counter per call."""
    events: list[dict[str, object]] = [
        {"ph": "M", "name": "process_name", "pid": _PID, "args": {"name": f"continuous batch on {device} (simulated)"}}
    ]
    for slot in range(num_slots):
        events.append({"ph": "M", "name": "thread_name", "pid": _PID, "tid": slot, "args": {"name": f"slot {slot}"}})
    chunks: dict[str, int] = {}
    for call in calls:
        start_us, duration_us = call.start_s * 1e6, call.seconds * 1e6
        for slot, request_id in zip(call.slots, call.request_ids, strict=True):
            if call.kind == "prefill":
                chunk = chunks.get(request_id, 0)
                chunks[request_id] = chunk + 1
                name = f"prefill {request_id} chunk {chunk}"
            else:  # a decode (or verify) step, or a draft model's call
                name = f"{call.kind} {request_id}"
            args = {"request": request_id, "bucket": call.bucket, "live_slots": len(call.slots)}
            events.append(
                {
                    "ph": "X",
                    "name": name,
                    "cat": call.kind,
                    "ts": start_us,
                    "dur": duration_us,
                    "pid": _PID,
                    "tid": slot,
                    "args": args,
                }
            )
        events.append(
            {"ph": "C", "name": "context bucket", "ts": start_us, "pid": _PID, "args": {"bucket": call.bucket}}
        )
    return events


def write_slot_trace(path: str | Path, calls: Sequence[SlotCall], num_slots: int, device: str) -> None:
    """Write the per-slot trace-event JSON of `calls` to `path` (atomically)."""
    document = {
        "traceEvents": slot_trace_events(calls, num_slots, device),
        "displayTimeUnit": "ms",
        "otherData": {"clock": "simulated"},
    }
    atomic_write_text(path, json.dumps(document))
