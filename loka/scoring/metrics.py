"""Does the model know these facts? Per-fact scores every later module builds on.

For each fact we run ``prompt + target`` once (teacher forcing) and read, at the positions that
predict the target tokens:

- ``log_prob``: log p(target | prompt), the sum over target tokens;
- ``first_token_correct``: the top-1 prediction after the prompt is the target's first token;
- ``n_correct_tokens``: how many target tokens are the top-1 prediction given the ones before;
- ``exact_match``: every target token is the top-1 prediction given the ones before it, which is
  exactly "greedy decoding reproduces the target".

Works with a TransformerBridge (its own tokenizer) or a plain Hugging Face model (pass the
tokenizer). Scores are returned per fact, in the KnowledgeSet's order, as a frozen dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from loka.base.distributed import active, agreed, gather_rows, is_main, merge_rows, shard
from loka.base.errors import UsageError
from loka.data.encoding import FactBatch, encode_facts, token_log_probs
from loka.data.knowledge import KnowledgeSet
from loka.models import input_device
from loka.models import logits as model_logits

__all__ = [
    "FactScores", "score_facts", "lm_loss", "sharded_lm_loss", "text_nll", "text_token_log_probs", "next_token_moments",
    "zero_loss",
]  # fmt: skip


@dataclass(frozen=True)
class FactScores:
    """Per-fact scores of one model on one KnowledgeSet (same order as the set)."""

    fact_ids: tuple[str, ...]
    log_prob: Float[Tensor, " fact"]
    n_target_tokens: Float[Tensor, " fact"]
    n_correct_tokens: Float[Tensor, " fact"]
    first_token_correct: Bool[Tensor, " fact"]
    exact_match: Bool[Tensor, " fact"]

    def __len__(self) -> int:
        return len(self.fact_ids)

    @property
    def first_token_accuracy(self) -> float:
        return self.first_token_correct.double().mean().item()

    @property
    def exact_match_rate(self) -> float:
        return self.exact_match.double().mean().item()

    @property
    def mean_log_prob(self) -> float:
        return self.log_prob.mean().item()

    @property
    def answer_accuracy(self) -> float:
        """Mean over facts of the share of the fact's answer tokens predicted top-1 (teacher
        forcing): the first-token accuracy for one-token answers, and every token counts for
        longer ones. What every unlearning method's stopping rule reads."""
        return (self.n_correct_tokens.double() / self.n_target_tokens.clamp(min=1)).mean().item()

    @property
    def token_accuracy(self) -> float:
        """Fraction of target tokens predicted top-1 (teacher forcing), over all facts' tokens."""
        return (self.n_correct_tokens.sum() / self.n_target_tokens.sum()).item()


@torch.no_grad()
def score_facts(
    model: Any,
    knowledge: KnowledgeSet,
    *,
    tokenizer: Any = None,
    batch_size: int = 64,
    progress: bool = False,
) -> FactScores:
    """Score every fact of ``knowledge`` under ``model`` (a TransformerBridge or HF causal LM).

    Under a ``torch.distributed`` process group this is a collective (:mod:`loka.base.distributed`):
    the facts are batched as in one process, each rank scores a contiguous block of the batches,
    and every rank returns every fact's scores, in order (wrap the call in
    :func:`loka.base.distributed.local` to score on one rank alone).
    """
    encoder = tokenizer if tokenizer is not None else model
    device = input_device(model)
    log_probs, n_tokens, first, exact, n_correct = [], [], [], [], []
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}")
    starts = range(0, len(knowledge), batch_size)  # the batches of KnowledgeSet.batches
    mine = [starts[i] for i in shard(starts)]  # data parallel: this rank's block of them
    rows = [row for start in mine for row in range(start, min(start + batch_size, len(knowledge)))]
    batches = (encode_facts(knowledge.facts[start : start + batch_size], encoder) for start in mine)
    shown = progress and is_main()
    with agreed():
        for batch in tqdm(batches, total=len(mine), disable=not shown, desc="scoring facts", leave=False):
            batch = batch.to(device)
            logits = model_logits(model, batch.input_ids, attention_mask=batch.attention_mask)
            token_log_probs = batch.target_log_probs(logits)
            correct = batch.target_correct(logits)
            log_probs.append(token_log_probs.sum(-1).float().cpu())
            n_tokens.append(batch.target_mask.sum(-1).float().cpu())
            first.append(correct[:, 0].cpu())
            exact.append(correct.all(-1).cpu())
            n_correct.append((correct & batch.target_mask).sum(-1).float().cpu())

    def merged(parts: list[Tensor], dtype: torch.dtype) -> Tensor:
        local_rows = torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)
        return merge_rows(local_rows, rows, len(knowledge))

    return FactScores(
        fact_ids=knowledge.ids,
        log_prob=merged(log_probs, torch.float32),
        n_target_tokens=merged(n_tokens, torch.float32),
        n_correct_tokens=merged(n_correct, torch.float32),
        first_token_correct=merged(first, torch.bool),
        exact_match=merged(exact, torch.bool),
    )


@torch.no_grad()
def text_token_log_probs(
    model: Any,
    knowledge: KnowledgeSet,
    *,
    tokenizer: Any = None,
    batch_size: int = 64,
    moments: bool = False,
) -> list[Float[Tensor, " tokens"]] | list[Float[Tensor, "3 tokens"]]:
    """log p(token | everything before it) for every token of each fact's text (prompt + target,
    after BOS): what membership-inference attacks score. One tensor per fact, in order.
    ``moments=True``: each fact's tensor is ``[3, tokens]``, the log-probs, then the mean and the
    standard deviation of log p(z) under the next-token distribution z ~ p at the same position
    (what Min-K%++ standardises by), from the same forward pass.

    A collective under a process group, like :func:`score_facts`: each rank runs a contiguous
    block of the batches, and every rank returns every fact's tensor (gathered in rank order)."""
    encoder = tokenizer if tokenizer is not None else model
    device = input_device(model)
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}")
    starts = range(0, len(knowledge), batch_size)  # the batches of KnowledgeSet.batches
    mine = [starts[i] for i in shard(starts)]
    out: list[Tensor] = []
    with agreed():
        for start in mine:
            batch = encode_facts(knowledge.facts[start : start + batch_size], encoder).to(device)
            logits = model_logits(model, batch.input_ids, attention_mask=batch.attention_mask)
            keep = batch.attention_mask[:, 1:].bool()
            if moments:  # one log-softmax over the vocabulary serves the picked tokens and the moments
                log_p = logits[:, :-1].float().log_softmax(-1)
                picked = log_p.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
                stacked = torch.stack([picked, *next_token_moments(log_p)], dim=1)
                out += [row[:, mask].cpu() for row, mask in zip(stacked, keep, strict=True)]
            else:
                picked = token_log_probs(logits[:, :-1], batch.input_ids[:, 1:])
                out += [row[mask].float().cpu() for row, mask in zip(picked, keep, strict=True)]
    return gather_rows(out)


def next_token_moments(
    log_p: Float[Tensor, "batch pos d_vocab"],
) -> tuple[Float[Tensor, "batch pos"], Float[Tensor, "batch pos"]]:
    """Mean and standard deviation of log p(z) under z ~ p, from the next-token distribution's
    log-probabilities ``log_p`` (the float32 log-softmax of the logits)."""
    p = log_p.exp()
    mean = (p * log_p).sum(-1)
    var = (p * log_p.square()).sum(-1) - mean.square()
    return mean, var.clamp_min(0).sqrt()


def lm_loss(model: Any, batch: FactBatch) -> Tensor:
    """The HF next-token loss over every real token of a batch (BOS + prompt + target; padding
    ignored): what the baselines train and the relearning attack fine-tunes on."""
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss


def zero_loss(model: Any) -> Tensor:
    """A zero loss that depends on every trainable weight of ``model`` (gradients of zero): what a
    rank whose share of a data-parallel batch is empty contributes."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return sum((p.sum() * 0.0 for p in trainable), torch.zeros((), device=trainable[0].device))


def sharded_lm_loss(model: Any, batch: FactBatch) -> Tensor:
    """:func:`lm_loss` of a global batch, data parallel: without a process group exactly
    :func:`lm_loss`; under one, this rank's contiguous share of the rows, its token losses'
    *sum* divided by the whole batch's token count, so that the ranks' gradients add up
    (:func:`loka.base.distributed.all_reduce_gradients`) to the full batch's."""
    if not active():
        return lm_loss(model, batch)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)[:, 1:]
    count = (labels != -100).sum().clamp(min=1)
    part = shard(len(batch))
    if len(part) == 0:
        return zero_loss(model)
    ids, mask = batch.input_ids[part.start : part.stop], batch.attention_mask[part.start : part.stop]
    logits = model_logits(model, ids, attention_mask=mask)[:, :-1].float()
    total = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels[part.start : part.stop].reshape(-1), ignore_index=-100,
        reduction="sum",
    )  # fmt: skip
    return total / count


def text_nll(model: Any, batch: FactBatch) -> Float[Tensor, " batch"]:
    """Mean next-token NLL of each row's whole text after BOS (prompt and answer, padding excluded),
    in fp32: the score of the whole-text LOSS membership attack (:mod:`loka.evaluation.attacks.membership`),
    differentiable (LOKA's subject term and certify's loss-matching adversary train on it)."""
    logits = model_logits(model, batch.input_ids, attention_mask=batch.attention_mask)
    log_probs = logits[:, :-1].float().log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    keep = (batch.attention_mask[:, 1:] * batch.attention_mask[:, :-1]).to(log_probs.dtype)
    return -(log_probs * keep).sum(-1) / keep.sum(-1).clamp(min=1.0)
