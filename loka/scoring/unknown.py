"""What a model says about people it does not know: the answer an erasure asks for.

A forget prompt ("Kowen Prazed was born in") should, after the edit, read like the same prompt
about a stranger. :func:`unknown_distributions` measures that from the model itself: for each
prompt, its mean next-token distribution at the answer position (the last prompt token) over
``reference`` facts, people it never saw (e.g. holdout people), of the same relation and prompt
template. LOKA's ``"unknown"`` objective (:mod:`loka.scoring.objectives`) and the rewrite's erasure
(:func:`ablation.rewrite.rewrite`) both aim at it. The model is only read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from loka.base.errors import UsageError
from loka.data.checks import check_knowledge
from loka.data.knowledge import KnowledgeSet, Prompts
from loka.models import logits as model_logits

__all__ = ["prompt_distributions", "unknown_distributions"]


@torch.no_grad()
def prompt_distributions(model: Any, prompts: Prompts, reference: KnowledgeSet) -> Float[Tensor, "prompt d_vocab"]:
    """For each of ``prompts``, the model's mean next-token distribution at the answer position
    over the ``reference`` facts of the same relation and prompt template (else of the same
    relation, else over all of them)."""
    ref = Prompts.of(reference)
    probs = []
    for _, batch in ref.batches(model):
        out = model_logits(model, batch.input_ids, attention_mask=batch.attention_mask)
        probs.append(out[torch.arange(len(batch)), batch.answer_positions].float().softmax(-1))
    p = torch.cat(probs)
    return torch.stack([p[_group_rows(ref.groups, group)].mean(0) for group in prompts.groups])


def unknown_distributions(
    model: TransformerBridge, forget: KnowledgeSet, reference: KnowledgeSet
) -> tuple[KnowledgeSet, Float[Tensor, "prompt d_vocab"]]:
    """Every prompt of ``forget`` (each fact's prompt, then its paraphrases) and, for each, what
    the model says about people it does not know (:func:`prompt_distributions` over ``reference``,
    e.g. holdout people). This is what an erasure asks the forget prompts to output."""
    if not isinstance(model, TransformerBridge):
        name = type(model).__name__
        raise UsageError(f"unknown_distributions needs a TransformerBridge (loka.load_model), got {name}")
    prompts = Prompts.of(check_knowledge(forget, "forget"))
    return prompts.knowledge, prompt_distributions(model, prompts, check_knowledge(reference, "reference"))


def _group_rows(groups: Sequence[tuple[str | None, int]], group: tuple[str | None, int]) -> list[int]:
    """Rows of ``groups`` equal to ``group``; else of the same relation; else all of them."""
    for match in (lambda g: g == group, lambda g: g[0] == group[0]):
        rows = [i for i, g in enumerate(groups) if match(g)]
        if rows:
            return rows
    return list(range(len(groups)))
