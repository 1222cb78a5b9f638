"""Relearning calibrated without an oracle.

The same small fine-tune (the relearning attack of :mod:`loka.evaluation.attacks.relearning`: a
grid of learning rates, ``relearn_steps`` full-batch AdamW steps, retain facts mixed in) is run on
two copies of AFTER: one learns half of the forget facts, the other half of the reference facts
(people it never saw). Facts of one person are independent, so the held-out halves can only come
back from what is still in the weights: the forget people's held-out half must come back no
better than the strangers' held-out half (one-sided). The null splits the strangers' held-out half
by person. A second check fine-tunes on retain facts only (a benign fine-tune, Siddiqui et al.
2025): forget must not come back above the reference.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from loka.certify.checks import common, people
from loka.certify.checks.direct import correct
from loka.certify.result import Check
from loka.certify.statistics import measure
from loka.certify.suite import Suite
from loka.data.encoding import encode_facts
from loka.data.knowledge import KnowledgeSet
from loka.evaluation.attacks.relearning import relearn
from loka.models import hf_state_dict, input_device, plain_copy
from loka.scoring.metrics import lm_loss

__all__ = ["relearning_checks"]


def _held_out(model: Any, tokenizer: Any, knowledge: KnowledgeSet, retain: KnowledgeSet, suite: Suite) -> tuple:
    attack = relearn(
        model, tokenizer, knowledge, retain, steps=suite.relearn_steps, lrs=suite.relearn_lrs,
        split_seeds=(suite.seed,), retain_ratio=suite.relearn_retain_ratio, seed=suite.seed,
    )  # fmt: skip
    owner = dict(zip(knowledge.ids, people(knowledge), strict=True))
    return np.array(attack.held_out_correct, dtype=float), [owner[i] for i in attack.held_out_ids]


def _finetuned(model: Any, knowledge: KnowledgeSet, tokenizer: Any, *, steps: int, lr: float) -> Any:
    """A plain copy of ``model`` after ``steps`` full-batch AdamW steps on ``knowledge``."""
    copy = plain_copy(model, onload=hf_state_dict(model))
    batch = encode_facts(knowledge.facts, tokenizer if tokenizer is not None else model).to(input_device(copy))
    optimizer = torch.optim.AdamW(copy.parameters(), lr=lr)
    copy.train()
    for _ in range(steps):
        loss = lm_loss(copy, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return copy.eval()


def relearning_checks(
    model: Any, tokenizer: Any, forget: KnowledgeSet, reference: KnowledgeSet, retain: KnowledgeSet | None,
    suite: Suite,
) -> list[Check]:  # fmt: skip
    names = {
        "relearning.forget_half": "held-out half accuracy after fine-tuning on the other half, forget minus reference",
        "relearning.retain_only": "accuracy after fine-tuning on retain facts only, forget minus reference",
    }
    if retain is None:
        return [Check.skip(n, d, "needs --retain (the attack mixes retain facts in, as it was calibrated)")
                for n, d in names.items()]  # fmt: skip
    if len(forget) < 2 or len(reference) < 2:
        return [Check.skip(n, d, "needs at least 2 facts on each side") for n, d in names.items()]
    f, fp = _held_out(model, tokenizer, forget, retain, suite)
    r, rp = _held_out(model, tokenizer, reference, retain, suite)
    out = [
        measure(
            "relearning.forget_half",
            names["relearning.forget_half"],
            f,
            fp,
            r,
            rp,
            statistic="difference",
            sided="greater",
            margin=suite.margin_relearning,
            **common(suite),
            note=f"worst case over learning rates {list(suite.relearn_lrs)}, {suite.relearn_steps} steps",
        )  # fmt: skip
    ]
    n = min(len(retain), max(1, suite.relearn_retain_ratio * len(forget) // 2))
    sample = KnowledgeSet(tuple(random.Random(f"certify/{suite.seed}").sample(retain.facts, n)), name="retain-sample")
    worst: Check | None = None
    for lr in suite.relearn_lrs:
        tuned = _finetuned(model, sample, tokenizer, steps=suite.relearn_steps, lr=lr)
        check = measure(
            "relearning.retain_only", names["relearning.retain_only"], correct(tuned, tokenizer, forget),
            people(forget), correct(tuned, tokenizer, reference), people(reference), statistic="difference",
            sided="greater", margin=suite.margin_relearning, **common(suite),
            note=f"{n} retain facts, lr {lr}, {suite.relearn_steps} steps",
        )  # fmt: skip
        if worst is None or (check.observed or 0.0) > (worst.observed or 0.0):
            worst = check
        del tuned
    assert worst is not None
    out.append(worst)
    return out
