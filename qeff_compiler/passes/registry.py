"""Registry of passes by pipeline name."""

from __future__ import annotations

import difflib

from qeff_compiler.errors import UnknownPassError
from qeff_compiler.passes.base import Pass

_PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available to pipeline strings under `cls.name`."""
    if cls.name in _PASSES and _PASSES[cls.name] is not cls:
        raise ValueError(f"two passes are registered under the name {cls.name!r}")
    _PASSES[cls.name] = cls
    return cls


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as `name`; an `UnknownPassError` with close matches otherwise."""
    try:
        return _PASSES[name]
    except KeyError:
        close = difflib.get_close_matches(name, _PASSES, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownPassError(f"unknown pass {name!r}{hint} (registered: {', '.join(sorted(_PASSES))})") from None


def registered_passes() -> dict[str, type[Pass]]:
    """Every registered pass by name, sorted by name."""
    return dict(sorted(_PASSES.items()))
