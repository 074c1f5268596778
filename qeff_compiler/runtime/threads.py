"""How many CPU threads the host numerics use: chosen so that the engines do not oversubscribe the machine.

A decode step of a small model is hundreds of small ops; each multi-threaded op ends at a barrier where every
thread must have run. When other processes keep the cores busy, a thread waits for a time slice at each
barrier: on a 2-core machine at load average ~7 the shipped model's fp16 decode step took 13 ms on one thread
and 100-380 ms on two. So the default is the CPUs this process may run on minus the ones other work keeps busy
(the 1-minute load average, rounded down), at least one, and never more than torch's own setting
(`torch.set_num_threads`, `OMP_NUM_THREADS`), which a user can thus cap. torch's intra-op pool (OpenMP) and
ONNX Runtime's pool get the same count, and only one of them runs at a time: ONNX Runtime's inter-op pool is off
and its threads do not spin-wait after a run, so they leave the cores to torch's sampling between steps.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from qeff_compiler.errors import InvalidArgumentError


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and `taskset` narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads() -> int:
    """Threads for a run started now: the available CPUs that other work does not keep busy, at least one, at
    most torch's setting."""
    cpus = min(available_cpus(), torch.get_num_threads())
    busy = int(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, min(cpus, available_cpus() - busy))


def resolve_threads(threads: int | None) -> int:
    """`threads` checked, or the default when None. More threads than CPUs would only oversubscribe them."""
    if threads is None:
        return default_threads()
    cpus = available_cpus()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cpus:
        raise InvalidArgumentError(
            f"threads must be 1..{cpus} (the CPUs this process may run on) or None (chosen from the load), "
            f"got {threads!r}"
        )
    return threads


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` for the block, then restored (it is process-wide)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
