"""A compile's peak anonymous memory is bounded: by the checkpoint's size plus a fixed overhead with the default
options (a checkpoint directory streams), and by twice the fp32 weights in memory (`stream=False`).

A synthetic MPT-125M-shape checkpoint with 16 layers (290 MiB of bf16 in 64 MiB shards) is compiled to fp16
and saved in a fresh process, which samples its RssAnon (anonymous memory; the checkpoint's memory-mapped pages
are page cache, not the model held in memory). The bounds, over RssAnon after imports:

    default options (streams):   peak < checkpoint bytes + host_memory.STREAMED_OVERHEAD (512 MiB)
    stream=False (in memory):    peak < host_memory.IN_MEMORY_FACTOR (2) x fp32 bytes of the weights

The in-memory path holds the fp32 weights once, their fp16 copy once (prefill and decode share it) and one
op's work while each pass is checked. Before the copies were cut (a second fp16 copy for decode, the checker's
fp32 copy of the fp16 weights) the same compile needed ~3.5x the fp32 bytes.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from qeff_compiler.host_memory import IN_MEMORY_FACTOR, STREAMED_OVERHEAD

ROOT = Path(__file__).resolve().parents[1]
LAYERS = 16
CHILD = """
import json, sys
import qeff_compiler as qc
from bench.rss import AnonPeak, status_kb

baseline = status_kb("RssAnon") / 1024
options = {} if sys.argv[3] == "default" else {"stream": False}
with AnonPeak() as peak:
    compiled = qc.compile(sys.argv[1], precision="fp16", ctx_len=128, prefill_len=32, **options)
    compiled.save(sys.argv[2])
print(json.dumps({"baseline_mb": baseline, "peak_mb": peak.peak_mb, "streamed": compiled.prefill.weights.streaming}))
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    """The checkpoint directory, its bytes of bf16 weights, and their bytes in fp32."""
    spec = importlib.util.spec_from_file_location("make_synthetic_checkpoint", ROOT / "tools" / "make_synthetic_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    from qeff_compiler.capture.presets import preset_config

    config = preset_config("mpt-125m")
    config.n_layers = LAYERS
    directory = tmp_path_factory.mktemp("checkpoint-300mb")
    stored = tool.write_checkpoint(config, directory, seed=0, shard_size=64 * 2**20)
    return directory, stored, 2 * stored


def measure(checkpoint: Path, out: Path, mode: str) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(checkpoint), str(out), mode], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"\n{mode}: {row}")  # the figures, with pytest -s
    return row


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="RssAnon is read from Linux's /proc")
def test_default_compile_of_a_checkpoint_peaks_below_its_size_plus_fixed_overhead(
    checkpoint: tuple[Path, int, int], tmp_path: Path
) -> None:
    directory, stored, _ = checkpoint
    row = measure(directory, tmp_path / "artifact", "default")
    assert row["streamed"], "a 290 MiB checkpoint compiled with the default options did not stream"
    limit = row["baseline_mb"] + (stored + STREAMED_OVERHEAD) / 2**20
    assert row["peak_mb"] < limit, f"peak RssAnon {row['peak_mb']:.0f} MB >= {limit:.0f} MB ({row})"
    assert (tmp_path / "artifact" / "weights.safetensors").stat().st_size > 0.95 * stored


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="RssAnon is read from Linux's /proc")
def test_in_memory_compile_peaks_below_twice_its_fp32_weights(checkpoint: tuple[Path, int, int], tmp_path: Path) -> None:
    directory, _, fp32 = checkpoint
    row = measure(directory, tmp_path / "artifact", "memory")
    assert not row["streamed"]
    limit = row["baseline_mb"] + IN_MEMORY_FACTOR * fp32 / 2**20
    assert row["peak_mb"] < limit, f"peak RssAnon {row['peak_mb']:.0f} MB >= {limit:.0f} MB ({row})"
