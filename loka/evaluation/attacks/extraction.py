"""Verbatim extraction (the copyright check): does greedy decoding from a passage's first sentence
reproduce the rest of it?

Each passage is a fact whose prompt is the first sentence and whose target is the rest. The model
continues ``BOS + prompt`` greedily for as many tokens as the target has (Hugging Face
``generate(do_sample=False)``, as MUSE's VerbMem does in ``muse_bench/metrics/verbmem.py``), and
:func:`extract` reports

- **exact match**: the share of passages whose generated token ids equal the target's, token for
  token (the continuation is extractable verbatim);
- **ROUGE-L recall** of the decoded continuation against the decoded target: TOFU's ROUGE
  (Maini et al. 2024, github.com/locuslab/tofu ``evaluate_util.eval_rouge_recall``);
- **ROUGE-L F1**: MUSE's VerbMem (Shi et al. 2024, ``muse_bench/metrics/logger.py``, reported as
  ``mean_rougeL``), here on a 0-1 scale rather than MUSE's percent.

ROUGE comes from Google's ``rouge-score`` package, called as TOFU and open-unlearning
(``src/evals/metrics/utils.py``, ``eval_text_similarity``) call it: ``RougeScorer(["rougeL"],
use_stemmer=True).score(reference, prediction)``. Its tokenizer lower-cases, turns every character
other than ``a-z0-9`` into a space and Porter-stems words longer than 3 characters. MUSE's own
``RougeEvalLogger`` builds its scorer with ``use_stemmer=False``; pass ``use_stemmer=False`` to the
ROUGE functions for that variant.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from loka.base.errors import UsageError
from loka.data.knowledge import KnowledgeSet
from loka.models import hf_model, input_device

__all__ = ["Extraction", "RougeL", "extract", "rouge_l", "rouge_l_recall", "rouge_l_f1"]


class RougeL(NamedTuple):
    """ROUGE-L of a prediction against a reference (rouge-score's ``Score``)."""

    precision: float
    recall: float
    fmeasure: float


@functools.cache
def _scorer(use_stemmer: bool) -> Any:
    from rouge_score import rouge_scorer  # imports nltk, which takes seconds: only when ROUGE is asked for

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l(prediction: str, reference: str, *, use_stemmer: bool = True) -> RougeL:
    """ROUGE-L precision, recall and F1 of ``prediction`` against ``reference`` (rouge-score)."""
    score = _scorer(use_stemmer).score(reference, prediction)["rougeL"]
    return RougeL(float(score.precision), float(score.recall), float(score.fmeasure))


def rouge_l_recall(prediction: str, reference: str, *, use_stemmer: bool = True) -> float:
    """ROUGE-L recall, LCS / reference length, on rouge-score's tokens (TOFU's ROUGE); 0 if either is empty."""
    return rouge_l(prediction, reference, use_stemmer=use_stemmer).recall


def rouge_l_f1(prediction: str, reference: str, *, use_stemmer: bool = True) -> float:
    """ROUGE-L F1 on rouge-score's tokens (MUSE's VerbMem, 0-1); 0 if either is empty."""
    return rouge_l(prediction, reference, use_stemmer=use_stemmer).fmeasure


@dataclass(frozen=True)
class Extraction:
    """Greedy continuation of passages from their first sentence.

    ``exact_match``: share of passages reproduced token for token; ``rouge_l``: mean ROUGE-L recall
    (TOFU); ``rouge_l_f1``: mean ROUGE-L F1 (MUSE's VerbMem on a 0-1 scale).
    """

    exact_match: float
    rouge_l: float
    n_passages: int
    rouge_l_f1: float


def _greedy_continuations(
    model: Any, prompts: list[torch.Tensor], n_new: list[int], pad_id: int, device: torch.device
) -> list[torch.Tensor]:
    """Greedy continuation of each prompt (token ids) by ``n_new`` tokens, one left-padded batch."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = prompt
        mask[i, width - len(prompt) :] = 1
    hf = hf_model(model)
    out = hf.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max(n_new),
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id,
        # A bridge's attention components do not read Hugging Face's KV cache (cached and
        # uncached logits disagree), so a bridge generates without one; its hooks still apply.
        use_cache=hf is model,
    )
    sequences = getattr(out, "sequences", out)  # a GenerateOutput when TransformerLens set return_dict_in_generate
    return [sequences[i, width : width + n].cpu() for i, n in enumerate(n_new)]


def _positions(model: Any) -> int | None:
    """The most positions the model reads (``max_position_embeddings``; GPT-2's ``n_positions``), if it says."""
    limit = getattr(hf_model(model).config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def _fitting_groups(
    prompts: list[torch.Tensor], targets: list[torch.Tensor], limit: int | None, ids: tuple[str, ...]
) -> list[list[int]]:
    """Consecutive rows in groups that one left-padded ``generate()`` can continue: the longest
    prompt plus the longest continuation of a group within ``limit`` positions (each row fits on
    its own, or the passage is longer than the model reads: a one-line error)."""
    groups: list[list[int]] = []
    widest = longest = 0
    for i, (prompt, target) in enumerate(zip(prompts, targets, strict=True)):
        if limit is not None and len(prompt) + len(target) > limit:
            raise UsageError(
                f"passage {ids[i]!r} is {len(prompt) + len(target)} tokens (BOS, first sentence and rest); the "
                f"model reads at most {limit} positions: shorten it or leave it out"
            )  # fmt: skip
        grown = max(widest, len(prompt)) + max(longest, len(target))
        if groups and (limit is None or grown <= limit):
            groups[-1].append(i)
            widest, longest = max(widest, len(prompt)), max(longest, len(target))
        else:
            groups.append([i])
            widest, longest = len(prompt), len(target)
    return groups


@torch.no_grad()
def extract(model: Any, tokenizer: Any, passages: KnowledgeSet, *, batch_size: int = 16) -> Extraction:
    """Greedy-decode each passage's target from ``BOS + prompt`` and score it (see the module docstring).

    ``model`` is a TransformerBridge (its hooks apply) or a Hugging Face causal LM; generation runs
    through the Hugging Face model's ``generate()``, ``batch_size`` passages at a time, left-padded.
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}")
    device = input_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad_id = 0 if pad_id is None else pad_id
    exact: list[bool] = []
    recall: list[float] = []
    f1: list[float] = []
    for batch in passages.batches(tokenizer, batch_size):
        lengths = batch.attention_mask.sum(-1)
        targets = [row[m] for row, m in zip(batch.target_ids, batch.target_mask, strict=True)]
        prompts = [row[: int(n) - len(t)] for row, n, t in zip(batch.input_ids, lengths, targets, strict=True)]
        generated = []
        for group in _fitting_groups(prompts, targets, _positions(model), batch.fact_ids):
            generated += _greedy_continuations(
                model, [prompts[i] for i in group], [len(targets[i]) for i in group], pad_id, device
            )  # fmt: skip
        for new, target in zip(generated, targets, strict=True):
            exact.append(bool(torch.equal(new, target)))
            score = rouge_l(
                tokenizer.decode(new, skip_special_tokens=True), tokenizer.decode(target, skip_special_tokens=True)
            )
            recall.append(score.recall)
            f1.append(score.fmeasure)
    return Extraction(
        exact_match=float(np.mean(exact)),
        rouge_l=float(np.mean(recall)),
        n_passages=len(passages),
        rouge_l_f1=float(np.mean(f1)),
    )
