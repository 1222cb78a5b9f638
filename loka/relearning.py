"""The relearning attack (the safety check): fine-tune on half of the forget facts, score the other half.

Knowledge that was only suppressed comes back; knowledge that was removed comes back no faster
than for the oracle, which never saw it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from loka.data import KnowledgeSet
from loka.metrics import lm_loss, score_facts
from loka.models import plain_copy

__all__ = ["Relearning", "relearn"]

_CURVE_POINTS = 4  # the attack scores the held-out half this many times on its way


@dataclass(frozen=True)
class Relearning:
    """Accuracy on held-out forget facts before and after fine-tuning on the other half."""

    steps: int
    lr: float
    n_train: int
    n_test: int
    before: float
    after: float
    curve: tuple[tuple[int, float], ...] = ()  # (steps taken, held-out accuracy), from 0 to ``steps``


def relearn(model: Any, tokenizer: Any, forget: KnowledgeSet, *, steps: int, lr: float, seed: int) -> Relearning:
    train, test = forget.split(0.5, seed=seed)
    before = score_facts(model, test, tokenizer=tokenizer).first_token_accuracy
    torch.manual_seed(seed)
    attacker = plain_copy(model).train()
    batch = train.encode(tokenizer).to(next(attacker.parameters()).device)
    optimizer = torch.optim.AdamW(attacker.parameters(), lr=lr)
    checkpoints = {round(steps * i / _CURVE_POINTS) for i in range(1, _CURVE_POINTS + 1)}
    curve = [(0, float(before))]
    for step in range(1, steps + 1):
        loss = lm_loss(attacker, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step in checkpoints:
            attacker.eval()
            curve.append((step, float(score_facts(attacker, test, tokenizer=tokenizer).first_token_accuracy)))
            attacker.train()
    return Relearning(steps, lr, len(train), len(test), float(before), curve[-1][1], tuple(curve))
