"""What LOKA's edit minimises: forget and retain losses over every answer token.

A fact's answer may be one token ("Paris"), several ("New York"), a sentence (TOFU) or a passage.
Every loss here reads the logits at *each* position that predicts an answer token (teacher
forcing, :attr:`loka.data.FactBatch.prediction_positions`), so an edit cannot pass by changing
the first token only.

Forget losses (choose with ``objective=``):

- ``"unknown"`` (facts with a ``reference`` of people the model never saw): at the first answer
  position, ``KL(unknown || p)`` where ``unknown`` is the model's mean answer distribution over
  reference people of the same relation and template (:func:`loka.scoring.unknown.unknown_distributions`):
  the forget prompt should read like a prompt about a stranger, which is what the oracle outputs.
  There is no "stranger's distribution" for later answer tokens (they depend on the earlier ones),
  so the rest of a multi-token answer gets the NPO term below on the tokens after the first.
- ``"npo"`` (any text, no reference needed): Negative Preference Optimization (Zhang et al. 2024,
  arXiv 2404.05868), ``-(2 / beta) * log sigmoid(-beta * (log p(y|x) - log p_ref(y|x)))`` with
  ``log p(y|x)`` summed over every answer token and ``p_ref`` the model before the edit. Unlike
  gradient ascent its gradient vanishes once an answer is unlikely relative to the original, so it
  does not drive the model into degenerate text; open-unlearning's default ``beta`` is 0.1.

Retain loss: ``KL(p_original || p)`` at every answer position of the retain facts (the
original's distributions are recomputed per batch with the unedited model, so nothing of size
``[facts, answer tokens, vocabulary]`` is kept).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor

from loka.data.encoding import FactBatch
from loka.models import logits as model_logits

__all__ = [
    "npo_sum",
    "Objective",
    "OBJECTIVES",
    "answer_log_probs",
    "npo_loss",
    "retain_kl",
    "sequence_log_probs",
    "unknown_loss",
]

Objective = Literal["auto", "unknown", "npo"]
OBJECTIVES: tuple[Objective, ...] = get_args(Objective)


def answer_log_probs(model: Any, batch: FactBatch) -> Float[Tensor, "batch target d_vocab"]:
    """log-softmax (fp32) of the logits at every position that predicts an answer token."""
    return batch.target_log_softmax(model_logits(model, batch.input_ids, attention_mask=batch.attention_mask))


def sequence_log_probs(
    log_probs: Float[Tensor, "batch target d_vocab"], batch: FactBatch, *, skip_first: bool = False
) -> Float[Tensor, " batch"]:
    """log p(answer | prompt) per fact: the sum over its answer tokens (padding excluded);
    ``skip_first`` leaves out the first answer token."""
    picked = log_probs.gather(-1, batch.target_ids[..., None]).squeeze(-1)
    mask = batch.target_mask.clone()
    if skip_first:
        mask[:, 0] = False
    return (picked * mask).sum(-1)


def npo_loss(
    log_prob: Float[Tensor, " batch"], reference_log_prob: Float[Tensor, " batch"], *, beta: float = 0.1
) -> Float[Tensor, ""]:
    """NPO: mean over facts of ``-(2 / beta) * log sigmoid(-beta * (log_prob - reference_log_prob))``."""
    ratio = log_prob - reference_log_prob
    return -(2.0 / beta) * torch.nn.functional.logsigmoid(-beta * ratio).mean()


def unknown_loss(first: Float[Tensor, "batch d_vocab"], unknown: Float[Tensor, "batch d_vocab"]) -> Float[Tensor, ""]:
    """``KL(unknown || p)`` at the first answer position (``first`` are log-probabilities), batch mean."""
    return torch.nn.functional.kl_div(first, unknown, reduction="batchmean")


def retain_kl(
    log_probs: Float[Tensor, "batch target d_vocab"],
    original: Float[Tensor, "batch target d_vocab"],
    target_mask: Tensor,
    count: Tensor | None = None,
) -> Float[Tensor, ""]:
    """``KL(p_original || p)`` summed over the vocabulary, averaged over every real answer position
    (summed and divided by ``count`` instead when given: a rank's share of a global batch)."""
    per_position = (original.exp() * (original - log_probs)).sum(-1)
    mask = target_mask.to(per_position.dtype)
    return (per_position * mask).sum() / (mask.sum().clamp(min=1.0) if count is None else count)


def npo_sum(log_prob: torch.Tensor, reference_log_prob: torch.Tensor, beta: float) -> torch.Tensor:
    """The sum over rows of NPO's per-row terms (:func:`npo_loss` is their mean)."""
    return -(2.0 / beta) * torch.nn.functional.logsigmoid(-beta * (log_prob - reference_log_prob)).sum()
