"""Measuring calibration for `w8a8`: per-input-channel activation maxima of every linear, from sample text.

`lower-w8a8` needs, for each matmul weight a linear reads, the largest |activation| that reaches each of its input
channels: SmoothQuant's smoothing factors and the per-tensor activation scale are computed from it. `calibrate`
measures it on the model as the device runs it (after `lower-fp16`, so on fp16-rounded activations): the text is
tokenized with the model's tokenizer and cut into non-overlapping `max_seq_len` windows, as `qc.evaluate` does, and
a `torch.fx.Interpreter` runs each window and keeps the running maximum at every linear's activation input.

    table = qc.calibrate(TINY_MPT)                     # the model directory's calibration.txt
    save_calibration(table, "calib.safetensors")       # then: lower-w8a8{calibration=calib.safetensors}

The table maps weight names (`transformer.blocks.0.ffn.up_proj.weight`, `lm_head.weight`) to fp32 [in] tensors;
its file format (safetensors with a metadata tag, so `load_calibration` can tell it from other safetensors files)
is `calibration.table`.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
import torch.fx
from transformers import AutoTokenizer

from qeff_compiler.calibration.table import load_calibration, save_calibration
from qeff_compiler.capture import capture_resolved, resolve_model
from qeff_compiler.errors import InvalidArgumentError, ModelSourceError
from qeff_compiler.ir.program import BINDING, Program
from qeff_compiler.passes.manager import PassManager
from qeff_compiler.passes.weight_quantization import matmul_weight_reads
from qeff_compiler.progress import NO_PROGRESS, Progress

#: the text `calibrate` reads from the model directory when it is given none
CALIBRATION_TEXT = "calibration.txt"
#: the passes whose result is calibrated: activations as the lowered program computes them, before quantization
CALIBRATION_PIPELINE = "strip-export-noise,patch-attention,lower-fp16"
#: default cap on calibration tokens (16 windows of MPT-7B's 2048, 128 of the shipped model's 256)
DEFAULT_MAX_TOKENS = 32768
_LINEAR = torch.ops.aten.linear.default


def calibrate(
    model_dir: str | Path,
    text: str | Path | None = None,
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: Progress = NO_PROGRESS,
) -> dict[str, torch.Tensor]:
    """The activation maxima of every linear's matmul weight, measured on `text` (at most `max_tokens` tokens).

    `text` is the text itself (a str) or a file to read (a Path); None reads the model directory's
    `calibration.txt`. Use text the model will see, but not the text you evaluate on. `progress` shows the
    windows done (a forward pass each: ~100 s for the default 32,768 tokens on a 2-core machine).
    """
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
        raise InvalidArgumentError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    model_dir = Path(model_dir)
    resolved = resolve_model(model_dir)
    window = resolved.config.max_seq_len
    ids = _tokenize(model_dir, _read_text(model_dir, text))[:max_tokens]
    count = len(ids) // window
    if count == 0:
        raise InvalidArgumentError(
            f"calibration needs at least one {window}-token window (the model's max_seq_len), got {len(ids)} tokens"
            f" (max_tokens={max_tokens})"
        )
    windows = torch.tensor(ids[: count * window], dtype=torch.int64).reshape(count, window)
    program = capture_resolved(resolved, batch_size=1, seq_len=window)
    lowered = PassManager(CALIBRATION_PIPELINE, verify=False).run(program)
    with progress.stage("calibrate (w8a8)", count, unit="windows") as advance:
        return activation_maxima(lowered, windows, advance)


def activation_maxima(
    program: Program, windows: torch.Tensor, advance: Callable[[int], None] = lambda _rows: None
) -> dict[str, torch.Tensor]:
    """Run a stateless fp16-lowered `program` on each row of `windows` [n, seq_len] (token ids) and return, per
    weight read by a linear, the max |activation| of each input channel over all rows and positions (fp32 [in])."""
    if "fp16-activations" not in program.properties:
        raise InvalidArgumentError(
            f"calibration runs on a program lowered by lower-fp16 (activations as the device rounds them); "
            f"this one has properties {sorted(program.properties)}"
        )
    if [spec.name for spec in program.inputs] != ["input_ids"]:
        raise InvalidArgumentError(
            f"calibration runs on a stateless program (input_ids only), got inputs {[s.name for s in program.inputs]}"
        )
    (spec,) = program.inputs
    if spec.shape[0] != 1 or windows.dim() != 2 or windows.dtype != torch.int64 or windows.shape[1] != spec.shape[1]:
        raise InvalidArgumentError(
            f"calibration runs a batch-1 program on int64 windows [n, its seq_len]; got input_ids {list(spec.shape)} "
            f"and windows {windows.dtype} {list(windows.shape)}"
        )
    reads = matmul_weight_reads(program.graph)
    linears = {read.consumer: read.name for read in reads if read.consumer.target == _LINEAR}
    interpreter = _MaximaInterpreter(program.graph_module, linears)
    weight_names = [name for kind, name in _bindings(program) if kind == "weight"]
    weights = program.weights.materialize(weight_names)
    for row in windows:
        args = [weights[name] if kind == "weight" else row[None] for kind, name in _bindings(program)]
        with torch.no_grad():
            interpreter.run(*args)
        advance(1)
    return dict(sorted(interpreter.maxima.items()))


@contextlib.contextmanager
def calibration_file(
    model_dir: Path | None, table: str | Path | None = None, progress: Progress = NO_PROGRESS
) -> Iterator[Path]:
    """The table file `lower-w8a8` reads: `table` when given (checked here), else a temporary file holding
    `calibrate(model_dir)` on the directory's calibration text, removed on exit."""
    if table is not None:
        load_calibration(table)
        yield Path(table)
        return
    if model_dir is None:
        raise InvalidArgumentError(
            "w8a8 needs calibration: give a calibration table file (qc.calibrate + save_calibration), or compile "
            "from a model directory with a tokenizer and a calibration.txt"
        )
    with tempfile.TemporaryDirectory(prefix="qeff-calibration-") as directory:
        path = Path(directory) / "calibration.safetensors"
        save_calibration(calibrate(model_dir, progress=progress), path)
        yield path


class _MaximaInterpreter(torch.fx.Interpreter):
    """Runs the graph node by node and keeps, per weight, the running per-channel max |x| of its linears' x."""

    def __init__(self, graph_module: torch.fx.GraphModule, linears: Mapping[torch.fx.Node, str]) -> None:
        super().__init__(graph_module)
        self.linears = linears
        self.maxima: dict[str, torch.Tensor] = {}

    def run_node(self, n: torch.fx.Node) -> object:
        name = self.linears.get(n)
        if name is not None:
            activation = n.args[0]
            assert isinstance(activation, torch.fx.Node)  # linear(x, w, b): x is a node
            x = self.env[activation]  # read before running n: the interpreter frees values after their last use
            channel_max = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0).float()
            previous = self.maxima.get(name)
            self.maxima[name] = channel_max if previous is None else torch.maximum(previous, channel_max)
        return super().run_node(n)


def _bindings(program: Program) -> list[tuple[str, str]]:
    return [node.meta[BINDING] for node in program.graph.find_nodes(op="placeholder")]


def _read_text(model_dir: Path, text: str | Path | None) -> str:
    if text is None:
        path = model_dir / CALIBRATION_TEXT
        if not path.is_file():
            raise InvalidArgumentError(
                f"{model_dir} has no {CALIBRATION_TEXT}; pass the calibration text: calibrate(model_dir, text=...)"
            )
        text = path
    if isinstance(text, Path):
        try:
            return text.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(f"cannot read calibration text file {text}: {exc}") from exc
    return text


def _tokenize(model_dir: Path, text: str) -> list[int]:
    if not (model_dir / "tokenizer.json").is_file():
        raise ModelSourceError(f"{model_dir} has no tokenizer.json; calibration needs the model's tokenizer")
    return AutoTokenizer.from_pretrained(model_dir)(text, verbose=False)["input_ids"]
