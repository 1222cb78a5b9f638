"""Collateral damage: retain accuracy of AFTER against BEFORE, on the same retain facts.

The one check that compares two models rather than two sets: per retain person, the drop of
first-token accuracy (BEFORE minus AFTER); one-sided (only a drop fails), with a one-sided t-test
over people (scipy) and a bootstrap interval over people. No reference is involved, so there is
no null from splits (its centre is 0)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import bootstrap, ttest_1samp

from loka.certify.checks import people
from loka.certify.checks.direct import correct
from loka.certify.result import Check
from loka.certify.suite import Suite
from loka.data.knowledge import KnowledgeSet
from loka.evaluation.intervals import per_person

__all__ = ["collateral_check"]

NAME = "collateral.retain"
DESCRIPTION = "retain first-token accuracy lost by the edit (BEFORE minus AFTER)"


def collateral_check(after: Any, before: Any, tokenizer: Any, retain: KnowledgeSet | None, suite: Suite) -> Check:
    if retain is None:
        return Check.skip(NAME, DESCRIPTION, "no --retain given")
    a, b = correct(after, tokenizer, retain), correct(before, tokenizer, retain)
    _, drops = per_person(b - a, people(retain))
    observed = float(drops.mean())
    if len(drops) < 2 or np.allclose(drops, drops[0]):
        interval, p = (observed, observed), (0.0 if observed > 0 else 1.0)
    else:
        result = bootstrap((drops,), np.mean, n_resamples=suite.n_resamples, confidence_level=suite.confidence,
                           method="percentile", rng=np.random.default_rng(suite.seed))  # fmt: skip
        low, high = result.confidence_interval
        interval = (min(float(low), observed), max(float(high), observed))
        p = float(ttest_1samp(drops, 0.0, alternative="greater").pvalue)
    return Check(
        name=NAME, description=DESCRIPTION, statistic="difference", sided="greater", margin=suite.margin_collateral,
        observed=observed, forget_value=float(per_person(a, people(retain))[1].mean()),
        reference_value=float(per_person(b, people(retain))[1].mean()), interval=interval, p_value=p,
        n_forget=len(drops), n_reference=len(drops), test="one-sided t-test over retain people (paired)",
        note="forget_value: AFTER's retain accuracy; reference_value: BEFORE's",
    )  # fmt: skip
