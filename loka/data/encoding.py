"""Facts as token ids: prompt and answer split from their joint encoding (:func:`split_fact`), batched
into a :class:`FactBatch` that knows which positions predict each answer token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from loka.base.errors import UsageError
from loka.data.facts import Fact

__all__ = ["PaddingSide", "token_log_probs", "FactBatch", "split_fact", "encode_facts"]

PaddingSide = Literal["left", "right"]


def token_log_probs(logits: Float[Tensor, "... d_vocab"], ids: Int[Tensor, ...]) -> Float[Tensor, ...]:
    """log p(each of ``ids``) under the logits row beside it: log-softmax over the vocabulary (in
    float32), read at the id. The one place loka turns logits into token log-probabilities."""
    return logits.float().log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


@dataclass(frozen=True)
class FactBatch:
    """Facts tokenized for one forward pass.

    ``input_ids`` holds BOS (optional) + prompt + target for every fact. The logits at
    ``prediction_positions[i, j]`` predict ``target_ids[i, j]``; entries where ``target_mask`` is
    False are padding (their position repeats the last real one). ``subject_mask`` marks the
    prompt tokens that overlap the fact's subject (all False when there is none). With left
    padding, pass ``attention_mask`` and ``position_ids`` to the model.
    """

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    target_ids: Int[Tensor, "batch target"]
    target_mask: Bool[Tensor, "batch target"]
    prediction_positions: Int[Tensor, "batch target"]
    subject_mask: Bool[Tensor, "batch pos"]
    fact_ids: tuple[str, ...]
    padding_side: PaddingSide

    def __len__(self) -> int:
        return len(self.fact_ids)

    @property
    def answer_positions(self) -> Int[Tensor, " batch"]:
        """The last prompt token of each fact: the position that predicts the first target token."""
        return self.prediction_positions[:, 0]

    @property
    def position_ids(self) -> Int[Tensor, "batch pos"]:
        """Positions that ignore left padding (what an HF model needs with a left-padded batch)."""
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)

    def target_logits(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, "batch target d_vocab"]:
        """The logits rows that predict each target token."""
        index = self.prediction_positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
        return logits.gather(1, index)

    def target_log_softmax(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, "batch target d_vocab"]:
        """log-softmax (float32) of the logits at every position that predicts a target token."""
        return self.target_logits(logits).float().log_softmax(-1)

    def target_log_probs(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, "batch target"]:
        """log p(target token j | prompt, earlier target tokens); 0 on padding entries."""
        return token_log_probs(self.target_logits(logits), self.target_ids) * self.target_mask

    def target_correct(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Bool[Tensor, "batch target"]:
        """Whether the top-1 prediction equals each target token (True on padding entries)."""
        hit = self.target_logits(logits).argmax(-1) == self.target_ids
        return hit | ~self.target_mask

    def rows(self, rows: Int[Tensor, " rows"]) -> FactBatch:
        """The batch of rows ``rows`` (in that order)."""
        picked = rows.tolist()
        return replace(
            self,
            input_ids=self.input_ids[rows],
            attention_mask=self.attention_mask[rows],
            target_ids=self.target_ids[rows],
            target_mask=self.target_mask[rows],
            prediction_positions=self.prediction_positions[rows],
            subject_mask=self.subject_mask[rows],
            fact_ids=tuple(self.fact_ids[i] for i in picked),
        )

    def to(self, device: str | torch.device) -> FactBatch:
        return replace(
            self,
            **{
                name: getattr(self, name).to(device)
                for name in (
                    "input_ids",
                    "attention_mask",
                    "target_ids",
                    "target_mask",
                    "prediction_positions",
                    "subject_mask",
                )
            },
        )


def _resolve_tokenizer(model_or_tokenizer: Any, max_length: int | None) -> tuple[Any, int | None]:
    """Accept a TransformerBridge (uses its tokenizer and n_ctx) or a tokenizer."""
    if hasattr(model_or_tokenizer, "cfg") and hasattr(model_or_tokenizer, "tokenizer"):
        tokenizer = model_or_tokenizer.tokenizer
        if tokenizer is None:
            raise UsageError("the model has no tokenizer; pass one explicitly")
        return tokenizer, max_length or getattr(model_or_tokenizer.cfg, "n_ctx", None)
    if not callable(getattr(model_or_tokenizer, "encode", None)):
        raise UsageError(
            f"expected a TransformerBridge or a Hugging Face tokenizer, got {type(model_or_tokenizer).__name__}"
        )
    if max_length is None:
        limit = getattr(model_or_tokenizer, "model_max_length", None)
        max_length = limit if isinstance(limit, int) and limit < 1_000_000 else None
    return model_or_tokenizer, max_length


def _is_blank(text: str) -> bool:
    return not text.strip()


def split_fact(tokenizer: Any, fact: Fact) -> tuple[list[int], list[int], list[tuple[int, int]] | None]:
    """``(prompt ids, target ids, prompt offsets)`` of ``fact``: its joined text (:attr:`Fact.text`)
    tokenized once (no special tokens) and split where the prompt ends.

    With a fast tokenizer the prompt is the run of leading tokens that end within the prompt's
    characters: exactly ``tokenizer(prompt)`` whenever that is a prefix of the joined encoding (a
    prompt that does not end in whitespace, with a byte-level or SentencePiece-style tokenizer);
    a token that straddles the boundary (a prompt's trailing space that the tokenizer reads as the
    start of the answer's first word) belongs to the target. A whitespace-only first target token (a lone ``"▁"`` or
    ``" "``) moves to the prompt while more target tokens follow. The offsets (character spans in
    the prompt, for subject positions) are ``None`` for a slow tokenizer, which is split by its
    prompt-alone encoding where that is a prefix of the joined one, and otherwise tokenizes the
    target on its own.
    """
    text, boundary = fact.text, len(fact.prompt)
    if getattr(tokenizer, "is_fast", False):
        joined = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(joined["input_ids"]), [tuple(o) for o in joined["offset_mapping"]]
        cut = next((i for i, (_, end) in enumerate(offsets) if end > boundary), len(ids))
        while cut < len(ids) - 1 and _is_blank(text[offsets[cut][0] : offsets[cut][1]]):
            cut += 1
        if 0 < cut < len(ids):
            return ids[:cut], ids[cut:], offsets[:cut]
        prompt = tokenizer(fact.prompt, add_special_tokens=False, return_offsets_mapping=True)
        target = tokenizer(text[boundary:], add_special_tokens=False)["input_ids"]
        return list(prompt["input_ids"]), list(target), [tuple(o) for o in prompt["offset_mapping"]]
    prompt_ids = list(tokenizer(fact.prompt, add_special_tokens=False)["input_ids"])
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if ids[: len(prompt_ids)] == prompt_ids and len(ids) > len(prompt_ids):
        cut = len(prompt_ids)
        while cut < len(ids) - 1 and _is_blank(tokenizer.decode(ids[cut : cut + 1])):
            cut += 1
        return ids[:cut], ids[cut:], None
    return prompt_ids, list(tokenizer(text[boundary:], add_special_tokens=False)["input_ids"]), None


def encode_facts(
    facts: Sequence[Fact],
    model_or_tokenizer: Any,
    *,
    padding_side: PaddingSide = "right",
    prepend_bos: bool = True,
    max_length: int | None = None,
) -> FactBatch:
    """Tokenize facts: ``[BOS] + tokens(prompt + joined target)``, split where the prompt ends
    (:func:`split_fact`), so the target ids are the tail of the joined text's encoding.

    Raises ValueError naming the fact when prompt + target exceed ``max_length`` (default: the
    model's context, or the tokenizer's ``model_max_length``), when a target tokenizes to nothing,
    when BOS is asked for and the tokenizer has none, or when a fact has a subject and the
    tokenizer cannot give character offsets (a slow tokenizer).
    """
    if padding_side not in ("left", "right"):
        raise UsageError(f"padding_side={padding_side!r} is not supported; use 'left' or 'right'")
    if not facts:
        raise UsageError("no facts to encode")
    tokenizer, max_length = _resolve_tokenizer(model_or_tokenizer, max_length)
    bos = []
    if prepend_bos:
        if tokenizer.bos_token_id is None:
            raise UsageError("prepend_bos=True but the tokenizer has no BOS token; pass prepend_bos=False")
        bos = [tokenizer.bos_token_id]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    rows, targets, subject_flags = [], [], []
    for fact in facts:
        prompt, target, offsets = split_fact(tokenizer, fact)
        if not target:
            raise UsageError(f"fact {fact.id!r}: target {fact.target!r} tokenizes to no tokens")
        ids = bos + prompt + target
        if max_length is not None and len(ids) > max_length:
            raise UsageError(
                f"fact {fact.id!r} is {len(ids)} tokens (BOS + prompt + target), longer than the "
                f"context of {max_length}; shorten or drop it (nothing is truncated)"
            )
        flags = [False] * len(ids)
        start = fact.prompt.find(fact.subject) if fact.subject else -1
        if start >= 0:
            if offsets is None:
                raise UsageError(
                    f"fact {fact.id!r}: subject positions need a fast tokenizer (character offsets); "
                    "load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
                )
            end = start + len(fact.subject)
            for i, (a, b) in enumerate(offsets):
                flags[len(bos) + i] = a < end and b > start
        rows.append(ids)
        targets.append(target)
        subject_flags.append(flags)

    n, width = len(rows), max(map(len, rows))
    n_target = max(map(len, targets))
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    subject_mask = torch.zeros((n, width), dtype=torch.bool)
    target_ids = torch.full((n, n_target), pad_id, dtype=torch.long)
    target_mask = torch.zeros((n, n_target), dtype=torch.bool)
    positions = torch.zeros((n, n_target), dtype=torch.long)
    for i, (ids, target, flags) in enumerate(zip(rows, targets, subject_flags, strict=True)):
        offset = width - len(ids) if padding_side == "left" else 0
        span = slice(offset, offset + len(ids))
        input_ids[i, span] = torch.tensor(ids)
        attention_mask[i, span] = 1
        subject_mask[i, span] = torch.tensor(flags)
        first = offset + len(ids) - len(target) - 1  # the last prompt token predicts target[0]
        target_ids[i, : len(target)] = torch.tensor(target)
        target_mask[i, : len(target)] = True
        positions[i] = first + torch.arange(n_target).clamp(max=len(target) - 1)
    return FactBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        target_ids=target_ids,
        target_mask=target_mask,
        prediction_positions=positions,
        subject_mask=subject_mask,
        fact_ids=tuple(f.id for f in facts),
        padding_side=padding_side,
    )
