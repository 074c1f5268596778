"""Reading the partition plans an artifact stores: check the JSON's shape field by field before building plans.

A plan file that checksums match can still come from a buggy writer or a hand edit followed by re-checksumming;
`plans_from_json` refuses it with an `ArtifactIntegrityError` naming the field (e.g. `decode.shards[3][3]`),
instead of a KeyError deep inside `PartitionPlan.from_dict`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from qeff_compiler.backends.ai100.partition import PartitionPlan
from qeff_compiler.errors import ArtifactIntegrityError

_Check = Callable[[Any, str], None]


def plans_from_json(data: Any, names: tuple[str, ...], where: str) -> dict[str, PartitionPlan]:
    """The plans of `names` (the specializations) from the decoded JSON of `where` (the plan file)."""
    _mapping(data, where)
    plans = {}
    for name in names:
        if name not in data:
            raise ArtifactIntegrityError(f"{where}: field {name!r} is missing (no plan for the {name} specialization)")
        _record(data[name], f"{where}: {name}", _PLAN)
        plans[name] = PartitionPlan.from_dict(data[name])
    return plans


def _fail(field: str, expected: str, value: Any) -> ArtifactIntegrityError:
    return ArtifactIntegrityError(f"{field} must be {expected}, got {value!r:.80}")


def _integer(value: Any, field: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _fail(field, "a non-negative integer", value)


def _optional_integer(value: Any, field: str) -> None:
    if value is not None:
        _integer(value, field)


def _number(value: Any, field: str) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise _fail(field, "a non-negative number", value)


def _text(value: Any, field: str) -> None:
    if not isinstance(value, str):
        raise _fail(field, "a string", value)


def _mapping(value: Any, field: str) -> None:
    if not isinstance(value, Mapping):
        raise _fail(field, "a JSON object", value)


def _list_of(check: _Check) -> _Check:
    def checked(value: Any, field: str) -> None:
        if not isinstance(value, list):
            raise _fail(field, "a list", value)
        for index, item in enumerate(value):
            check(item, f"{field}[{index}]")

    return checked


def _row(*checks: _Check) -> _Check:
    """A fixed-length list whose items pass `checks` in order (how shards and transfers are stored)."""

    def checked(value: Any, field: str) -> None:
        if not isinstance(value, list) or len(value) != len(checks):
            raise _fail(field, f"a list of {len(checks)} items", value)
        for index, (item, check) in enumerate(zip(value, checks, strict=True)):
            check(item, f"{field}[{index}]")

    return checked


def _record(value: Any, field: str, fields: Mapping[str, _Check]) -> None:
    _mapping(value, field)
    for key, check in fields.items():
        if key not in value:
            raise ArtifactIntegrityError(f"{field}: field {key!r} is missing")
        check(value[key], f"{field}.{key}")


def _replicas(value: Any, field: str) -> None:
    _mapping(value, field)
    for name, devices in value.items():
        _list_of(_integer)(devices, f"{field}[{name!r}]")


def _op(value: Any, field: str) -> None:
    _record(value, field, _OP)


_RANGE = _row(_integer, _integer)
_TRANSFER = _row(_text, _text, _text, _integer, _number, _integer)
_OP: dict[str, _Check] = {
    "node": _text,
    "kind": _text,
    "weights": _list_of(_text),
    "device_share": _number,
    "core_share": _number,
    "transfers": _list_of(_TRANSFER),
    "kv_heads": _list_of(_integer),
    "kv_bytes_per_head": _integer,
}
_PLAN: dict[str, _Check] = {
    "num_devices": _integer,
    "num_cores": _integer,
    "p2p_format": _text,
    "shards": _list_of(_row(_text, _integer, _optional_integer, _list_of(_RANGE), _integer)),
    "replicas": _replicas,
    "ops": _list_of(_op),
}
