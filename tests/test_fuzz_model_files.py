"""Fuzzing the JSON files of a model directory, 500 hypothesis examples each: config.json, a sharded checkpoint's
index, tokenizer.json.

Each example mutates one file of a tiny model directory (a field set to a value of another JSON type or an absurd
size, a field deleted, bytes flipped, cut or made invalid UTF-8) and resolves the directory as a compile does
(config, tokenizer, checkpoint headers, HF's modules built on the meta device; no tracing, so each example stays
cheap). The only outcomes allowed are a `QeffError` or success; a directory that resolves must also have a
tokenizer that `qeffc run` can load and use. Every example runs under `no_hang`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from qeff_compiler.capture import resolve_model
from qeff_compiler.errors import QeffError
from tests.conftest import TinyArtifact
from tests.test_fuzz import FUZZ, no_hang

INDEX = "model.safetensors.index.json"
JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, -1, 4, 8, 2048, 10**9, 2**63, -(2**63), 10**30]),
    st.integers(),
    st.sampled_from([4.0, 0.5, -1.0, 1e-300, 1e30, float("nan"), float("inf"), -float("inf"), 1e-5]),
    st.floats(),
    st.sampled_from(["", "foo", "mpt", "torch", "bfloat16", "float77", "multihead_attention", "../x.safetensors"]),
    st.text(max_size=6),
    st.lists(st.integers(-3, 3), max_size=3),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def model_dir(tiny_artifact: TinyArtifact) -> Path:
    """The shared tiny MPT directory (with the shipped tokenizer); each test mutates its own copy."""
    resolve_model(tiny_artifact.model_dir)  # the pristine directory resolves
    return tiny_artifact.model_dir


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, allow_nan=True))


def _set(tree: dict[str, Any], path: list[str], value: object) -> None:
    """Set (or, for the value `_DELETE`, remove) the entry at `path` in a nested JSON object."""
    *parents, last = path
    for key in parents:
        tree = tree[key]
    if value is _DELETE:
        tree.pop(last, None)
    else:
        tree[last] = value


_DELETE = object()


@st.composite
def byte_damage(draw: st.DrawFn, data: bytes) -> bytes:
    """One to three byte flips, a truncation, an insertion of invalid UTF-8, or a non-object top level."""
    damaged = bytearray(data)
    kind = draw(st.sampled_from(["flip", "truncate", "invalid-utf8", "not-an-object"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 3))):
            damaged[draw(st.integers(0, len(damaged) - 1))] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        del damaged[draw(st.integers(0, len(damaged) - 1)) :]
    elif kind == "invalid-utf8":
        position = draw(st.integers(0, len(damaged)))
        damaged[position:position] = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"]))
    else:
        return json.dumps(draw(st.one_of(st.lists(st.integers(), max_size=2), st.integers(), st.none()))).encode()
    return bytes(damaged)


def _resolves(directory: Path, what: str) -> bool:
    """Resolve as a compile does: True on success, False on a `QeffError`; anything else fails the test."""
    with no_hang(what):
        try:
            resolve_model(directory)
        except QeffError as error:
            event(f"refused: {type(error).__name__}")
            return False
    event("resolved")
    return True


def _fuzz(directory: Path, file: str, mutations: st.SearchStrategy[bytes], then: Callable[[Path], object] | None = None) -> list[bool]:
    """Write each mutation to `directory/file` and resolve the directory (then `then(directory)` when it resolves);
    returns whether each example resolved."""
    outcomes: list[bool] = []

    @FUZZ
    @given(content=mutations)
    def check(content: bytes) -> None:
        (directory / file).write_bytes(content)
        resolved = _resolves(directory, content[:200])
        outcomes.append(resolved)
        if resolved and then is not None:
            with no_hang(f"{file} use"):
                then(directory)

    check()
    return outcomes


def _report(what: str, outcomes: list[bool]) -> None:
    """Print the counts (`pytest -s` shows them) and check both outcomes occurred over >= 500 examples."""
    print(f"{what}: {len(outcomes)} mutations tried, {len(outcomes) - sum(outcomes)} refused with a QeffError")
    assert len(outcomes) >= 500 and 0 < sum(outcomes) < len(outcomes), (len(outcomes), sum(outcomes))


# config.json ------------------------------------------------------------------------------------------------------
CONFIG_FIELDS = [
    "d_model", "n_heads", "n_layers", "expansion_ratio", "max_seq_len", "vocab_size", "resid_pdrop", "emb_pdrop",
    "layer_norm_epsilon", "learned_pos_emb", "attn_config", "init_device", "logit_scale", "no_bias",
    "embedding_fraction", "norm_type", "use_cache", "initializer_range", "tie_word_embeddings", "pad_token_id",
    "bos_token_id", "eos_token_id", "model_type", "dtype", "torch_dtype", "architectures", "id2label", "label2id",
    "num_labels", "problem_type", "chunk_size_feed_forward", "is_encoder_decoder", "transformers_version", "bogus",
]
ATTENTION_FIELDS = [
    "attn_type", "attn_pdrop", "attn_impl", "clip_qkv", "softmax_scale", "prefix_lm", "qk_ln",
    "attn_uses_sequence_id", "alibi", "alibi_bias_max", "id2label", "dtype", "bogus",
]


@st.composite
def config_mutations(draw: st.DrawFn, config: dict[str, Any]) -> bytes:
    """config.json with one to three fields set to JSON values of any type (or deleted), or damaged bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(byte_damage(json.dumps(config).encode()))
    mutated = json.loads(json.dumps(config))
    mutated.setdefault("attn_config", {})
    for _ in range(draw(st.integers(1, 3))):
        nested = isinstance(mutated.get("attn_config"), dict) and draw(st.integers(0, 3)) == 0
        path = ["attn_config", draw(st.sampled_from(ATTENTION_FIELDS))] if nested else [draw(st.sampled_from(CONFIG_FIELDS))]
        _set(mutated, path, draw(st.one_of(JSON_VALUES, st.just(_DELETE))))
    return json.dumps(mutated, allow_nan=True).encode()


def test_config_json_mutations_give_qeff_errors_only(model_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "config"
    shutil.copytree(model_dir, directory)
    config = json.loads((model_dir / "config.json").read_text())
    _report("config.json", _fuzz(directory, "config.json", config_mutations(config)))


# the sharded checkpoint's index -------------------------------------------------------------------------------------
@st.composite
def index_mutations(draw: st.DrawFn, index: dict[str, Any]) -> bytes:
    """The index with its weight_map replaced, an entry's shard name replaced or removed, or damaged bytes."""
    kind = draw(st.sampled_from(["weight_map", "entry", "entry", "bytes"]))
    mutated = json.loads(json.dumps(index))
    if kind == "weight_map":
        _set(mutated, ["weight_map"], draw(st.one_of(JSON_VALUES, st.just(_DELETE))))
    elif kind == "entry":
        key = draw(st.sampled_from(sorted(index["weight_map"])))
        shards = sorted(set(index["weight_map"].values()))
        value = st.one_of(JSON_VALUES, st.sampled_from([*shards, "model.safetensors", "/etc/passwd", "a/b.safetensors"]))
        _set(mutated, ["weight_map", key], draw(st.one_of(value, st.just(_DELETE))))
    else:
        return draw(byte_damage(json.dumps(index).encode()))
    return json.dumps(mutated, allow_nan=True).encode()


def test_sharded_index_mutations_give_qeff_errors_only(model_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "sharded"
    shutil.copytree(model_dir, directory)
    tensors = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(directory / shard), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    _write_json(directory / INDEX, index)
    resolve_model(directory)  # the pristine sharded checkpoint resolves
    _report("sharded index", _fuzz(directory, INDEX, index_mutations(index)))


# tokenizer.json ---------------------------------------------------------------------------------------------------
def _paths(tree: object, prefix: tuple[str, ...] = (), depth: int = 3) -> list[tuple[str, ...]]:
    """Paths to the entries of a JSON object down to `depth` (lists are left whole)."""
    if not isinstance(tree, dict) or depth == 0:
        return []
    found = []
    for key, value in tree.items():
        found.append((*prefix, key))
        if key != "vocab":  # thousands of entries: one is enough to damage, via the byte mutations
            found += _paths(value, (*prefix, key), depth - 1)
    return found


@st.composite
def tokenizer_mutations(draw: st.DrawFn, tokenizer: dict[str, Any], paths: list[tuple[str, ...]]) -> bytes:
    """tokenizer.json with one entry (model type, normalizer, vocab, merges, …) set to another JSON value or
    deleted, or damaged bytes."""
    if draw(st.integers(0, 2)) == 0:
        return draw(byte_damage(json.dumps(tokenizer).encode()))
    mutated = json.loads(json.dumps(tokenizer))
    _set(mutated, list(draw(st.sampled_from(paths))), draw(st.one_of(JSON_VALUES, st.just(_DELETE))))
    return json.dumps(mutated, allow_nan=True).encode()


def test_tokenizer_json_mutations_give_qeff_errors_only(model_dir: Path, tmp_path: Path) -> None:
    from qeff_compiler.cli.generate import _tokenizer

    directory = tmp_path / "tokenizer"
    shutil.copytree(model_dir, directory)
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())

    def use(directory: Path) -> None:  # what `qeffc run` does with the artifact's copy must work
        loaded = _tokenizer(directory)
        loaded.decode(loaded.encode("def f(x):\n    return x"))

    _report("tokenizer.json", _fuzz(directory, "tokenizer.json", tokenizer_mutations(tokenizer, _paths(tokenizer)), use))
