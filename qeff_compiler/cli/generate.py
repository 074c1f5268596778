"""`qeffc run`: generate from an artifact, streaming text (or token ids) as it comes, then the latency figures."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from qeff_compiler.atomic import check_writable
from qeff_compiler.cli.app import app, console, print_plain_inline
from qeff_compiler.cli.terminal import check_prompt_text
from qeff_compiler.errors import InvalidArgumentError

if TYPE_CHECKING:
    import torch


@app.command("run")
def run_command(
    artifact: Annotated[Path, typer.Argument(help="compiled artifact directory")],
    prompt: Annotated[str | None, typer.Option("--prompt", help="text to continue (tokenizer of the artifact)")] = None,
    token_ids: Annotated[
        str | None, typer.Option("--token-ids", help="comma-separated token ids instead of text")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="tokens to generate")] = 32,
    do_sample: Annotated[bool, typer.Option("--sample", help="sample instead of greedy")] = False,
    temperature: Annotated[float, typer.Option("--temperature", help="sampling temperature (> 0)")] = 1.0,
    top_k: Annotated[int, typer.Option("--top-k", help="sample from the k most likely tokens (0: all)")] = 0,
    top_p: Annotated[float, typer.Option("--top-p", help="sample from the smallest set of probability >= p")] = 1.0,
    seed: Annotated[int | None, typer.Option("--seed", help="seed of the sampler (default: fresh entropy)")] = None,
    trace: Annotated[Path | None, typer.Option("--trace", help="write the simulated timeline (Perfetto JSON)")] = None,
    trace_detail: Annotated[
        str,
        typer.Option(
            "--trace-detail", help="layer: every call, the first of each program by layer and op; op: everything"
        ),
    ] = "layer",
    engine: Annotated[
        str, typer.Option("--engine", help="what runs the numerics here: host (reference) or onnxruntime (faster)")
    ] = "host",
    requests: Annotated[
        Path | None,
        typer.Option(
            "--requests", help="serve a workload file (JSON: requests, or a Poisson stream) by continuous batching"
        ),
    ] = None,
    arrivals: Annotated[
        str,
        typer.Option("--arrivals", help="with --requests: replay arrival times on the simulated device or host clock"),
    ] = "device",
    threads: Annotated[
        int | None,
        typer.Option("--threads", help="CPU threads of the engine (default: the CPUs the machine's load leaves free)"),
    ] = None,
    draft: Annotated[
        Path | None,
        typer.Option("--draft", help="speculative decoding: a compiled draft artifact proposes the tokens"),
    ] = None,
    prompt_lookup: Annotated[
        bool, typer.Option("--prompt-lookup", help="speculative decoding: propose n-grams of the text so far")
    ] = False,
) -> None:
    """Generate from a compiled artifact, printing text as it streams and then the latency statistics; or serve a
    workload of many requests (--requests) through the artifact's slots and print the serving figures."""
    from qeff_compiler.compiler import check_engine, load_compiled
    from qeff_compiler.runtime.threads import resolve_threads

    if trace is not None:
        check_writable(trace)
    check_engine(engine)
    if draft is not None and prompt_lookup:
        raise InvalidArgumentError("give at most one of --draft DIR or --prompt-lookup")
    if requests is not None:
        if prompt is not None or token_ids is not None:
            raise InvalidArgumentError("give --requests FILE or a single --prompt / --token-ids, not both")
        from qeff_compiler.cli.serve import serve_workload

        serve_workload(
            artifact, requests, engine, arrivals, trace, "prompt-lookup" if prompt_lookup else draft, threads
        )
        return
    threads = resolve_threads(threads)
    prompt = None if prompt is None else check_prompt_text(prompt)
    ids = _token_ids(prompt, token_ids)  # the options first: loading takes a while
    if ids is None and artifact.is_dir() and not (artifact / "tokenizer.json").is_file():
        raise InvalidArgumentError(
            f"{artifact} has no tokenizer (compile from a model directory with one, or use --token-ids)"
        )
    compiled = load_compiled(artifact)
    proposer = load_compiled(draft) if draft is not None else "prompt-lookup" if prompt_lookup else None
    tokenizer = None
    if ids is None:
        tokenizer = _tokenizer(artifact)
        ids = tokenizer.encode(prompt)
    stream = _TextStream(tokenizer, ids)
    out = compiled.generate(
        [ids],
        max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        streamer=stream,
        trace=trace,
        trace_detail=trace_detail,
        engine=engine,
        threads=threads,
        draft=proposer,
    )
    sys.stdout.write("\n")
    table = Table(
        title=f"latency: simulated device, and the {engine} engine on {threads} thread{'s' * (threads > 1)} here",
        show_header=False,
    )
    for label, value in out.stats.rows():
        table.add_row(label, value)
    console.print(table)


def _tokenizer(artifact: Path) -> Any:
    """The artifact's tokenizer (copied from the model directory it was compiled from)."""
    from transformers import AutoTokenizer

    from qeff_compiler.capture.tokenizer_files import check_tokenizer_files

    check_tokenizer_files(artifact)
    return AutoTokenizer.from_pretrained(artifact)


def _token_ids(prompt: str | None, token_ids: str | None) -> list[int] | None:
    """The --token-ids as integers, None when --prompt (to be tokenized) is given; exactly one is required."""
    if (prompt is None) == (token_ids is None):
        raise InvalidArgumentError("give exactly one of --prompt TEXT or --token-ids IDS")
    if token_ids is None:
        return None
    try:
        return [int(t) for t in token_ids.split(",")]
    except ValueError:
        raise InvalidArgumentError(f"--token-ids must be comma-separated integers, got {token_ids!r}") from None


class _TextStream:
    """Prints each new token as it is generated: decoded text with a tokenizer, ids without. With a tokenizer the
    prompt is echoed first, when the first token arrives: the request has been validated by then, so an error is
    never printed after the prompt's text."""

    def __init__(self, tokenizer: Any, prompt: list[int]) -> None:
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.tokens: list[int] = []
        self.printed = ""

    def __call__(self, step: int, tokens: torch.Tensor) -> None:
        if step == 0 and self.tokenizer is not None:
            print_plain_inline(self.tokenizer.decode(self.prompt))
        if int(tokens[0]) < 0:
            return
        self.tokens.append(int(tokens[0]))
        if self.tokenizer is None:
            print_plain_inline(f"{'' if step == 0 else ','}{int(tokens[0])}")
            return
        text = self.tokenizer.decode(self.tokens)
        print_plain_inline(text[len(self.printed) :])
        self.printed = text
