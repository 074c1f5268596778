"""The shipped tiny MPT must be a trained model that matches its model card.

Accuracy checks of the compiler compare against this model, so they are only meaningful if its
predictions are sharp: a random model would make almost any numerical error look harmless.
"""

import math
import re

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, MptForCausalLM, PreTrainedTokenizerBase

from qeff_compiler.data import TINY_MPT, TINY_MPT_DRAFT, TINY_MPT_VALIDATION_TEXT

# A Python method signature, e.g. "def __init__(self, name):" (return annotation allowed).
SIGNATURE = re.compile(r"def [A-Za-z_]\w*\([^()\n]*\)( -> [^\n]+)?:")
# Not "def ": byte-level BPE puts a space in front of the following word (" name"), so a prompt
# ending in a space tokenizes to a bare " " token that never precedes a name in training text.
PROMPT = "class Parser:\n    def"


def card_value(metric: str) -> float:
    """A figure from the results table of the model card, written by tools/train_fixture.py."""
    card = (TINY_MPT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^\| {re.escape(metric)} \| ([0-9.]+) \|$", card, re.M)
    assert match, f"model card has no {metric!r} row"
    return float(match.group(1))


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(TINY_MPT)


@pytest.fixture(scope="module")
def model() -> MptForCausalLM:
    return AutoModelForCausalLM.from_pretrained(TINY_MPT, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def random_model() -> MptForCausalLM:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return MptForCausalLM(AutoConfig.from_pretrained(TINY_MPT)).float().eval()


@pytest.fixture(scope="module")
def windows(tokenizer: PreTrainedTokenizerBase, model: MptForCausalLM) -> torch.Tensor:
    """The card's windowing: non-overlapping max_seq_len windows of the whole text, tail dropped."""
    ids = torch.tensor(tokenizer(TINY_MPT_VALIDATION_TEXT.read_text(encoding="utf-8"))["input_ids"])
    seq_len = model.config.max_seq_len
    count = len(ids) // seq_len
    return ids[: count * seq_len].view(count, seq_len)


@torch.no_grad()
def perplexity(model: MptForCausalLM, windows: torch.Tensor) -> float:
    """exp of the mean NLL of every token but the first of each window."""
    total = 0.0
    for batch in windows.split(32):
        logits = model(input_ids=batch).logits[:, :-1]
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum"
        ).item()
    return math.exp(total / windows[:, 1:].numel())


@pytest.fixture(scope="module")
def trained_perplexity(model, windows) -> float:
    return perplexity(model, windows)


def greedy(model: MptForCausalLM, tokenizer: PreTrainedTokenizerBase, new_tokens: int = 30) -> str:
    """The prompt continued by greedy decoding: the most deterministic view of what the model learnt."""
    inputs = tokenizer(PROMPT, return_tensors="pt")
    output = model.generate(
        **inputs, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
    )
    return tokenizer.decode(output[0])


def test_validation_perplexity_matches_card(trained_perplexity):
    assert trained_perplexity == pytest.approx(card_value("validation perplexity"), rel=0.01)


def test_perplexity_far_below_unigram_baseline(trained_perplexity):
    assert trained_perplexity < card_value("unigram baseline perplexity") / 10


def test_random_model_fails_the_perplexity_bound(trained_perplexity, random_model, windows):
    bound = 1.05 * card_value("validation perplexity")
    assert trained_perplexity < bound
    assert perplexity(random_model, windows[:8]) > bound  # a few windows suffice: it is near chance


def test_greedy_generation_writes_a_python_signature(model, random_model, tokenizer):
    assert SIGNATURE.search(greedy(model, tokenizer))
    assert not SIGNATURE.search(greedy(random_model, tokenizer))


def test_draft_card_states_its_size(model):
    """The draft's card gives its parameter count (its perplexity row is checked in tests/test_speculative.py)."""
    draft = AutoModelForCausalLM.from_pretrained(TINY_MPT_DRAFT, dtype=torch.float32)
    parameters = sum(p.numel() for p in draft.parameters())
    assert f"({parameters:,} parameters)" in (TINY_MPT_DRAFT / "README.md").read_text(encoding="utf-8")
    assert parameters < sum(p.numel() for p in model.parameters()) / 4
