"""How much of this machine's memory a compile needs, whether it streams, and refusing one that cannot fit.

A compile holds its weights one of two ways (anonymous memory, what the OOM killer counts; a checkpoint's
memory-mapped pages are page cache):

- **in memory**: one fp32 copy of every weight, the lowered copy (shared by the prefill and decode programs) and
  one op's work while the pass manager checks each pass: at most `IN_MEMORY_FACTOR` x the fp32 bytes.
- **streamed**: weights stay in the checkpoint and are read, lowered and written one at a time: a fixed
  `STREAMED_OVERHEAD` (traced graphs, passes, ONNX export, the reduced programs the numeric check runs) plus
  `LARGEST_WEIGHT_FACTOR` x the largest weight's fp32 bytes (it is read, clipped and converted).

A compile from a checkpoint (directory) streams by default unless the in-memory peak would stay within the
streamed bound `checkpoint bytes + STREAMED_OVERHEAD` (small models: in-memory runs are faster) and within the
memory available now. Asked to compile in memory (`stream=False`) what does not fit in the available memory, a
compile is refused with the numbers (`HostMemoryError`), naming `--stream`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qeff_compiler.errors import HostMemoryError
from qeff_compiler.ir.weights import WeightStore

#: in-memory peak over the process's memory before the compile, per byte of fp32 weights (the fp32 weights, the
#: lowered copy, one op's work); tests/test_stream_memory.py bounds a 300 MB checkpoint's compile by it
IN_MEMORY_FACTOR = 2.0
#: what a streamed compile needs besides the weights it is working on (tests/test_stream_memory.py bounds it)
STREAMED_OVERHEAD = 512 * 2**20
#: a streamed compile's working set per byte of its largest weight in fp32 (the stored tensor, its fp16 result and
#: the fp32 cast the overflow check's run makes of it). Measured: MPT-7B (824 MB embedding in fp32) streamed to
#: fp16 peaked at 2.40 GB RssAnon, 2.1 GB over the process after imports (bench.stream_7b)
LARGEST_WEIGHT_FACTOR = 2.0
_MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True)
class MemoryEstimate:
    """The expected peak (bytes over what the process holds before the compile) and the choice it led to."""

    streaming: bool
    peak_bytes: int
    in_memory_bytes: int
    streamed_bytes: int
    #: MemAvailable when the estimate was made (None where /proc/meminfo does not exist)
    available_bytes: int | None

    def describe(self) -> str:
        how = "streamed from disk" if self.streaming else "in memory"
        available = "" if self.available_bytes is None else f" of {_gib(self.available_bytes)} available"
        return f"expected peak memory {_gib(self.peak_bytes)} ({how}){available}"


def available_bytes() -> int | None:
    """The kernel's estimate of memory available for new allocations without swapping (MemAvailable)."""
    if not _MEMINFO.is_file():
        return None
    for line in _MEMINFO.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def fp32_bytes(weights: WeightStore) -> int:
    """Bytes of the weights once cast to fp32 (the capture dtype), tied weights counted once."""
    return 4 * weights.distinct_numel()


def checkpoint_bytes(directory: Path) -> int:
    """Bytes of a model directory's weight files as stored (safetensors or pickled shards)."""
    files = [*directory.glob("*.safetensors"), *directory.glob("pytorch_model*.bin")]
    return sum(file.stat().st_size for file in files if file.is_file())


def estimate_compile_memory(weights: WeightStore, stream: bool | None, stored_bytes: int | None) -> MemoryEstimate:
    """The compile's expected peak memory, and whether it streams: as asked (`stream`), or by default (None) as
    the module docstring says. `stored_bytes` is the checkpoint's size; None for weights already in memory
    (a model object), which stream only when asked."""
    in_memory = int(IN_MEMORY_FACTOR * fp32_bytes(weights))
    largest = max((4 * weights[name].numel for name in weights), default=0)
    streamed = STREAMED_OVERHEAD + int(LARGEST_WEIGHT_FACTOR * largest)
    available = available_bytes()
    if not weights.has_data:
        streaming = False
    elif stream is not None:
        streaming = stream
    else:
        within_bound = stored_bytes is not None and in_memory <= stored_bytes + STREAMED_OVERHEAD
        fits = available is None or in_memory <= available
        streaming = stored_bytes is not None and not (within_bound and fits)
    peak = 0 if not weights.has_data else streamed if streaming else in_memory
    return MemoryEstimate(streaming, peak, in_memory, streamed, available)


def check_fits(memory: MemoryEstimate, from_checkpoint: bool) -> None:
    """Refuse an in-memory compile of a checkpoint that the available memory cannot hold."""
    if memory.streaming or not from_checkpoint or memory.available_bytes is None:
        return
    if memory.peak_bytes > memory.available_bytes:
        raise HostMemoryError(
            f"compiling in memory needs about {_gib(memory.peak_bytes)}, and this machine has "
            f"{_gib(memory.available_bytes)} available: compile with --stream (stream=True), which needs about "
            f"{_gib(memory.streamed_bytes)}"
        )


def _gib(count: int) -> str:
    if count >= 2**30:
        return f"{count / 2**30:.2f} GiB"
    return f"{count / 2**20:.0f} MiB" if count >= 2**20 else f"{count / 2**10:.0f} KiB"
