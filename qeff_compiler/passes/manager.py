"""`PassManager`: run an ordered pipeline of passes with verification, timing and IR printing.

    pm = PassManager("strip-export-noise,dce", print_ir_after={"dce"})
    program = pm.run(program)
    print(pm.timing_report())

Every pass run checks the pass's contract, lints the graph and re-derives shapes with fake tensors (`Pass.run`);
the manager adds the pipeline to contract errors and — when the program has real weights — compares the outputs
with the previous stage on sample inputs within the pass's tolerance. These are the mlir-opt / LLVM
`-verify-each`, `--print-ir-after`, `--time-passes`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from qeff_compiler.errors import PipelineError
from qeff_compiler.ir.printer import format_program
from qeff_compiler.ir.program import Program
from qeff_compiler.passes.base import Pass
from qeff_compiler.passes.pipeline import build_passes
from qeff_compiler.passes.verify import compare_outputs, reference_outputs


@dataclass(frozen=True)
class PassRecord:
    """What one pass did in a run: its time, the verification time, and the numeric change it made."""

    pass_text: str
    seconds: float
    verify_seconds: float
    nodes_before: int
    nodes_after: int
    #: largest output change vs the previous stage; None when the program has no weight data (meta) or streams it
    max_abs_diff: float | None
    #: what the pass reported about this run (e.g. how many weight values lowering clipped)
    notes: tuple[str, ...] = ()


class PassManager:
    """An ordered list of passes plus the instrumentation around them."""

    def __init__(
        self,
        pipeline: str | Sequence[Pass] = "",
        *,
        verify: bool = True,
        print_ir_after: Collection[str] = (),
        print_ir_after_all: bool = False,
        printer: Callable[[str], None] = print,
        sample_seed: int = 0,
    ) -> None:
        self.passes: list[Pass] = build_passes(pipeline) if isinstance(pipeline, str) else list(pipeline)
        names = {p.name for p in self.passes}
        unknown = sorted(set(print_ir_after) - names)
        if unknown:
            raise PipelineError(f"--print-ir-after names passes not in the pipeline: {unknown} (pipeline: {self})")
        self.verify = verify
        self.print_ir_after = set(print_ir_after)
        self.print_ir_after_all = print_ir_after_all
        self.printer = printer
        self.sample_seed = sample_seed
        self.records: list[PassRecord] = []
        self.unchecked: str | None = None

    def __str__(self) -> str:
        return ",".join(p.describe() for p in self.passes)

    def run(self, program: Program) -> Program:
        """Run every pass in order on `program` and return the result; `records` describes the run."""
        self.records = []
        # a streaming store (real-size checkpoint) is not run per pass: each run would read every weight
        check_numerics = self.verify and program.has_weight_data and not program.weights.streaming
        #: why the outputs were not compared after each pass (the timing table says so); None: they were
        self.unchecked = None if check_numerics else _unchecked_reason(self.verify, program)
        reference = reference_outputs(program, self.sample_seed) if check_numerics else None
        for current in self.passes:
            current.check_contract(program, where=f" (pipeline: {self})")
            nodes_before = len(program.graph.nodes)
            tolerance = current.tolerance_for(program)
            start = time.perf_counter()
            result = current.run(program)
            program = result.program
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            max_abs_diff = None
            if reference is not None:
                comparison, reference = compare_outputs(
                    reference, program, self.sample_seed, tolerance, after=current.name
                )
                max_abs_diff = comparison.worst
            verify_seconds = time.perf_counter() - start
            self.records.append(
                PassRecord(
                    current.describe(),
                    seconds,
                    verify_seconds,
                    nodes_before,
                    len(program.graph.nodes),
                    max_abs_diff,
                    result.notes,
                )
            )
            if self.print_ir_after_all or current.name in self.print_ir_after:
                self.printer(f"// ----- IR after {current.describe()} -----\n{format_program(program)}")
        return program

    def timing_report(self) -> str:
        """A `--time-passes` style table of the last run."""
        total = sum(r.seconds + r.verify_seconds for r in self.records) or 1.0
        width = max([40, *(len(r.pass_text) for r in self.records)])
        lines = [f"{'pass':<{width}} {'time (s)':>9} {'verify (s)':>10} {'%':>6} {'nodes':>13} {'max |Δ|':>9}"]
        for r in self.records:
            share = 100 * (r.seconds + r.verify_seconds) / total
            diff = (self.unchecked or "-") if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}"
            nodes = f"{r.nodes_before}→{r.nodes_after}"
            lines.append(
                f"{r.pass_text:<{width}} {r.seconds:>9.4f} {r.verify_seconds:>10.4f} {share:>6.1f} "
                f"{nodes:>13} {diff:>9}"
            )
        return "\n".join(lines)

    def notes_report(self) -> str:
        """The notes the passes of the last run made, one per line, each prefixed by its pass."""
        lines = []
        for r in self.records:
            lines += [f"{r.pass_text}: {note}" for note in r.notes]
        return "\n".join(lines)


def _unchecked_reason(verify: bool, program: Program) -> str:
    """The timing table's word for outputs not compared: checking off, no weight data, or weights streamed."""
    if not verify:
        return "off"
    return "meta" if not program.has_weight_data else "streamed"
