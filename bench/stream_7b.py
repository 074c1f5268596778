"""Streamed compile of a full-size MPT-7B checkpoint from disk to a saved artifact: wall time and peak memory.

    python -m bench.stream_7b [--dir DIR] [--runs 3] [--precisions fp16,mxfp6] [--keep]

Writes a synthetic MPT-7B checkpoint (seeded random bf16, 13.3 GB in 2 GB shards, `tools/make_synthetic_checkpoint.py`)
unless DIR holds one, then compiles it with the default options (`qc.compile(DIR, precision=...)`, which streams a
checkpoint, + `save`) per precision `--runs` times,
each in a fresh process, and reports the median wall time, peak anonymous memory (RssAnon, sampled: the weights
in memory, unlike the checkpoint's memory-mapped pages) and VmHWM (peak RSS including mapped file pages). Then it
loads the last fp16 and mxfp6 artifacts, runs `estimate` and times one decode step on the host.
Disk: 13.3 GB checkpoint + 13.3 GB fp16 artifact + 5.6 GB mxfp6 artifact; deleted at the end unless --keep.
Results: bench/results/stream_7b.json. The machine is shared: each row records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "stream_7b.json"
COMPILE = {"ctx_len": 2048, "prefill_len": 128}


def compile_child(checkpoint: Path, precision: str, out: Path) -> dict:
    """One streamed compile + save in this process."""
    import qeff_compiler as qc
    from bench.rss import AnonPeak, status_kb

    with AnonPeak() as anon:
        start = time.perf_counter()
        compiled = qc.compile(checkpoint, precision=precision, **COMPILE)  # the default streams a checkpoint
        compile_s = time.perf_counter() - start
        compiled.save(out, overwrite=True)
        wall_s = time.perf_counter() - start
    return {
        "precision": precision,
        "streamed": compiled.prefill.weights.streaming,
        "wall_s": wall_s,
        # CPU seconds of this process (user + system): on a shared machine, what the compile itself cost
        "cpu_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
        "compile_s": compile_s,
        "save_s": wall_s - compile_s,
        "peak_rss_anon_mb": anon.peak_mb,
        "vm_hwm_mb": status_kb("VmHWM") / 1024,
        "artifact_gb": sum(f.stat().st_size for f in out.iterdir()) / 1e9,
        "loadavg": os.getloadavg(),
    }


def load_child(artifact: Path) -> dict:
    """Load the artifact (streaming), estimate, and run one decode step on the host."""
    import qeff_compiler as qc
    from bench.rss import AnonPeak, status_kb
    from qeff_compiler.ir.samples import sample_inputs

    with AnonPeak() as anon:
        start = time.perf_counter()
        compiled = qc.load_compiled(artifact, stream=True)
        load_s = time.perf_counter() - start
        estimate = compiled.estimate(prompt_len=1024, generation_len=1024)
        inputs = sample_inputs(compiled.decode, seed=0)
        start = time.perf_counter()
        outputs = compiled.host_executors()[1](inputs)
        decode_s = time.perf_counter() - start
    logits = outputs["logits"]
    return {
        "artifact": artifact.name,
        "load_s": load_s,
        "decode_step_s": decode_s,
        "logits_finite": bool(logits.isfinite().all()),
        "simulated_decode_tokens_per_s": estimate.decode_tokens_per_s,
        "simulated_ttft_s": estimate.ttft_s,
        "peak_rss_anon_mb": anon.peak_mb,
        "vm_hwm_mb": status_kb("VmHWM") / 1024,
        "loadavg": os.getloadavg(),
    }


def _child(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "bench.stream_7b", *args], capture_output=True, text=True, check=False, cwd=ROOT.parent
    )
    if result.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def ensure_checkpoint(directory: Path, preset: str = "mpt-7b", layers: int | None = None) -> dict:
    """The synthetic checkpoint (written if missing) and how long writing it took."""
    checkpoint = directory / (preset if layers is None else f"{preset}-{layers}-layers")
    if (checkpoint / "model.safetensors.index.json").is_file():
        return {"path": str(checkpoint), "written_s": None}
    start = time.perf_counter()
    extra = [] if layers is None else ["--layers", str(layers)]
    subprocess.run(
        [sys.executable, str(ROOT.parent / "tools" / "make_synthetic_checkpoint.py"), preset, str(checkpoint), *extra],
        check=True, stdout=subprocess.DEVNULL,
    )
    return {"path": str(checkpoint), "written_s": time.perf_counter() - start}


def section(quick: bool = False) -> dict:
    """`python -m bench`'s section: the full measurement, or (quick) a 1-layer MPT-125M-shape checkpoint to fp16
    once, in a temporary directory (the schema, for CI)."""
    import tempfile

    if not quick:
        directory = Path("/work/qeff-stream-bench")
        directory.mkdir(parents=True, exist_ok=True)
        return run(directory, ["fp16", "mxfp6"], 3, keep=False)
    with tempfile.TemporaryDirectory() as directory:
        return run(Path(directory), ["fp16"], 1, keep=False, preset="mpt-125m", layers=1)


def run(
    directory: Path, precisions: list[str], runs: int, keep: bool, preset: str = "mpt-7b", layers: int | None = None
) -> dict:
    checkpoint = ensure_checkpoint(directory, preset, layers)
    size = sum(f.stat().st_size for f in Path(checkpoint["path"]).glob("*.safetensors"))
    result: dict = {"checkpoint": {**checkpoint, "preset": preset, "layers": layers, "gb": size / 1e9}, "compile": [], "load": []}
    for precision in precisions:
        out = directory / f"{Path(checkpoint['path']).name}-{precision}.qeff"
        rows = []
        for _ in range(runs):
            rows.append(_child("--compile", checkpoint["path"], precision, str(out)))
            _save({**result, "partial": {"precision": precision, "runs": rows}})  # a long run keeps what it measured
        result["compile"].append({
            "precision": precision,
            "runs": rows,
            "median_wall_s": statistics.median(r["wall_s"] for r in rows),
            "median_peak_rss_anon_mb": statistics.median(r["peak_rss_anon_mb"] for r in rows),
            "max_vm_hwm_mb": max(r["vm_hwm_mb"] for r in rows),
        })
        result["load"].append(_child("--load", str(out)))
        _save(result)
        if not keep:
            shutil.rmtree(out)
    if not keep:
        shutil.rmtree(checkpoint["path"])
    return result


def _save(result: dict) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/work/qeff-stream-bench"), help="where checkpoint and artifacts go")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--precisions", default="fp16,mxfp6")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and artifacts")
    parser.add_argument("--compile", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compile:
        checkpoint, precision, out = args.compile
        print(json.dumps(compile_child(Path(checkpoint), precision, Path(out))))
        return
    if args.load:
        print(json.dumps(load_child(Path(args.load))))
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    result = run(args.dir, args.precisions.split(","), args.runs, args.keep)
    for row in result["compile"]:
        print(
            f"{row['precision']:<6} median of {len(row['runs'])}: {row['median_wall_s']:.1f} s, "
            f"peak RssAnon {row['median_peak_rss_anon_mb']:.0f} MB, max VmHWM {row['max_vm_hwm_mb']:.0f} MB"
        )
    for row in result["load"]:
        print(f"{row['artifact']}: load {row['load_s']:.1f} s, one decode step {row['decode_step_s']:.1f} s on the host")
    _save(result)


if __name__ == "__main__":
    main()
