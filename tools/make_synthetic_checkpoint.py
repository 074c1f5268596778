"""Write an MPT checkpoint of any preset size with seeded random bf16 weights, as HF's sharded safetensors.

No real checkpoint can be downloaded here, so benchmarks and tests of real-size compiles use these. The
directory is what `save_pretrained` writes for a sharded model: config.json, model-0000i-of-0000n.safetensors
and model.safetensors.index.json (tied lm_head stored once, as transformer.wte.weight). Tensors are made and
written one at a time (a shard's file is written tensor by tensor), so a 13 GB MPT-7B is written in the memory
of its largest tensor.

Weights are N(0, 0.02²) like HF's MPT init, layer norms 1: a numerically sane model (activations far from fp16's
range, so lower-fp16's overflow check passes). Each tensor gets its own generator seeded from (seed, name), so
a tensor's values do not depend on the shard size.

    python tools/make_synthetic_checkpoint.py mpt-7b /work/ckpt/mpt-7b --seed 0 --shard-size 2GB
    python tools/make_synthetic_checkpoint.py mpt-125m /tmp/mpt-125m --layers 4
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import re
import sys
from pathlib import Path

import torch
from transformers import MptConfig

from qeff_compiler.capture.presets import preset_config, preset_names
from qeff_compiler.capture.sources import build_meta_model
from qeff_compiler.ir.weights import Derivation, WeightSpec, WeightStore
from qeff_compiler.weights_file import write_weights

INIT_STD = 0.02
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMG]?B)$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}


def parse_size(text: str) -> int:
    """'2GB' → bytes (binary units)."""
    match = _SIZE.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"shard size {text!r} is not a size like 500MB or 2GB")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def checkpoint_specs(config: MptConfig) -> dict[str, tuple[int, ...]]:
    """State-dict name → shape of the checkpoint, tied weights once (HF stores the input embedding)."""
    specs: dict[str, tuple[int, ...]] = {}
    seen: set[int] = set()
    for name, tensor in build_meta_model(config).state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            specs[name] = tuple(tensor.shape)
    return specs


def synthetic_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The bf16 values of one weight: ones for norms, N(0, INIT_STD²) otherwise, from a (seed, name) generator."""
    if ".norm" in name or name.startswith("transformer.norm_f"):
        return torch.ones(shape, dtype=torch.bfloat16)
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
    return (torch.randn(shape, generator=generator) * INIT_STD).to(torch.bfloat16)


def _made(name: str, shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor]:
    return (synthetic_tensor(name, shape, seed),)


def plan_shards(specs: dict[str, tuple[int, ...]], shard_size: int) -> list[list[str]]:
    """Consecutive tensors grouped into shards of at most `shard_size` bytes (a larger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in specs.items():
        nbytes = 2 * _numel(shape)
        if shards[-1] and size + nbytes > shard_size:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_checkpoint(config: MptConfig, out: Path, seed: int, shard_size: int) -> int:
    """Write config, shards and index to `out`; returns the bytes of tensor data written."""
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    specs = checkpoint_specs(config)
    shards = plan_shards(specs, shard_size)
    weight_map: dict[str, str] = {}
    for i, names in enumerate(shards, start=1):
        file_name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        # a streaming store of recipes: write_weights makes and writes one tensor at a time
        store = WeightStore().streamed().derive(
            Derivation((n,), (WeightSpec(specs[n], torch.bfloat16),), (), functools.partial(_made, n, specs[n], seed))
            for n in names
        )
        write_weights(store, out / file_name)
        weight_map.update(dict.fromkeys(names, file_name))
        print(f"wrote {file_name} ({len(names)} tensors)", file=sys.stderr)
    total = sum(2 * _numel(shape) for shape in specs.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset", choices=preset_names(), help="model shape (qeff_compiler.capture.presets)")
    parser.add_argument("out", type=Path, help="directory to write (created)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", type=parse_size, default=parse_size("2GB"), help="max bytes per shard, e.g. 500MB")
    parser.add_argument("--layers", type=int, default=None, help="override n_layers (smaller checkpoints of a shape)")
    args = parser.parse_args(argv)
    config = preset_config(args.preset)
    if args.layers is not None:
        config.n_layers = args.layers
    total = write_checkpoint(config, args.out, args.seed, args.shard_size)
    print(f"{args.out}: {total / 2**30:.2f} GiB of bf16 weights", file=sys.stderr)


if __name__ == "__main__":
    main()
