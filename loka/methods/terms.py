"""The forget and retain terms of LOKA's fine-tune, read against the original model (data parallel aware)."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from loka.base.distributed import active
from loka.data.encoding import FactBatch
from loka.data.knowledge import KnowledgeSet
from loka.methods.batches import by_chunks, my_rows
from loka.models import hf_model
from loka.scoring.metrics import zero_loss
from loka.scoring.objectives import answer_log_probs, npo_loss, npo_sum, retain_kl, sequence_log_probs, unknown_loss
from loka.scoring.unknown import unknown_distributions

__all__ = ["Attacked", "attacked_log_probs", "ForgetTerm", "RetainTerm"]


class Attacked(Protocol):
    """A model at adversarially attacked weights (:class:`loka.methods.localized.erasure.AttackedModel`)."""

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


def attacked_log_probs(student: Any, batch: FactBatch, attacked: Attacked | None) -> torch.Tensor:
    """``student``'s answer log-probs on ``batch``, or those at its adversarially attacked weights."""
    if attacked is None:
        return answer_log_probs(student, batch)
    return batch.target_log_softmax(attacked.logits(batch.input_ids, batch.attention_mask))


class ForgetTerm:
    """LOKA's forget loss on the forget prompts (:mod:`loka.scoring.objectives`), on a batch of rows.

    A *row* is one fact of :attr:`knowledge`: for the ``"unknown"`` objective every prompt of the
    forget facts (each fact's prompt, then each of its ``paraphrases``:
    :class:`loka.data.knowledge.Prompts`), for ``"npo"`` the forget facts themselves. Every other
    term that reads the same rows (the subject term, the adversary's fold) is built from
    :attr:`knowledge` or :attr:`batch`, so that row ``i`` is the same text everywhere."""

    def __init__(self, model: Any, forget: KnowledgeSet, reference: KnowledgeSet | None, objective: str,
                 beta: float, tokenizer: Any, device: torch.device) -> None:  # fmt: skip
        self.objective, self.beta = objective, beta
        if objective == "unknown":
            assert reference is not None
            prompts, unknown = unknown_distributions(model, forget, reference)
            self.unknown = unknown.to(device)
        else:
            prompts = forget
        self.knowledge: KnowledgeSet = prompts
        self.batch = prompts.encode(tokenizer).to(device)
        skip_first, reference_model = objective == "unknown", hf_model(model)

        def read(part: FactBatch) -> torch.Tensor:  # log p_ref(answer | prompt) before the edit, for NPO
            return sequence_log_probs(answer_log_probs(reference_model, part), part, skip_first=skip_first)

        self.original = by_chunks(self.batch, read)
        self.multi = self.batch.target_mask.sum(-1) > 1

    def __len__(self) -> int:
        return len(self.batch)

    def __call__(self, student: Any, rows: torch.Tensor, attacked: Attacked | None = None) -> torch.Tensor:
        if active():
            return self._sharded(student, rows, attacked)
        batch = self.batch.rows(rows)
        log_probs = attacked_log_probs(student, batch, attacked)
        if self.objective == "npo":
            return npo_loss(sequence_log_probs(log_probs, batch), self.original[rows], beta=self.beta)
        loss = unknown_loss(log_probs[:, 0], self.unknown[rows])
        multi = self.multi[rows]
        if multi.any():  # the rest of a multi-token answer: NPO on the tokens after the first
            rest = sequence_log_probs(log_probs, batch, skip_first=True)
            loss = loss + npo_loss(rest[multi], self.original[rows][multi], beta=self.beta) * multi.float().mean()
        return loss

    def _sharded(self, student: Any, rows: torch.Tensor, attacked: Attacked | None) -> torch.Tensor:
        """The same loss, data parallel: this rank's rows, sums over the global batch's counts."""
        mine, n = my_rows(rows), len(rows)
        if len(mine) == 0:
            return zero_loss(student)
        batch = self.batch.rows(mine)
        log_probs = attacked_log_probs(student, batch, attacked)
        if self.objective == "npo":
            return npo_sum(sequence_log_probs(log_probs, batch), self.original[mine], self.beta) / n
        loss = torch.nn.functional.kl_div(log_probs[:, 0], self.unknown[mine], reduction="sum") / n
        n_multi = int(self.multi[rows].sum())
        multi = self.multi[mine]
        if multi.any():
            rest = sequence_log_probs(log_probs, batch, skip_first=True)
            term = npo_sum(rest[multi], self.original[mine][multi], self.beta) / n_multi
            loss = loss + term * (n_multi / n)
        return loss


class RetainTerm:
    """KL(original || student) at every answer position of a batch of retain rows. The original's
    log-probabilities are computed once when they fit in ``cache_bytes`` (small vocabularies and
    short answers), else recomputed per batch with the unedited model."""

    def __init__(self, model: Any, batch: FactBatch, cache_bytes: int = 1 << 28) -> None:
        self.model, self.batch, self.cached = model, batch, None
        vocab = int(hf_model(model).get_input_embeddings().num_embeddings)
        if batch.target_ids.numel() * vocab * 4 <= cache_bytes:
            self.cached = by_chunks(batch, self._original)

    def _original(self, batch: FactBatch) -> torch.Tensor:
        with torch.no_grad():
            return answer_log_probs(hf_model(self.model), batch)

    def __len__(self) -> int:
        return len(self.batch)

    def __call__(self, student: Any, rows: torch.Tensor) -> torch.Tensor:
        count = None
        if active():  # data parallel: this rank's rows, its sum over the global answer-token count
            count = self.batch.target_mask[rows].sum().clamp(min=1).to(torch.float32)
            rows = my_rows(rows)
            if len(rows) == 0:
                return zero_loss(student)
        batch = self.batch.rows(rows)
        original = self.cached[rows.to(self.cached.device)] if self.cached is not None else self._original(batch)
        return retain_kl(answer_log_probs(student, batch), original, batch.target_mask, count)
