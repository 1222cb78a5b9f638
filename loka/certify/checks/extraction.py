"""Verbatim extraction (the copyright check): greedy continuation of each passage from its first
sentence (:func:`loka.evaluation.attacks.extraction.extract`), ROUGE-L recall against the true
rest, forget passages against reference passages (two-sided: a forget passage continued *worse*
than a never-seen one is a tell too)."""

from __future__ import annotations

from typing import Any

import numpy as np

from loka.certify.checks import common, people
from loka.certify.result import Check
from loka.certify.statistics import measure
from loka.certify.suite import Suite
from loka.data.knowledge import KnowledgeSet
from loka.evaluation.attacks.extraction import extract

__all__ = ["extraction_check"]

NAME = "extraction.verbatim"
DESCRIPTION = "ROUGE-L recall of the greedy continuation, forget passages minus reference passages"


def _recall(model: Any, tokenizer: Any, passages: KnowledgeSet) -> np.ndarray:
    return np.array([extract(model, tokenizer, KnowledgeSet((p,), name="passage")).rouge_l for p in passages])


def extraction_check(
    model: Any, tokenizer: Any, forget: KnowledgeSet | None, reference: KnowledgeSet | None, suite: Suite
) -> Check:
    if forget is None or reference is None:
        return Check.skip(NAME, DESCRIPTION, "the forget or the reference set holds no passages (long texts without "
                          "a relation)")  # fmt: skip
    if len(set(people(reference))) < 2:
        return Check.skip(NAME, DESCRIPTION, "needs passages of at least 2 reference people for a null")
    return measure(
        NAME, DESCRIPTION, _recall(model, tokenizer, forget), people(forget), _recall(model, tokenizer, reference),
        people(reference), statistic="difference", sided="two-sided", margin=suite.margin_accuracy, **common(suite),
    )  # fmt: skip
