"""The draft's distillation loss in tools/train_fixture.py computes what its model card says it does."""

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch

from tests.conftest import random_model, tiny_config

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "train_fixture.py"


@pytest.fixture(scope="module")
def train_fixture() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_fixture", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """(teacher, student, batch): two differently seeded random MPTs of one vocabulary and a random batch."""
    config = tiny_config()
    batch = torch.randint(0, config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(0))
    return random_model(config, seed=1), random_model(config, seed=2), batch


def test_weight_zero_is_the_plain_causal_lm_loss(train_fixture, pair):
    teacher, student, batch = pair
    loss = train_fixture.Distillation(teacher, 0.0, 1.0)(student(input_ids=batch).logits, batch)
    assert loss.item() == pytest.approx(student(input_ids=batch, labels=batch).loss.item(), rel=1e-6)


@pytest.mark.parametrize("weight, temperature", [(0.8, 1.0), (0.5, 2.0)])
def test_mixed_loss_matches_cross_entropy_plus_scaled_kl(train_fixture, pair, weight, temperature):
    teacher, student, batch = pair
    logits = student(input_ids=batch).logits
    loss = train_fixture.Distillation(teacher, weight, temperature)(logits, batch).item()
    with torch.no_grad():
        target = torch.softmax(teacher(input_ids=batch).logits[:, :-1].double() / temperature, -1)
    draft = torch.softmax(logits[:, :-1].double() / temperature, -1)
    kl = (target * (target.log() - draft.log())).sum(-1).mean().item()  # per position, averaged
    cross_entropy = student(input_ids=batch, labels=batch).loss.item()
    assert kl > 0.01
    assert loss == pytest.approx((1 - weight) * cross_entropy + weight * temperature**2 * kl, rel=1e-5)


def test_a_student_equal_to_its_teacher_has_no_kl_term(train_fixture, pair):
    teacher, _, batch = pair
    loss = train_fixture.Distillation(teacher, 1.0, 1.0)(teacher(input_ids=batch).logits, batch).item()
    assert math.isclose(loss, 0.0, abs_tol=1e-5)
