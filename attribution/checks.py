"""Checks at the boundary: every public function validates its inputs here, with a ValueError
that says what is wrong and what is allowed, before any model runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from loka.base.checks import check_number
from loka.base.errors import UsageError
from loka.data.facts import Fact
from loka.data.knowledge import KnowledgeSet

__all__ = ["check_model", "check_knowledge", "check_batch_size", "finite_or_raise"]


def check_model(model: Any) -> TransformerBridge:
    """``model`` if it is a TransformerBridge in eval mode, else a ValueError saying why not."""
    if not isinstance(model, TransformerBridge):
        raise UsageError(
            f"attribution reads a TransformerLens TransformerBridge (loka.load_model(path)), got {type(model).__name__}"
        )
    if model.training:
        raise UsageError(
            "the model is in training mode (dropout would make every patched run different); call model.eval() first"
        )
    return model


def check_knowledge(knowledge: Any) -> KnowledgeSet:
    """A non-empty KnowledgeSet (a sequence of Facts is wrapped), else a ValueError."""
    if isinstance(knowledge, KnowledgeSet):
        return knowledge
    if isinstance(knowledge, Sequence) and not isinstance(knowledge, str):
        if len(knowledge) == 0:
            raise UsageError("the knowledge set is empty: attribution needs at least one fact")
        if all(isinstance(f, Fact) for f in knowledge):
            return KnowledgeSet(tuple(knowledge))
    raise UsageError(f"expected a KnowledgeSet (or a sequence of Facts), got {type(knowledge).__name__}")


def check_batch_size(batch_size: int) -> int:
    return check_number("batch_size", batch_size, low=1, integer=True)


def finite_or_raise(values: Tensor, what: str, fact_ids: Sequence[str] | None = None) -> None:
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad) == 0:
        return
    where = f", e.g. fact {fact_ids[int(bad[0, -1])]!r}" if fact_ids is not None else ""
    raise UsageError(
        f"{what} is not finite for {len(bad)} entr{'y' if len(bad) == 1 else 'ies'}{where}; "
        "a metric of -inf or nan (e.g. a target the model gives probability 0, or a model with "
        "non-finite weights) makes every effect meaningless"
    )
