"""`qeffc eval` and `tune`: accuracy against the fp32 HF model, and the search under a perplexity budget. The
gates and checks are the library's (`evaluate.AccuracyGates`, `artifact.check_output`); these commands render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from qeff_compiler.atomic import check_writable
from qeff_compiler.cli.app import (
    SHIPPED_MODEL,
    CtxLenOption,
    DeviceOption,
    ModelArgument,
    PruneHeadsOption,
    PruneScoreOption,
    app,
    console,
    model_source,
    print_plain,
)
from qeff_compiler.cli.live import LiveRows
from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.options import DEFAULTS

#: what `qeffc tune --max-tokens` defaults to: `qc.tune`'s default (tests/test_cli_startup.py keeps them equal;
#: the tune module is not imported here because it loads torch, which `qeffc --help` must not wait for)
TUNE_MAX_TOKENS = 2048


@app.command("eval")
def eval_command(
    model: ModelArgument = SHIPPED_MODEL,
    precision: Annotated[
        list[str] | None, typer.Option("--precision", help="precision to score (repeatable; default fp16)")
    ] = None,
    kv_cache_dtype: Annotated[
        list[str] | None,
        typer.Option("--kv-cache-dtype", help="KV-cache dtype: none, fp16 or mxint8 (repeatable; default none)"),
    ] = None,
    text: Annotated[
        Path | None, typer.Option("--text", help="text file (default: the shipped validation text)")
    ] = None,
    prune_ffn: Annotated[
        list[float] | None, typer.Option("--prune-ffn", help="share of each layer's FFN channels pruned (repeatable)")
    ] = None,
    prune_heads: PruneHeadsOption = 0.0,
    prune_score: PruneScoreOption = "magnitude",
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="score only the first N tokens")] = None,
) -> None:
    """Score a text teacher-forced at each precision (and KV-cache dtype) against the fp32 HF model: perplexity,
    top-1 agreement, logit error and the accuracy gate; exits 1 when a gate is missed. With --prune-ffn /
    --prune-heads the rows show the accuracy cost of pruning (no fixed gate: see `qeffc tune`)."""
    from qeff_compiler.evaluate import sweep_cache_dtypes

    source = model_source(model)
    if not isinstance(source, Path):
        raise InvalidArgumentError(f"eval needs a model directory with weights and a tokenizer, got preset {model!r}")
    cache_dtypes = sweep_cache_dtypes(kv_cache_dtype or [])
    levels = sorted(set(prune_ffn or [0.0]))
    pruning = prune_heads > 0 or levels != [0.0]
    table = Table(title=f"accuracy vs fp32 HF reference ({model})")
    columns = ["precision", "KV cache", *(["pruned"] if pruning else []), "tokens", "ppl", "ref ppl", "Δppl"]
    for column in (*columns, "top-1 agree", "max|Δlogit|", "mean|Δlogit|", "gate"):
        table.add_column(column, justify="right")
    from qeff_compiler.evaluate import AccuracyGates, Evaluator

    evaluator = Evaluator(source, text, max_tokens=max_tokens, keep_reference=False)
    gates = AccuracyGates()
    missed = []
    rows = [(n, c, f) for n in precision or [DEFAULTS.precision] for c in cache_dtypes for f in levels]
    with LiveRows(table, len(rows), console).shown() as live:
        for number, (name, cache, ffn) in enumerate(rows, 1):
            live.start(number, f"evaluating {name}" + (f" with a {cache} KV cache" if cache else ""))
            report = evaluator(name, cache, prune_ffn=ffn, prune_heads=prune_heads, prune_score=prune_score)
            failures = gates.failures(report)
            missed += [f"{name} ({cache or 'default'} KV cache): {failure}" for failure in failures]
            live.add_row(
                name,
                cache or "-",
                *([report.pruning or "-"] if pruning else []),
                f"{report.tokens_scored:,}",
                f"{report.perplexity:.4f}",
                f"{report.reference_perplexity:.4f}",
                f"{100 * report.perplexity_increase:+.3f}%",
                f"{100 * report.token_agreement:.2f}%",
                f"{report.max_logit_error:.2e}",
                f"{report.mean_logit_error:.2e}",
                "n/a" if report.pruning else "missed" if failures else "ok",
            )
    if missed:
        print_plain("accuracy gate missed:\n" + "\n".join(f"  {line}" for line in missed))
        raise typer.Exit(1)


@app.command("tune")
def tune_command(
    model: ModelArgument = SHIPPED_MODEL,
    device: DeviceOption = DEFAULTS.device,
    max_ppl_increase: Annotated[
        str, typer.Option("--max-ppl-increase", help="perplexity budget over the fp32 HF model: 2% or 0.02")
    ] = "2%",
    write: Annotated[Path | None, typer.Option("--write", help="compile the chosen configuration into DIR")] = None,
    precision: Annotated[list[str] | None, typer.Option("--precision", help="precisions to try (repeatable)")] = None,
    kv_cache_dtype: Annotated[
        list[str] | None, typer.Option("--kv-cache-dtype", help="KV-cache dtypes to try: none, mxint8 (repeatable)")
    ] = None,
    prune_ffn: Annotated[
        list[float] | None, typer.Option("--prune-ffn", help="FFN pruning levels to try (repeatable)")
    ] = None,
    num_cores: Annotated[
        list[int] | None, typer.Option("--num-cores", help="cores per SoC to try (repeatable)")
    ] = None,
    num_devices: Annotated[
        list[int] | None, typer.Option("--num-devices", help="SoC counts to try (repeatable)")
    ] = None,
    prefill_len: Annotated[
        list[int] | None, typer.Option("--prefill-len", help="prefill lengths to try (repeatable)")
    ] = None,
    ctx_len: CtxLenOption = DEFAULTS.ctx_len,
    prompt_len: Annotated[int, typer.Option("--prompt-len", help="prompt tokens of the tuned request")] = 64,
    generation_len: Annotated[int, typer.Option("--generation-len", help="generated tokens of the tuned request")] = 64,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="text tokens each setting is scored on")
    ] = TUNE_MAX_TOKENS,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="draw every configuration and the Pareto front (PNG)")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="replace the --write directory if it exists")] = False,
) -> None:
    """Search precision, KV-cache dtype, FFN pruning, cores, SoCs and prefill length with the cost model under a
    perplexity budget; print the Pareto front (simulated tok/s vs perplexity) and the chosen configuration."""
    from qeff_compiler.artifact import check_output
    from qeff_compiler.tune import DEFAULT_KV_CACHE_DTYPES, DEFAULT_PRECISIONS, DEFAULT_PRUNE_LEVELS, tune

    source = model_source(model)
    if not isinstance(source, Path):
        raise InvalidArgumentError(f"tune needs a model directory with weights and a tokenizer, got preset {model!r}")
    if write is not None:
        check_output(write, overwrite=force)  # before the search, which the refusal would waste
    if plot is not None:
        check_writable(plot)
    caches = [None if d.lower() == "none" else d for d in kv_cache_dtype] if kv_cache_dtype else DEFAULT_KV_CACHE_DTYPES
    with console.status(f"tuning {model} for {device}") as spinner:
        result = tune(
            source,
            device=device,
            max_ppl_increase=_share(max_ppl_increase),
            precisions=precision or DEFAULT_PRECISIONS,
            kv_cache_dtypes=caches,
            prune_levels=prune_ffn or DEFAULT_PRUNE_LEVELS,
            num_cores=num_cores,
            num_devices=num_devices or (1, 2),
            prefill_lens=prefill_len or (16, 32, 64),
            ctx_len=ctx_len,
            prompt_len=prompt_len,
            generation_len=generation_len,
            max_tokens=max_tokens,
            on_setting=lambda n, total, setting: spinner.update(
                f"tuning {model} for {device}: accuracy setting {n}/{total} ({setting.describe()}), "
                "then its placements"
            ),
        )
    table = Table(
        title=f"Pareto front: simulated tok/s vs perplexity ({device}, ctx_len {ctx_len}, batch 1, "
        f"prompt {prompt_len}, generate {generation_len}; prefill_len per configuration)"
    )
    for column in ("configuration", "sim tok/s (E2E)", "sim decode tok/s", "sim TTFT", "ppl", "Δppl", "budget"):
        table.add_column(column, justify="right")
    for c in result.pareto_front:
        within = c.perplexity_increase <= result.max_ppl_increase
        table.add_row(
            c.describe() + (" ← chosen" if c == result.chosen else ""),
            f"{c.tokens_per_s:.1f}",
            f"{c.decode_tokens_per_s:.1f}",
            f"{c.ttft_s * 1e3:.3f} ms",
            f"{c.perplexity:.4f}",
            f"{100 * c.perplexity_increase:+.3f}%",
            "ok" if within else "over",
        )
    console.print(table)
    print_plain(
        f"searched {len(result.candidates)} feasible configurations, {result.evaluations} accuracy evaluations on "
        f"{result.tokens_scored:,} tokens (fp32 HF perplexity {result.reference_perplexity:.4f}) "
        f"in {result.seconds:.1f} s"
    )
    if plot is not None:
        from qeff_compiler.cli.tune_plot import plot_tune

        plot_tune(result, plot)
        print_plain(f"wrote {plot}")
    if result.chosen is None:
        print_plain(f"no configuration is within +{100 * result.max_ppl_increase:g}% perplexity")
        raise typer.Exit(1)
    print_plain(f"chosen: {result.chosen.describe()}")
    if write is not None:
        with console.status(f"compiling the chosen configuration into {write}"):
            result.compile(source).save(write, overwrite=force)
        print_plain(f"compiled {model} → {write}")


def _share(text: str) -> float:
    """'2%' → 0.02; '0.02' → 0.02."""
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise InvalidArgumentError(f"--max-ppl-increase must be a share like 2% or 0.02, got {text!r}") from None
