"""Which token positions an attribution reads, and what role each position plays in a fact.

A fact is read as ``[BOS] + prompt + target`` (see :mod:`loka.data`), right-padded in a batch. An
activation exists at every one of those positions, and a component can matter at some and not at
others: ROME found factual recall concentrated at the *last subject token* (MLPs) and the *last
prompt token* (attention). So every attribution says where it looks:

- ``"all"``: every real token (BOS, prompt and target; padding never matters, because attention is
  causal and padding comes last);
- ``"last"``: the last prompt token only, the position whose logits predict the first target token;
- ``"subject"``: the tokens of the fact's subject (every fact must then name a subject that occurs
  in its prompt).

Aggregating over facts of different lengths needs positions that mean the same thing in every
fact. :func:`position_classes` gives each position a *class* in the spirit of ROME's causal-tracing
summary (first / middle / last subject token, first subsequent token, further tokens, last token),
plus BOS, the tokens before the subject, and the target tokens. The ``mean`` baseline averages
activations per class, and :class:`attribution.tracing.LayerScan` summarises per class.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from loka.base.errors import UsageError
from loka.data.encoding import FactBatch

__all__ = [
    "Positions",
    "POSITIONS",
    "POSITION_CLASSES",
    "check_positions",
    "position_mask",
    "position_classes",
    "subject_tokens",
]

Positions = Literal["all", "last", "subject"]
POSITIONS: tuple[Positions, ...] = get_args(Positions)

POSITION_CLASSES: tuple[str, ...] = (
    "BOS",
    "before subject",
    "first subject",
    "middle subject",
    "last subject",
    "first subsequent",
    "further",
    "last prompt",
    "target",
)
"""Names of the classes :func:`position_classes` returns (class ``c`` is ``POSITION_CLASSES[c]``)."""
(BOS, BEFORE, FIRST_SUBJECT, MIDDLE_SUBJECT, LAST_SUBJECT, FIRST_SUBSEQUENT, FURTHER, LAST_PROMPT, TARGET) = range(
    len(POSITION_CLASSES)
)
PAD = -1


def check_positions(positions: str) -> Positions:
    """``positions`` if it is one of :data:`POSITIONS`, else a ValueError that lists them."""
    if positions not in POSITIONS:
        raise UsageError(f"unknown positions {positions!r}; use one of {', '.join(map(repr, POSITIONS))}")
    return positions  # type: ignore[return-value]


def subject_tokens(batch: FactBatch) -> Bool[Tensor, "batch pos"]:
    """Subject tokens of the prompt (never the last prompt token's successors)."""
    index = torch.arange(batch.input_ids.shape[1], device=batch.input_ids.device)
    return batch.subject_mask & (index[None] <= batch.answer_positions[:, None])


def position_mask(batch: FactBatch, positions: Positions) -> Bool[Tensor, "batch pos"]:
    """True where an attribution with ``positions`` reads (or patches) an activation.

    ValueError for ``"subject"`` when a fact has no subject tokens in its prompt (no ``subject``
    field, or a subject that does not occur in the prompt).
    """
    positions = check_positions(positions)
    real = batch.attention_mask.bool()
    if positions == "all":
        return real
    index = torch.arange(real.shape[1], device=real.device)
    if positions == "last":
        return index[None] == batch.answer_positions[:, None]
    subject = subject_tokens(batch)
    missing = [fact_id for fact_id, row in zip(batch.fact_ids, subject.any(-1).tolist(), strict=True) if not row]
    if missing:
        raise UsageError(
            f"positions='subject' needs every fact to name a subject that occurs in its prompt; "
            f"{len(missing)} fact(s) have none, e.g. {missing[0]!r}"
        )
    return subject


def position_classes(batch: FactBatch) -> Int[Tensor, "batch pos"]:
    """The class (an index into :data:`POSITION_CLASSES`) of every position; ``-1`` on padding.

    Assumes the batch was encoded with a BOS token at position 0 and right padding (as all of
    attribution encodes). A one-token subject is its own *last* subject token; a fact without a
    subject has only BOS, further, last-prompt and target positions.
    """
    real = batch.attention_mask.bool()
    index = torch.arange(real.shape[1], device=real.device)[None].expand_as(real)
    answer = batch.answer_positions[:, None]
    subject = subject_tokens(batch) & (index < answer)
    has_subject = subject.any(-1, keepdim=True)
    first = torch.where(subject, index, real.shape[1]).amin(-1, keepdim=True)
    last = torch.where(subject, index, -1).amax(-1, keepdim=True)

    classes = torch.full_like(batch.input_ids, PAD)
    classes[real] = FURTHER
    classes[has_subject & (index < first)] = BEFORE
    classes[subject] = MIDDLE_SUBJECT
    classes[subject & (index == first)] = FIRST_SUBJECT
    classes[subject & (index == last)] = LAST_SUBJECT
    classes[has_subject & (index == last + 1) & (index < answer)] = FIRST_SUBSEQUENT
    classes[index == answer] = LAST_PROMPT
    classes[real & (index > answer)] = TARGET
    classes[real & (index == 0)] = BOS
    return classes
