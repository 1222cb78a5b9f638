"""The blind check: can the forget texts be told from the reference texts with no model at all?

If a classifier that reads only the texts (which words occur, how long a text is, how well it
compresses) separates forget from reference, every other check compares unlike with unlike and
means nothing (Das, Zhang & Tramèr 2024, "Blind Baselines Beat Membership Inference Attacks for
Foundation Models": blind attacks beat published MIAs on 8 data sets). A logistic regression on
binary bag-of-words, length and zlib-ratio features is cross-validated with the people as groups
(no person in both a training and a test fold), and its AUC is read against the same procedure
between random halves of the reference people. One-sided: only "separable" fails. When it FAILs
the certificate marks the reference invalid and no check may PASS.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from loka.certify.checks import people
from loka.certify.result import Check, Null
from loka.certify.statistics import p_value
from loka.certify.suite import Suite
from loka.data.knowledge import KnowledgeSet
from loka.evaluation.attacks.membership import zlib_length
from loka.evaluation.intervals import auc_interval

__all__ = ["features", "blind_auc", "blind_check"]

NAME = "blind.texts"
DESCRIPTION = "model-free classifier AUC, forget texts vs reference texts (are they comparable?)"


def features(texts: Sequence[str]) -> np.ndarray:
    """Binary bag of words, characters, words and the zlib ratio of each text (dense rows)."""
    words = CountVectorizer(binary=True, token_pattern=r"(?u)\b\w+\b").fit_transform(texts).toarray()
    numeric = np.array([[len(t), len(t.split()), zlib_length(t) / max(len(t.encode()), 1)] for t in texts])
    return np.hstack([words, numeric]).astype(float)


def blind_auc(texts: Sequence[str], labels: np.ndarray, groups: Sequence[str], seed: int) -> tuple[float, np.ndarray]:
    """Cross-validated (grouped by person) AUC of the text classifier, and its out-of-fold scores."""
    labels = np.asarray(labels)
    n_folds = min(5, *(len(set(np.asarray(groups, dtype=object)[labels == c])) for c in (0, 1)))
    folds = StratifiedGroupKFold(n_splits=max(2, n_folds), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, solver="liblinear"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        scores = cross_val_predict(model, features(texts), labels, groups=list(groups), cv=folds,
                                   method="decision_function")  # fmt: skip
    return float(roc_auc_score(labels, scores)), scores


def blind_check(forget: KnowledgeSet, reference: KnowledgeSet, suite: Suite) -> Check:
    fp, rp = people(forget), people(reference)
    r_people = list(dict.fromkeys(rp))
    if len(set(fp)) < 2 or len(r_people) < 4:
        return Check.skip(NAME, DESCRIPTION, "needs at least 2 forget and 4 reference people for grouped folds")
    texts = [f.text for f in forget] + [f.text for f in reference]
    labels = np.r_[np.ones(len(forget)), np.zeros(len(reference))]
    observed, scores = blind_auc(texts, labels, [*fp, *rp], suite.seed)
    rng = np.random.default_rng(suite.seed)
    r_texts = [f.text for f in reference]
    null_values = []
    for _ in range(suite.blind_splits):
        half = set(rng.permutation(r_people)[: len(r_people) // 2])
        pseudo = np.array([1.0 if p in half else 0.0 for p in rp])
        null_values.append(blind_auc(r_texts, pseudo, rp, int(rng.integers(2**31)))[0])
    values = np.array(null_values)
    low, high = np.quantile(values, [0.025, 0.975])
    null = Null(float(values.mean()), float(values.std(ddof=1)), float(low), float(high), suite.blind_splits)
    iv = auc_interval([scores[: len(forget)]], fp, [scores[len(forget) :]], rp, seed=suite.seed)
    return Check(
        name=NAME, description=DESCRIPTION, statistic="auc", sided="greater", margin=suite.margin_blind,
        observed=observed, forget_value=None, reference_value=None, interval=(iv.low, iv.high), null=null,
        p_value=p_value(observed, null, "greater"), n_forget=len(set(fp)), n_reference=len(r_people),
        test="normal tail of the reference-split null (cross-validated, grouped by person)", role="info",
    )  # fmt: skip
