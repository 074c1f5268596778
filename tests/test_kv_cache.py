"""kv-cache: I/O convention, option errors, pass ordering, and the padding guard of the cache write."""

from __future__ import annotations

import pytest
import torch

import qeff_compiler as qc
from qeff_compiler.errors import InvalidArgumentError, PassOptionError, PassOrderError
from qeff_compiler.ir.interpret import run_program
from qeff_compiler.ir.ops import write_cache
from qeff_compiler.passes import PassManager
from tests.conftest import random_model, tiny_config


def test_io_follows_the_qefficient_convention() -> None:
    program = qc.capture(random_model(tiny_config()), batch_size=2, seq_len=6)
    stateful = PassManager("patch-attention,kv-cache{ctx_len=16}").run(program)
    assert [s.name for s in stateful.inputs] == ["input_ids", "position_ids", "past_key.0", "past_value.0", "past_key.1", "past_value.1"]
    assert [s.describe() for s in stateful.outputs] == [
        "logits: f32[2,1,64]",
        "past_key.0_RetainedState: f32[2,4,16,8]",
        "past_value.0_RetainedState: f32[2,4,16,8]",
        "past_key.1_RetainedState: f32[2,4,16,8]",
        "past_value.1_RetainedState: f32[2,4,16,8]",
    ]


def test_all_logits_option_keeps_every_position_and_matches_the_stateless_program() -> None:
    """`logits=all` scores every position through the cache; with an empty cache and positions 0..s-1 that is
    what the stateless program computes (the pass manager's numeric check compares the full logits)."""
    program = qc.capture(random_model(tiny_config()), batch_size=2, seq_len=6)
    manager = PassManager("patch-attention,kv-cache{ctx_len=16,logits=all}")
    stateful = manager.run(program)
    assert stateful.outputs[0].describe() == "logits: f32[2,6,64]"
    assert manager.records[-1].max_abs_diff < 1e-5
    with pytest.raises(PassOptionError, match="logits='first' is not one of last, all"):
        PassManager("patch-attention,kv-cache{ctx_len=16,logits=first}")


def test_logits_come_from_each_rows_last_valid_position() -> None:
    model = random_model(tiny_config())
    stateful = PassManager("patch-attention,kv-cache{ctx_len=16}").run(qc.capture(model, batch_size=2, seq_len=6))
    ids = torch.randint(0, 64, (2, 6))
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, 2, -1, -1, -1]])
    caches = {s.name: torch.zeros(s.shape) for s in stateful.inputs if s.role.startswith("past")}
    logits = run_program(stateful, {"input_ids": ids, "position_ids": positions, **caches})["logits"]
    with torch.no_grad():
        torch.testing.assert_close(logits[0, 0], model(ids[:1]).logits[0, -1], rtol=0, atol=1e-4)
        torch.testing.assert_close(logits[1, 0], model(ids[1:, :3]).logits[0, -1], rtol=0, atol=1e-4)


def test_padding_positions_never_write_the_cache() -> None:
    cache = torch.randn(1, 2, 5, 3)
    new = torch.randn(1, 2, 3, 3)
    updated = write_cache(cache, new, torch.tensor([[3, -1, -1]]))
    torch.testing.assert_close(updated[:, :, 3], new[:, :, 0])
    untouched = [0, 1, 2, 4]  # −1 must not alias slot ctx_len − 1 = 4
    torch.testing.assert_close(updated[:, :, untouched], cache[:, :, untouched])


@pytest.mark.parametrize(
    ("pipeline", "error", "message"),
    [
        ("patch-attention,kv-cache", PassOptionError, r"needs its ctx_len option"),
        ("patch-attention,kv-cache{ctx_len=33}", InvalidArgumentError, "ctx_len=33 exceeds the model's max_seq_len=32"),
        ("patch-attention,kv-cache{ctx_len=4}", InvalidArgumentError, "ctx_len=4 is smaller than the program's sequence length 8"),
        ("kv-cache{ctx_len=16}", PassOrderError, r"kv-cache requires \['attention-patched'\]"),
    ],
)
def test_kv_cache_errors(pipeline: str, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        PassManager(pipeline).run(qc.capture(tiny_config()))
