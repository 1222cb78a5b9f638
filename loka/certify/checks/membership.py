"""Membership inference, forget texts against reference texts inside the edited model.

Every attack scores each whole text (prompt and answer), higher = "more likely a training
member": LOSS, zlib and Min-K% from :mod:`loka.evaluation.attacks.membership`, and

- **Min-K%++** (Zhang et al. 2024; :func:`loka.evaluation.attacks.membership.min_k_plus_plus`):
  each token's log-probability standardised by the model's own next-token distribution, the mean
  of the lowest ``k`` share;
- **ratio to BEFORE**: the mean token NLL under AFTER divided by the same under BEFORE (minus it,
  so that "unchanged" is member-like). An erased forget text has moved and a stranger's has not,
  so this attack finds the forget set in *any* real erasure (the exact retrain too): whoever holds
  both models sees whom the edit touched. It is recorded as information, never counted;
- **dataset inference** (Maini et al. 2024, "LLM Dataset Inference: Did you train on my
  dataset?"): the four per-text scores above are combined by a logistic regression fitted on half
  the people of each side, and the other half is tested with a one-sided Welch t-test (forget
  scores above reference scores). The combination is learned, so it finds a forget set that sits
  on either side of the reference.

Each attack's ROC AUC (sklearn) is read against its null from reference splits, two-sided.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import ttest_ind
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from loka.certify.checks import common, people
from loka.certify.result import Check
from loka.certify.statistics import measure
from loka.certify.suite import Suite
from loka.data.knowledge import KnowledgeSet
from loka.evaluation.attacks.membership import (
    ATTACKS,
    TokenStatistics,
    membership_scores,
    min_k_plus_plus,
    token_statistics,
)

__all__ = ["TokenStatistics", "token_statistics", "min_k_plus_plus", "attack_scores", "membership_checks"]


def attack_scores(stats: Sequence[TokenStatistics], texts: Sequence[str], k: float) -> dict[str, np.ndarray]:
    """Every attack's per-text scores (higher = member): loss, zlib, min_k and min_k_plus_plus."""
    log_probs = [s[0] for s in stats]
    scores = {attack: membership_scores(log_probs, texts, attack=attack, k=k) for attack in ATTACKS}
    scores["min_k_plus_plus"] = np.array([min_k_plus_plus(*s, k=k) for s in stats])
    return scores


_NAMES = {"loss": "LOSS", "zlib": "zlib ratio", "min_k": "Min-K%", "min_k_plus_plus": "Min-K%++"}


def _auc_check(name: str, description: str, f: np.ndarray, fp: Sequence[str], r: np.ndarray, rp: Sequence[str],
               suite: Suite, **extra: Any) -> Check:  # fmt: skip
    return measure(name, description, f, fp, r, rp, statistic="auc", sided="two-sided", margin=suite.margin_auc,
                   **common(suite), **extra)  # fmt: skip


def loss_check(model: Any, tokenizer: Any, forget: KnowledgeSet, reference: KnowledgeSet, suite: Suite,
               *, name: str) -> Check:  # fmt: skip
    """The LOSS attack's AUC alone (what the quantization checks re-run)."""
    f, r = (membership_scores([t[0] for t in token_statistics(model, tokenizer, ks)], [x.text for x in ks],
                              attack="loss") for ks in (forget, reference))  # fmt: skip
    return _auc_check(name, "LOSS membership AUC, forget vs reference", f, people(forget), r, people(reference), suite)


def _dataset_inference(
    f_scores: dict[str, np.ndarray], fp: Sequence[str], r_scores: dict[str, np.ndarray], rp: Sequence[str],
    suite: Suite,
) -> Check:  # fmt: skip
    name = "membership.dataset_inference"
    description = "dataset inference: the four scores combined on half the people, the other half t-tested"
    f_people, r_people = list(dict.fromkeys(fp)), list(dict.fromkeys(rp))
    if len(f_people) < 2 or len(r_people) < 4:
        return Check.skip(name, description, "needs at least 2 forget and 4 reference people to halve")
    keys = ("loss", "zlib", "min_k", "min_k_plus_plus")
    xf = np.column_stack([f_scores[k] for k in keys])
    xr = np.column_stack([r_scores[k] for k in keys])
    rng = np.random.default_rng(suite.seed)
    f_fit = set(rng.permutation(f_people)[: len(f_people) // 2])
    r_fit = set(rng.permutation(r_people)[: len(r_people) // 2])
    f_in = np.array([p in f_fit for p in fp])
    r_in = np.array([p in r_fit for p in rp])
    x = np.r_[xf[f_in], xr[r_in]]
    y = np.r_[np.ones(f_in.sum()), np.zeros(r_in.sum())]
    combination = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    sf, sr = combination.decision_function(xf[~f_in]), combination.decision_function(xr[~r_in])
    test = ttest_ind(sf, sr, equal_var=False, alternative="greater")
    p = float(test.pvalue) if np.isfinite(test.pvalue) else 1.0
    fp_held = [q for q, keep in zip(fp, ~f_in, strict=True) if keep]
    rp_held = [q for q, keep in zip(rp, ~r_in, strict=True) if keep]
    return measure(
        name, description, sf, fp_held, sr, rp_held, statistic="auc", sided="greater", margin=suite.margin_auc,
        p_override=(p, "one-sided Welch t-test on the held-out half (Maini et al. 2024)"), **common(suite),
        note=f"AUC of the combined score on the held-out half; t = {float(test.statistic):.2f}",
    )  # fmt: skip


def membership_checks(
    after: Any, before: Any, tokenizer: Any, forget: KnowledgeSet, reference: KnowledgeSet, suite: Suite
) -> list[Check]:
    fp, rp = people(forget), people(reference)
    f_stats, r_stats = token_statistics(after, tokenizer, forget), token_statistics(after, tokenizer, reference)
    f_scores = attack_scores(f_stats, [x.text for x in forget], suite.min_k)
    r_scores = attack_scores(r_stats, [x.text for x in reference], suite.min_k)
    out = [
        _auc_check(
            f"membership.{attack}",
            f"{_NAMES[attack]} membership AUC, forget vs reference",
            f_scores[attack],
            fp,
            r_scores[attack],
            rp,
            suite,
        )  # fmt: skip
        for attack in ("loss", "zlib", "min_k", "min_k_plus_plus")
    ]
    if before is not None:
        ratios = []
        for stats, ks in ((f_stats, forget), (r_stats, reference)):
            base = token_statistics(before, tokenizer, ks)
            nll_after = np.array([-a[0].mean() for a in stats])
            nll_before = np.array([max(-b[0].mean(), 1e-12) for b in base])
            ratios.append(-nll_after / nll_before)  # higher = "unchanged" = member-like
        ratio = _auc_check("membership.ratio_to_before", "loss ratio AFTER / BEFORE membership AUC (information)",
                           ratios[0], fp, ratios[1], rp, suite,
                           note="any erasure moves the forget texts and not the strangers': never counted")  # fmt: skip
        out.append(ratio.with_(role="info"))
    out.append(_dataset_inference(f_scores, fp, r_scores, rp, suite))
    return out
