"""The `Pass` interface: a named, optioned, pure Program → Program transformation.

Modelled on torch.fx's pass infra (`torch/fx/passes/infra/pass_base.py`), which states a pass's contract as
`requires`/`ensures`; ours works on a whole `Program` (graph + weight store + I/O specs) rather than a bare
GraphModule, because compiler passes here also create weights and change the program's inputs and outputs.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from qeff_compiler.ir.program import Program


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Options of a pass that takes none."""


def option(default: Any, help: str) -> Any:  # noqa: A002 (mirrors argparse/typer naming)
    """Declare a pass option: a dataclass field with a default and one line of help for `qeffc passes`."""
    return dataclasses.field(default=default, metadata={"help": help})


class Pass(ABC):
    """A graph pass. Subclasses set the class attributes and implement `run`."""

    #: name used in pipeline strings, e.g. "kv-cache"
    name: ClassVar[str]
    #: one line for `qeffc passes`
    summary: ClassVar[str]
    #: frozen dataclass of the pass's options (field types drive pipeline-string parsing)
    Options: ClassVar[type] = NoOptions
    #: program properties the pass needs (set by earlier passes); the manager refuses to run it without them
    requires: ClassVar[frozenset[str]] = frozenset()
    #: properties the pass establishes on its result
    ensures: ClassVar[frozenset[str]] = frozenset()
    #: largest change of any output element the numeric check accepts after this pass
    tolerance: ClassVar[float] = 1e-5

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()
        #: what the last `run` wants a user to know (e.g. values clipped); the manager records them per pass
        self.notes: list[str] = []

    @abstractmethod
    def transform(self, program: Program) -> Program:
        """Return the transformed program; must not modify `program` (use `program.copy_graph()`)."""

    def run(self, program: Program) -> Program:
        """Transform and record the properties this pass ensures; `notes` describe this run only."""
        self.notes = []
        result = self.transform(program)
        return result.evolve(properties=result.properties | self.ensures)

    def tolerance_for(self, program: Program) -> float:
        """Largest output change the numeric check accepts when this pass runs on `program`."""
        return self.tolerance

    def describe(self) -> str:
        """The pass as it would be written in a pipeline string, with its non-default options."""
        changed = [
            f"{f.name}={getattr(self.options, f.name)}"
            for f in dataclasses.fields(self.options)
            if getattr(self.options, f.name) != f.default
        ]
        return f"{self.name}{{{','.join(changed)}}}" if changed else self.name
