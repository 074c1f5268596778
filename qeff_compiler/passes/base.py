"""The `Pass` interface: a named, optioned, pure Program → Program transformation with a declared contract.

Modelled on torch.fx's pass infra (`torch/fx/passes/infra/pass_base.py`: `PassBase`, `PassResult`, `requires` /
`ensures`); ours works on a whole `Program` (graph + weight store + I/O specs) rather than a bare GraphModule,
because compiler passes here also create weights and change the program's inputs and outputs.

A pass's contract is data on its class, checked by `Pass.run` (and so by the manager, which adds the pipeline to
the message): `requires` names properties earlier passes must have established, `forbids` properties the program
must not have yet (the pass already ran, or a pass that must come after it did), `ensures` what the pass
establishes. `run` also checks the result's structure and refreshes its shape metadata, so a pass run on its own
leaves a program the next pass can read.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from qeff_compiler.errors import PassOrderError
from qeff_compiler.ir.program import Program
from qeff_compiler.ir.validate import check_structure, propagate_shapes


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Options of a pass that takes none."""


def option(default: Any, help: str) -> Any:  # noqa: A002 (the keyword reads as argparse and typer spell it)
    """Declare a pass option: a dataclass field with a default and one line of help for `qeffc passes`."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class Forbid:
    """A negative precondition: the program must have none of `properties`. `message` may name the ones it has
    as `{present}` (a list, in the order given here)."""

    properties: tuple[str, ...]
    message: str

    def check(self, program: Program) -> None:
        present = [p for p in self.properties if p in program.properties]
        if present:
            raise PassOrderError(self.message.format(present=present))


@dataclasses.dataclass(frozen=True)
class PassResult:
    """What one run of a pass produced: the program and what a user should know about the run (e.g. values
    clipped), which the manager records per pass."""

    program: Program
    notes: tuple[str, ...] = ()


class Pass(ABC):
    """A graph pass. Subclasses set the class attributes and implement `transform`."""

    #: name used in pipeline strings, e.g. "kv-cache"
    name: ClassVar[str]
    #: one line for `qeffc passes`
    summary: ClassVar[str]
    #: frozen dataclass of the pass's options (field types drive pipeline-string parsing)
    Options: ClassVar[type] = NoOptions
    #: program properties the pass needs (set by earlier passes)
    requires: ClassVar[frozenset[str]] = frozenset()
    #: properties the program must not have when the pass runs
    forbids: ClassVar[tuple[Forbid, ...]] = ()
    #: properties the pass establishes on its result
    ensures: ClassVar[frozenset[str]] = frozenset()
    #: largest change of any output element the numeric check accepts after this pass
    tolerance: ClassVar[float] = 1e-5

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @abstractmethod
    def transform(self, program: Program) -> PassResult | Program:
        """The transformed program (a bare Program: no notes); must not modify `program` (use `copy_graph()`)."""

    def check_contract(self, program: Program, where: str = "") -> None:
        """Raise `PassOrderError` when `program` lacks a required property or has a forbidden one; `where` goes
        into the message of a missing one (the manager names the pipeline)."""
        missing = sorted(self.requires - program.properties)
        if missing:
            raise PassOrderError(
                f"pass {self.name} requires {missing}, which no earlier pass established{where}; "
                "put the passes that establish them first"
            )
        for forbid in self.forbids:
            forbid.check(program)

    def analyses(self) -> tuple[Pass, ...]:
        """Analysis passes to run first, unless the program already has what they ensure (e.g. lower-fp16's range
        check); an analysis returns its input program, or raises."""
        return ()

    def run(self, program: Program) -> PassResult:
        """Check the contract, run the analyses this pass needs, transform, check the result's structure, refresh
        its shapes and record what this pass ensures."""
        self.check_contract(program)
        for analysis in self.analyses():
            if not analysis.ensures <= program.properties:
                program = analysis.run(program).program
        result = self.transform(program)
        if isinstance(result, Program):
            result = PassResult(result)
        transformed = result.program.evolve(properties=result.program.properties | self.ensures)
        check_structure(transformed, after=self.name)
        propagate_shapes(transformed, after=self.name)
        return dataclasses.replace(result, program=transformed)

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
