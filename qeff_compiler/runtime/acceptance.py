"""The acceptance figures of speculative decoding, derived from its counts: one definition shared by the
statistics of batched generation (`runtime.speculative`), generation through slots (`runtime.batch_generate`)
and a served stream (`runtime.serving_stats`)."""

from __future__ import annotations


class AcceptanceFigures:
    """Mixin for a statistics dataclass that declares the three counts as fields."""

    #: tokens proposed and accepted over every row (or slot) and verify step
    proposed_tokens: int
    accepted_tokens: int
    #: (row or slot, verify step) pairs: each gained 1 + its accepted proposals
    verify_slot_steps: int

    @property
    def acceptance_rate(self) -> float:
        """Share of proposed tokens the target accepted (nan when nothing was proposed)."""
        return self.accepted_tokens / self.proposed_tokens if self.proposed_tokens else float("nan")

    @property
    def accepted_tokens_per_step(self) -> float:
        """Target tokens a row or slot gained per verify step (≥ 1: the target's own token always counts)."""
        steps = self.verify_slot_steps
        return (self.accepted_tokens + steps) / steps if steps else float("nan")
