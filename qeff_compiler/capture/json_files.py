"""Read the JSON files of a model directory (config, sharded index, tokenizer files) without trusting them.

A file of the wrong shape must end in one `QeffError` naming the file and the field, never in a traceback from
the library that would read it later: undecodable bytes, invalid or absurdly nested JSON, a top level that is not
an object, and (for the sharded index) a `weight_map` that is not an object of tensor name → shard file name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qeff_compiler.errors import QeffError, WeightError

#: extensions a shard named by an index may have, per index kind
_SHARD_SUFFIXES = {"model.safetensors.index.json": ".safetensors", "pytorch_model.bin.index.json": ".bin"}


def read_json_object(path: Path, error: Callable[[str], QeffError]) -> dict[str, Any]:
    """The JSON object stored in `path`; anything else raises `error(message)` naming the file and the problem."""
    try:
        text = path.read_bytes().decode("utf-8")
        value = json.loads(text)
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{path} is not UTF-8 text: byte {exc.object[exc.start]:#04x} at offset {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise error(f"{path} is not valid JSON: nested too deeply to read") from exc
    if not isinstance(value, dict):
        raise error(f"{path} must hold a JSON object, got {json_kind(value)}")
    return value


def read_weight_map(index: Path) -> dict[str, str]:
    """The `weight_map` of a sharded checkpoint index: tensor name → shard file name in the index's directory.
    Shard names must be plain file names with the index kind's extension (never a path out of the directory)."""
    weight_map = read_json_object(index, WeightError).get("weight_map")
    if not isinstance(weight_map, dict):
        raise WeightError(
            f"{index} is not a valid safetensors index (needs a 'weight_map' object of tensor name → shard file), "
            f"got 'weight_map': {json_kind(weight_map)}"
        )
    suffix = _SHARD_SUFFIXES.get(index.name, "")
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise WeightError(
                f"{index}: weight_map[{name!r}] must be a shard file name (a string), got {json_kind(shard)}"
            )
        if Path(shard).name != shard or shard in ("", ".", "..") or not shard.endswith(suffix) or "\\" in shard:
            raise WeightError(
                f"{index}: weight_map[{name!r}] = {shard!r} is not a {suffix} file name in the index's directory"
            )
    return weight_map


def json_kind(value: object) -> str:
    """How JSON would call `value`, with the value itself (shortened) for scalars."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    return "an array" if isinstance(value, list) else "an object"

