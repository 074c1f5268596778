"""Train the tiny MPT shipped as package data in ``qeff_compiler/data/tiny-mpt-pystdlib``.

The compiler's accuracy checks need a *trained* MPT checkpoint (random weights give flat logits
that hide numerical errors), and no model hub is reachable; so we train a small one on text every
machine has offline: the source of the Python standard library.

    python tools/train_fixture.py                # full run, writes the package data (~14 min idle)
    python tools/train_fixture.py --steps 30 --out /tmp/tiny   # shortened run
    python tools/train_fixture.py --draft        # the draft model for speculative decoding (tiny-mpt-pystdlib-draft)

A draft (``--draft``) is a smaller MPT trained on the same split with the shipped model's own tokenizer (read from
its directory, not retrained), so it proposes tokens in the target's vocabulary; it ships no text files of its own.
It is distilled from the shipped model (DistillSpec, Zhou et al. 2023): its loss mixes next-token cross-entropy
with the KL divergence from the target's next-token distribution, since speculative decoding accepts a proposal
only where the draft agrees with the target, not where it predicts the text well.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import platform
import random
import sysconfig
import time
import tokenize
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, MptConfig, MptForCausalLM, PreTrainedTokenizerFast

EOT = "<|endoftext|>"
DATA_DIR = Path(__file__).resolve().parents[1] / "qeff_compiler" / "data"
DEFAULT_OUT = DATA_DIR / "tiny-mpt-pystdlib"
DRAFT_OUT = DATA_DIR / "tiny-mpt-pystdlib-draft"
# Tests, tooling, demos and generated tables are not representative Python (or not Python source).
EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idle_test", "idlelib", "site-packages", "lib2to3", "turtledemo", "ensurepip",
     "encodings", "pydoc_data"}
)
VALIDATION_CHARS = 150_000  # held-out source; keeps validation.txt well under its 200 KB limit
# training-split modules shipped as calibration.txt, the text w8a8 calibrates its activation scales on (qc.calibrate)
CALIBRATION_FILES = ("textwrap.py", "shlex.py", "queue.py", "fnmatch.py", "reprlib.py", "colorsys.py", "bisect.py")
VOCAB_SIZE = 2048
SEQ_LEN = 256  # = max_seq_len: the model is trained and evaluated on full-length windows
BATCH_SIZE = 8
DEFAULT_STEPS = 1600
# (d_model, n_heads, n_layers) of the shipped model and of its draft: half the width, half the depth.
TARGET_SHAPE = (256, 8, 4)
DRAFT_SHAPE = (128, 4, 2)
PEAK_LR = 2e-3
# The draft's loss: (1 - w) * cross-entropy + w * T^2 * KL(target_T || draft_T), softmaxes at temperature T.
DISTILL_WEIGHT = 0.8
DISTILL_TEMPERATURE = 1.0
WARMUP_FRACTION = 0.05
# Results depend on the thread count (reduction order), so it is fixed for reproducibility.
THREADS = 2

console = Console()


def stdlib_sources() -> dict[str, str]:
    """Return {relative path: source} for the selected stdlib *.py files, in sorted path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    sources = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if EXCLUDED_DIRS & set(rel.parts[:-1]) or rel.parts[0].startswith("config-"):
            continue
        if rel.name.startswith("_sysconfigdata"):  # describes the build machine, not Python
            continue
        with tokenize.open(path) as f:  # honours PEP 263 coding cookies
            sources[rel.as_posix()] = f.read()
    return sources


def held_out_files(sources: dict[str, str]) -> set[str]:
    """Pick whole files for validation, so it measures generalisation to unseen modules.

    Files are visited in the order of the SHA-256 of their path (pseudo-random but fixed) and each
    one that still fits in the VALIDATION_CHARS budget is held out.
    """
    held_out: set[str] = set()
    budget = VALIDATION_CHARS
    for rel in sorted(sources, key=lambda p: hashlib.sha256(p.encode()).hexdigest()):
        if len(sources[rel]) <= budget:
            held_out.add(rel)
            budget -= len(sources[rel])
    return held_out


def train_tokenizer(texts: list[str]) -> Tokenizer:
    """Byte-level BPE (as GPT-2/GPT-NeoX, whose tokenizer MPT uses), trained on the training split."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def encode(tokenizer: Tokenizer, text: str) -> torch.Tensor:
    """Token ids of a document stream; the literal EOT separators become the special token."""
    docs = text.split(EOT)
    pieces = tokenizer.encode_batch([doc + EOT for doc in docs[:-1]] + docs[-1:])
    return torch.tensor([i for piece in pieces for i in piece.ids], dtype=torch.long)


def windows(ids: torch.Tensor) -> torch.Tensor:
    """Non-overlapping SEQ_LEN windows; the incomplete tail window is dropped."""
    n = len(ids) // SEQ_LEN
    return ids[: n * SEQ_LEN].view(n, SEQ_LEN)


@torch.no_grad()
def mean_nll(model: MptForCausalLM, ids: torch.Tensor) -> float:
    """Mean next-token NLL over windows(ids); the first token of each window is not scored."""
    model.eval()
    total = 0.0
    batches = windows(ids).split(32)
    for batch in batches:
        logits = model(input_ids=batch).logits[:, :-1].float()
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum"
        ).item()
    return total / sum(b[:, 1:].numel() for b in batches)


def unigram_nll(train_ids: torch.Tensor, val_ids: torch.Tensor) -> float:
    """Baseline: NLL of the same scored tokens under add-one-smoothed training-split frequencies."""
    counts = torch.bincount(train_ids, minlength=VOCAB_SIZE).double() + 1.0
    log_probs = counts.log() - counts.sum().log()
    return -log_probs[windows(val_ids)[:, 1:]].mean().item()


def lr_factor(step: int, steps: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak learning rate."""
    warmup = max(1, int(WARMUP_FRACTION * steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def batches(train_ids: torch.Tensor, seed: int) -> Iterator[torch.Tensor]:
    """Endless random SEQ_LEN windows of the training stream, from a dedicated seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(train_ids) - SEQ_LEN, (BATCH_SIZE,), generator=generator)
        yield torch.stack([train_ids[s : s + SEQ_LEN] for s in starts])


class Distillation:
    """The draft's loss: next-token cross-entropy mixed with the KL divergence from a frozen teacher.

    T = 1 distils the distribution greedy acceptance compares against; the T^2 factor keeps the KL term's
    gradients on the cross-entropy's scale at other temperatures (Hinton et al. 2015).
    """

    def __init__(self, teacher: MptForCausalLM, weight: float, temperature: float) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight, self.temperature = weight, temperature

    def __call__(self, logits: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """Loss of the student's `logits` for `batch`; positions are scored as HF's own causal-LM loss does."""
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=batch).logits[:, :-1]
        student = logits[:, :-1]
        cross_entropy = torch.nn.functional.cross_entropy(
            student.reshape(-1, student.size(-1)), batch[:, 1:].reshape(-1)
        )
        t = self.temperature
        kl = torch.nn.functional.kl_div(
            torch.log_softmax(student.reshape(-1, student.size(-1)) / t, dim=-1),
            torch.log_softmax(teacher_logits.reshape(-1, student.size(-1)) / t, dim=-1),
            log_target=True, reduction="batchmean",
        )
        return (1.0 - self.weight) * cross_entropy + self.weight * t * t * kl


def train(
    model: MptForCausalLM, train_ids: torch.Tensor, steps: int, seed: int, distill: Distillation | None = None
) -> float:
    """AdamW with warmup + cosine decay (loss: `distill`'s, else cross-entropy); returns the loop's wall seconds."""
    decay = [p for p in model.parameters() if p.dim() >= 2]  # no decay on norm weights
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=PEAK_LR,
        betas=(0.9, 0.95),
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps))
    model.train()
    smoothed = math.log(VOCAB_SIZE)
    columns = (
        TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )
    start = time.perf_counter()
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("train", total=steps, loss=smoothed)
        for _, batch in zip(range(steps), batches(train_ids, seed)):
            loss = model(input_ids=batch, labels=batch).loss if distill is None else distill(
                model(input_ids=batch).logits, batch
            )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            smoothed = 0.95 * smoothed + 0.05 * loss.item()
            progress.update(task, advance=1, loss=smoothed)
    return time.perf_counter() - start


def model_config(eot_id: int, shape: tuple[int, int, int] = TARGET_SHAPE) -> MptConfig:
    """MPT-7B's architecture (ALiBi, no biases, tied embeddings), scaled down.

    Only fields HF's MptForCausalLM honours are changed; the ones it ignores (no_bias, expansion_ratio,
    attn_config.alibi/qk_ln/prefix_lm/attn_type, logit_scale) keep their defaults, which match what
    the HF implementation actually computes.
    """
    d_model, n_heads, n_layers = shape
    return MptConfig(
        d_model=d_model, n_heads=n_heads, n_layers=n_layers, max_seq_len=SEQ_LEN, vocab_size=VOCAB_SIZE,
        tie_word_embeddings=True, bos_token_id=eot_id, eos_token_id=eot_id,
    )


def write_card(out: Path, facts: dict[str, str]) -> None:
    """Write the model card; tests parse the perplexity rows of its results table."""
    card = f"""# {out.name}

{facts["intro"]}

## Architecture
`MptForCausalLM` as in MPT-7B (ALiBi attention, no biases, LayerNorm without bias, GELU MLP with
expansion ratio 4, tied input/output embeddings), scaled down: d_model {facts["d_model"]}, {facts["n_heads"]} heads,
{facts["n_layers"]} layers, max_seq_len {SEQ_LEN}, vocabulary {VOCAB_SIZE} ({facts["parameters"]} parameters).
Weights are stored in bfloat16, like the released MPT checkpoints; training was done in float32.

## Data
The `*.py` files of the Python {facts["python"]} standard library (`sysconfig.get_paths()["stdlib"]`),
excluding the directories {", ".join(sorted(EXCLUDED_DIRS))}, `config-*` and `_sysconfigdata*`:
{facts["files"]} files. Each file is followed by `{EOT}`. Files are split into train and validation
whole: in the order of the SHA-256 of their relative path, each file that still fits in a
{VALIDATION_CHARS:,}-character budget is held out. The stdlib differs between Python patch versions,
so a rerun on another version gives a different (equally valid) model.

- training split: {facts["train_files"]} files, {facts["train_tokens"]} tokens
{facts["files_note"]}

{facts["tokenizer_note"]}

## Training
`{facts["command"]}`

{facts["steps"]} steps of AdamW (betas 0.9/0.95, weight decay 0.1 on matrices, peak lr {PEAK_LR},
{WARMUP_FRACTION:.0%} linear warmup then cosine decay to 10%, gradient clipping 1.0) on batches of
{BATCH_SIZE} random {SEQ_LEN}-token windows of the training stream, float32, {THREADS} CPU threads,
seed {facts["seed"]}.{facts["distill"]} Measured training time: {facts["train_time"]}, {facts["cpu_time"]} of CPU; the
wall time depends on the load of the machine{facts["idle_note"]}.

## Results
Evaluated on {facts["validation"]} tokenized as a whole, cut into non-overlapping {SEQ_LEN}-token windows
(the incomplete last window is dropped); every token but the first of each window is scored
({facts["scored_tokens"]} tokens). The model is the saved bfloat16 checkpoint loaded with
`dtype=torch.float32`. The unigram baseline scores the same tokens with the token frequencies of
the training split (add-one smoothing).

| metric | value |
| --- | --- |
| validation loss | {facts["val_loss"]} |
| validation perplexity | {facts["val_ppl"]} |
| unigram baseline perplexity | {facts["unigram_ppl"]} |
"""
    (out / "README.md").write_text(card, encoding="utf-8")


TARGET_INTRO = """A small MosaicML MPT causal language model trained by `tools/train_fixture.py` so that the
compiler has a real, trained MPT checkpoint to compile and check accuracy against, offline."""
DRAFT_INTRO = """The draft model of speculative decoding for `tiny-mpt-pystdlib`: a smaller MPT trained by
`tools/train_fixture.py --draft` on the same training split with the same tokenizer, so it proposes
tokens the target model verifies (`qeff_compiler.data.TINY_MPT_DRAFT`)."""


def write_text_files(out: Path, sources: dict[str, str], held_out: set[str], val_text: str) -> None:
    """The shipped model's validation and calibration texts (the draft ships none: it uses the target's)."""
    (out / "validation.txt").write_text(val_text, encoding="utf-8")
    if held_out & set(CALIBRATION_FILES):
        raise SystemExit(f"calibration files {sorted(held_out & set(CALIBRATION_FILES))} are validation files here")
    calibration_text = "".join(sources[rel] + EOT for rel in CALIBRATION_FILES)
    (out / "calibration.txt").write_text(calibration_text, encoding="utf-8")


def draft_tokenizer(val_text: str) -> Tokenizer:
    """The shipped model's tokenizer, after checking this Python's stdlib gives its validation split."""
    if (DEFAULT_OUT / "validation.txt").read_text(encoding="utf-8") != val_text:
        raise SystemExit(f"this Python's stdlib does not reproduce {DEFAULT_OUT / 'validation.txt'}: "
                         "train the draft with the Python version named in the shipped model card")
    return Tokenizer.from_file(str(DEFAULT_OUT / "tokenizer.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: the package data, tiny-mpt-pystdlib or its draft)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps (shorten for a quick run)")
    parser.add_argument("--draft", action="store_true",
                        help=f"train the draft model (d_model, heads, layers = {DRAFT_SHAPE}) with the shipped "
                             "model's tokenizer, distilled from the shipped model")
    parser.add_argument("--distill-weight", type=float, default=DISTILL_WEIGHT,
                        help="--draft: weight of the KL term in the loss, in [0, 1] (0: cross-entropy only)")
    parser.add_argument("--distill-temperature", type=float, default=DISTILL_TEMPERATURE,
                        help="--draft: softmax temperature of the KL term (> 0)")
    args = parser.parse_args()
    if not 0.0 <= args.distill_weight <= 1.0 or args.distill_temperature <= 0.0:
        parser.error("--distill-weight must be in [0, 1] and --distill-temperature > 0")
    out: Path = args.out or (DRAFT_OUT if args.draft else DEFAULT_OUT)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)

    sources = stdlib_sources()
    held_out = held_out_files(sources)
    train_text = "".join(text + EOT for rel, text in sources.items() if rel not in held_out)
    val_text = "".join(text + EOT for rel, text in sources.items() if rel in held_out)
    if args.draft:
        tokenizer = draft_tokenizer(val_text)
    else:
        tokenizer = train_tokenizer([text for rel, text in sources.items() if rel not in held_out])
    eot_id = tokenizer.token_to_id(EOT)
    train_ids = encode(tokenizer, train_text)
    console.print(f"{len(sources)} files: {len(train_ids):,} training tokens, {len(held_out)} files held out")

    shape = DRAFT_SHAPE if args.draft else TARGET_SHAPE
    model = MptForCausalLM(model_config(eot_id, shape))
    distill = None
    if args.draft and args.distill_weight > 0:  # the teacher is the shipped model, as shipped (bf16 read into fp32)
        teacher = AutoModelForCausalLM.from_pretrained(DEFAULT_OUT, dtype=torch.float32)
        distill = Distillation(teacher, args.distill_weight, args.distill_temperature)
    cpu_start = time.process_time()
    seconds = train(model, train_ids, args.steps, args.seed, distill)
    cpu_seconds = time.process_time() - cpu_start
    console.print(f"trained {args.steps} steps in {seconds:.0f} s ({seconds / args.steps:.3f} s/step)")

    out.mkdir(parents=True, exist_ok=True)
    if not args.draft:
        write_text_files(out, sources, held_out, val_text)
    model.to(torch.bfloat16).save_pretrained(out)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOT, bos_token=EOT, model_max_length=SEQ_LEN
    ).save_pretrained(out)

    # Evaluate what was shipped: the bf16 file, re-read, computed in fp32, on the text file as written.
    validation_file = DEFAULT_OUT / "validation.txt" if args.draft else out / "validation.txt"
    saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    val_ids = encode(tokenizer, validation_file.read_text(encoding="utf-8"))
    val_loss = mean_nll(saved, val_ids)
    unigram = unigram_nll(train_ids, val_ids)
    console.print(f"validation loss {val_loss:.4f}, perplexity {math.exp(val_loss):.3f} "
                  f"(unigram baseline perplexity {math.exp(unigram):.1f})")

    command = "python tools/train_fixture.py" + (" --draft" if args.draft else "")
    command += "" if args.steps == DEFAULT_STEPS else f" --steps {args.steps}"
    command += "" if args.seed == 0 else f" --seed {args.seed}"
    if args.draft:
        command += "" if args.distill_weight == DISTILL_WEIGHT else f" --distill-weight {args.distill_weight:g}"
        command += ("" if args.distill_temperature == DISTILL_TEMPERATURE
                    else f" --distill-temperature {args.distill_temperature:g}")
    distill_note = "" if distill is None else (
        f"\nThe loss is distilled from `tiny-mpt-pystdlib` (the shipped bfloat16 checkpoint in float32, eval mode,\n"
        f"no gradients): (1 - w) x next-token cross-entropy + w x T² x KL(target ‖ draft) of the next-token\n"
        f"distributions at temperature T, with w = {args.distill_weight:g} and T = {args.distill_temperature:g} "
        "(DistillSpec, Zhou et al. 2023;\nthe target's forward pass is part of the measured time)."
    )
    files_note = (
        f"- validation split: {len(held_out)} files, {len(val_ids):,} tokens, shipped as `validation.txt`\n"
        "- calibration text for `w8a8` (`qc.calibrate`), shipped as `calibration.txt`: the training-split files\n"
        f"  {', '.join(CALIBRATION_FILES)}, each followed by `{EOT}`; no validation text"
    )
    tokenizer_note = (
        f"The tokenizer is a byte-level BPE (`tokenizers`), vocabulary {VOCAB_SIZE}, trained on the training\n"
        f"split; `{EOT}` (id {eot_id}) is the BOS and EOS token."
    )
    if args.draft:
        files_note = (f"- validation split: {len(held_out)} files, {len(val_ids):,} tokens: the `validation.txt` "
                      "of `tiny-mpt-pystdlib`\n  (the split is checked to be identical before training)")
        tokenizer_note = (f"The tokenizer is `tiny-mpt-pystdlib`'s, read from its `tokenizer.json` (not retrained), "
                          f"so both models\nshare the vocabulary; `{EOT}` (id {eot_id}) is the BOS and EOS token.")
    write_card(out, {
        "intro": DRAFT_INTRO if args.draft else TARGET_INTRO,
        "d_model": str(shape[0]),
        "n_heads": str(shape[1]),
        "n_layers": str(shape[2]),
        "python": platform.python_version(),
        "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "files": str(len(sources)),
        "train_files": str(len(sources) - len(held_out)),
        "train_tokens": f"{len(train_ids):,}",
        "files_note": files_note,
        "tokenizer_note": tokenizer_note,
        "validation": "`validation.txt` of `tiny-mpt-pystdlib`" if args.draft else "`validation.txt`",
        "scored_tokens": f"{windows(val_ids)[:, 1:].numel():,}",
        "command": command,
        "steps": str(args.steps),
        "seed": str(args.seed),
        "distill": distill_note,
        "train_time": f"{seconds / 60:.1f} min ({seconds / args.steps:.2f} s/step)",
        "cpu_time": f"{cpu_seconds / 60:.1f} min",
        "idle_note": "" if args.draft else " (an idle 2-core machine takes about 0.5 s/step)",
        "val_loss": f"{val_loss:.4f}",
        "val_ppl": f"{math.exp(val_loss):.3f}",
        "unigram_ppl": f"{math.exp(unigram):.1f}",
    })


if __name__ == "__main__":
    main()
