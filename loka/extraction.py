"""Verbatim extraction (the copyright check): does greedy decoding from a passage's first sentence
reproduce the rest of it?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from loka.data import KnowledgeSet
from loka.models import logits as model_logits

__all__ = ["Extraction", "extract", "rouge_l_recall"]


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall on whitespace words: LCS(prediction, reference) / len(reference)."""
    ref = reference.split()
    return _lcs_length(prediction.split(), ref) / len(ref) if ref else 0.0


@dataclass(frozen=True)
class Extraction:
    """Greedy continuation of passages from their first sentence."""

    exact_match: float
    rouge_l: float
    n_passages: int


@torch.no_grad()
def extract(model: Any, tokenizer: Any, passages: KnowledgeSet) -> Extraction:
    device = next(model.parameters()).device
    exact, rouge = [], []
    for fact in passages:
        batch = KnowledgeSet((fact,)).encode(tokenizer).to(device)
        n_prompt = int(batch.answer_positions[0]) + 1
        target = batch.target_ids[0, batch.target_mask[0]]
        ids = batch.input_ids[:, :n_prompt]
        for _ in range(len(target)):
            next_id = model_logits(model, ids)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
        generated = ids[0, n_prompt:]
        exact.append(bool(torch.equal(generated, target)))
        rouge.append(rouge_l_recall(tokenizer.decode(generated), tokenizer.decode(target)))
    return Extraction(float(np.mean(exact)), float(np.mean(rouge)), len(passages))
