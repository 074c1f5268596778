"""Pipeline strings in mlir-opt style: `"patch-attention,kv-cache{ctx_len=128},lower-fp16"`.

Grammar: passes separated by commas (spaces around them are ignored); each pass is a name (`[a-z0-9][a-z0-9-]*`)
with an optional `{...}` block of `key=value` options separated by commas or spaces. Values may not contain
braces, commas or spaces. Option values are converted by the type of the pass's `Options` dataclass field (int,
float, bool, str, or `X | None` where the literal `none` gives None).

Text is for people, the artifact manifest and `qeffc opt --passes`; code builds pipelines from configured pass
objects (`configure`), whose option values may hold any character.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qeff_compiler.errors import PassOptionError, PipelineSyntaxError
from qeff_compiler.passes.base import Pass
from qeff_compiler.passes.registry import get_pass

_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_OPTION = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=([^{}=,\s]+)")


@dataclass(frozen=True)
class PassInvocation:
    """One pass as written in a pipeline string: its name and raw option texts."""

    name: str
    options: dict[str, str]


def parse_pipeline(text: str) -> list[PassInvocation]:
    """Split a pipeline string into invocations; a `PipelineSyntaxError` says where it is malformed."""
    invocations: list[PassInvocation] = []
    position = 0
    text = text.strip()
    while position < len(text):
        position = _skip_spaces(text, position)
        name_match = _NAME.match(text, position)
        if name_match is None:
            raise _syntax_error(text, position, "expected a pass name")
        position = name_match.end()
        options: dict[str, str] = {}
        if position < len(text) and text[position] == "{":
            close = text.find("}", position)
            nested = text.find("{", position + 1)
            if close == -1:
                raise _syntax_error(text, position, "'{' is never closed")
            if nested != -1 and nested < close:
                raise _syntax_error(text, nested, "nested '{' in pass options")
            options = _parse_options(text, position + 1, close, name_match.group())
            position = close + 1
        invocations.append(PassInvocation(name_match.group(), options))
        position = _skip_spaces(text, position)
        if position < len(text):
            if text[position] != ",":
                raise _syntax_error(text, position, "expected ',' between passes")
            position += 1
            if position >= len(text):
                raise _syntax_error(text, position, "pipeline ends with ','")
    return invocations


def _skip_spaces(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _parse_options(text: str, start: int, end: int, pass_name: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in filter(None, re.split(r"[,\s]+", text[start:end])):
        match = _OPTION.fullmatch(item)
        if match is None:
            raise _syntax_error(text, text.index(item, start), f"option {item!r} of {pass_name} is not key=value")
        key, value = match.groups()
        if key in options:
            raise PassOptionError(f"option {key!r} is given twice for pass {pass_name}")
        options[key] = value
    return options


def _syntax_error(text: str, position: int, problem: str) -> PipelineSyntaxError:
    return PipelineSyntaxError(f"malformed pipeline {text!r} at column {position + 1}: {problem}")


def build_passes(text: str) -> list[Pass]:
    """Parse `text` and instantiate each pass with its typed options."""
    return [instantiate(invocation) for invocation in parse_pipeline(text)]


def instantiate(invocation: PassInvocation) -> Pass:
    """Create the named pass, converting raw option texts by the Options field types."""
    cls = get_pass(invocation.name)
    _check_option_names(cls, invocation.options)
    hints = typing.get_type_hints(cls.Options)
    values = {key: _convert(cls.name, key, raw, hints[key]) for key, raw in invocation.options.items()}
    return cls(cls.Options(**values))


def configure(name: str, **options: Any) -> Pass:
    """The pass registered as `name` with typed `options` (no text in between, so a value may hold any
    character, e.g. a file path with commas or spaces)."""
    cls = get_pass(name)
    _check_option_names(cls, options)
    return cls(cls.Options(**options))


def pipeline_text(passes: Sequence[Pass]) -> str:
    """The pipeline as text (for printing and the artifact manifest): each pass with its non-default options."""
    return ",".join(p.describe() for p in passes)


def _check_option_names(cls: type[Pass], options: Mapping[str, object]) -> None:
    fields = [f.name for f in dataclasses.fields(cls.Options)]
    for key in options:
        if key not in fields:
            raise PassOptionError(f"pass {cls.name} has no option {key!r} (its options: {', '.join(fields) or 'none'})")


def _convert(pass_name: str, key: str, raw: str, annotation: Any) -> Any:
    allowed = _union_members(annotation)
    if type(None) in allowed and raw.lower() == "none":
        return None
    for kind in allowed:
        if kind is bool:
            if raw.lower() in ("true", "1"):
                return True
            if raw.lower() in ("false", "0"):
                return False
        elif kind in (int, float, str):
            try:
                return kind(raw)
            except ValueError:
                continue
    names = " or ".join("none" if k is type(None) else k.__name__ for k in allowed)
    raise PassOptionError(f"option {key}={raw!r} of pass {pass_name} must be {names}")


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)
