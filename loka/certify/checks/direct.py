"""Direct answers: does the edited model answer the forget facts as often as it "answers"
never-seen people's facts (by guessing)? In the trained wording, in other wordings (the facts'
paraphrases) and in context (the person's other facts written before the question)."""

from __future__ import annotations

from typing import Any

import numpy as np

from loka.base.errors import UsageError
from loka.certify.checks import common, people
from loka.certify.result import Check
from loka.certify.statistics import measure
from loka.certify.suite import Suite
from loka.data.knowledge import KnowledgeSet
from loka.scoring.metrics import score_facts

__all__ = ["correct", "answers", "direct_checks"]


def correct(model: Any, tokenizer: Any, knowledge: KnowledgeSet) -> np.ndarray:
    """Per fact: 1.0 where the model's top-1 next token after the prompt is the answer's first."""
    return score_facts(model, knowledge, tokenizer=tokenizer).first_token_correct.float().numpy()


def answers(
    model: Any, tokenizer: Any, forget: KnowledgeSet, reference: KnowledgeSet, suite: Suite, *, name: str, what: str
) -> Check:
    """First-token accuracy, forget minus reference (two-sided: over-forgetting is a tell too)."""
    return measure(
        name, f"first-token accuracy, forget minus reference ({what})",
        correct(model, tokenizer, forget), people(forget), correct(model, tokenizer, reference), people(reference),
        statistic="difference", sided="two-sided", margin=suite.margin_accuracy, **common(suite),
    )  # fmt: skip


def direct_checks(
    model: Any, tokenizer: Any, forget: KnowledgeSet, reference: KnowledgeSet, suite: Suite
) -> list[Check]:
    out = [answers(model, tokenizer, forget, reference, suite, name="direct.answers", what="the given wording")]
    name, description = "direct.other_wordings", "first-token accuracy on the facts' paraphrases"
    if any(f.paraphrases for f in forget) and any(f.paraphrases for f in reference):
        out.append(answers(model, tokenizer, forget.paraphrased(), reference.paraphrased(), suite, name=name,
                           what="paraphrases"))  # fmt: skip
    else:
        out.append(Check.skip(name, description, "the forget or the reference facts have no paraphrases"))
    name, description = "direct.in_context", "first-token accuracy after the person's other facts"
    f_ctx, r_ctx = forget.in_context(), reference.in_context()
    if f_ctx is None or r_ctx is None:
        out.append(Check.skip(name, description, "no person has two or more facts on both sides"))
        return out
    try:
        out.append(answers(model, tokenizer, f_ctx, r_ctx, suite, name=name, what="the person's other facts first"))
    except UsageError as err:  # a context longer than the model's
        out.append(Check.skip(name, description, str(err)))
    return out
