"""Batches and per-answer losses that every method's training loop shares (data parallel aware)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from loka.base.distributed import active, gather_rows, shard
from loka.data.encoding import FactBatch
from loka.data.knowledge import KnowledgeSet
from loka.scoring.metrics import zero_loss
from loka.scoring.objectives import answer_log_probs

__all__ = ["shuffled_batches", "my_rows", "answer_nll", "sharded_answer_nll", "by_chunks"]


def shuffled_batches(
    knowledge: KnowledgeSet, tokenizer: Any, batch_size: int, generator: torch.Generator
) -> Iterator[Any]:
    """Batches of ``knowledge`` in a fresh random order each pass, forever."""
    while True:
        order = torch.randperm(len(knowledge), generator=generator).tolist()
        shuffled = KnowledgeSet(tuple(knowledge[i] for i in order), name=knowledge.name)
        yield from shuffled.batches(tokenizer, batch_size)


def my_rows(rows: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of a global batch's rows (all of them without a process group)."""
    part = shard(len(rows))
    return rows[part.start : part.stop]


def answer_nll(log_probs: torch.Tensor, batch: FactBatch, count: torch.Tensor | None = None) -> torch.Tensor:
    """Mean negative log-likelihood of the answer tokens (padding excluded); summed and divided by
    ``count`` instead when given (a rank's share of a global batch)."""
    picked = log_probs.gather(-1, batch.target_ids[..., None]).squeeze(-1)
    mask = batch.target_mask.to(picked.dtype)
    return -(picked * mask).sum() / (mask.sum().clamp(min=1.0) if count is None else count)


def sharded_answer_nll(student: Any, batch: FactBatch, rows: torch.Tensor) -> torch.Tensor:
    """:func:`answer_nll` of ``batch.rows(rows)``, data parallel under a process group (this
    rank's rows, its sum over the global batch's answer-token count)."""
    if not active():
        kept = batch.rows(rows)
        return answer_nll(answer_log_probs(student, kept), kept)
    mine = my_rows(rows)
    if len(mine) == 0:
        return zero_loss(student)
    count = batch.target_mask[rows].sum().clamp(min=1).to(torch.float32)
    local = batch.rows(mine)
    return answer_nll(answer_log_probs(student, local), local, count)


def by_chunks(batch: FactBatch, read: Callable[[FactBatch], torch.Tensor], rows: int = 256) -> torch.Tensor:
    """``read`` (no gradients) of ``batch`` in chunks of ``rows`` rows, joined in order: never a
    whole large batch's ``[rows, positions, d_vocab]`` at once. Data parallel under a process
    group: each rank reads its block of the chunks and every rank gets all of them."""
    chunks = torch.arange(len(batch)).split(rows)
    with torch.no_grad():
        parts = [read(batch.rows(chunks[i])) for i in shard(chunks)]
    if not active():
        return torch.cat(parts)
    return torch.cat([part.to(batch.input_ids.device) for part in gather_rows([p.cpu() for p in parts])])
