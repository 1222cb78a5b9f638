"""TOFU's metrics, as numbers in and numbers out (Maini et al. 2024, arXiv:2401.06121, Sec. 2.5).

Every TOFU number is built from per-token negative log-likelihoods (NLL) of an answer given its
question: ``nll = -(1/|a|) sum_t log p(a_t | q, a_<t)``, the mean over the answer's tokens *and
the EOS that ends it* (TOFU's labels carry that EOS: ``data_module.convert_raw_data_to_model_format``
in github.com/locuslab/tofu), which is TOFU's ``avg_gt_loss`` / ``avg_paraphrased_loss`` /
``average_perturb_loss``. This module holds
the arithmetic that turns those NLLs into the benchmark's figures, so that each can be checked by
hand (``tests/loka/test_tofu.py``); :mod:`loka.benchmarks.tofu.scoring` computes the NLLs from a model.

- **Probability** of an answer: ``exp(-nll)``, the per-token geometric mean of ``p(a | q)``
  (:func:`answer_probability`). On the real-authors and world-facts sets TOFU normalises it over
  the options: ``p(a) / (p(a) + sum_j p(a_pert_j))``, each ``p`` being ``exp(-nll)`` of that
  option (:func:`normalized_probability`; TOFU's ``aggregate_eval_stat.get_model_utility``).
- **Truth ratio** of a question: ``R = P(perturbed) / P(paraphrased)`` with
  ``P(perturbed) = exp(-mean_j nll_pert_j)`` (the geometric mean over the perturbed answers of
  their per-token probabilities) and ``P(paraphrased) = exp(-nll_para)`` (:func:`truth_ratio`).
  A model that knows the answer prefers its paraphrase to the wrong ones, so ``R`` is small.
  On real authors and world facts there is no paraphrase: TOFU uses the answer itself.
- Aggregates: on the **forget** set ``mean(min(R, 1/R))`` (1 when the model cannot tell true from
  false, :func:`forget_truth_ratio`); on **retain / real authors / world facts**
  ``mean(max(0, 1 - R))`` (near 1 when it knows them, :func:`retain_truth_ratio`). TOFU's code
  stores ``1/R`` and writes the retain aggregate as ``max(0, 1 - 1/(1/R))``; it is the same number.
- **Forget quality**: the p-value of the two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``)
  between the forget-set truth ratios of the unlearned model and of the retain model (trained
  without the forget authors). High (e.g. > 0.05) means "indistinguishable from never having seen
  them". The KS test depends only on ranks, so ``R`` and ``1/R`` give the same p-value.
- **Model utility**: the harmonic mean (``scipy.stats.hmean``) of nine numbers: probability, ROUGE-L
  recall and truth ratio on each of retain, real authors and world facts (:func:`model_utility`).
  A harmonic mean is dragged down by any one of them being low; one zero makes it zero.
- **ROUGE-L recall** of the greedy answer against the reference: :func:`rouge_l`, the
  ``rouge-score`` package's ``RougeScorer(["rougeL"], use_stemmer=True).score(reference,
  prediction).recall`` exactly as TOFU's ``evaluate_util.eval_rouge_recall`` calls it (lower case,
  non-alphanumerics to spaces, Porter stemming of words longer than 3 characters).
- **Membership inference** (not in the TOFU paper; MUSE's privacy check, and open-unlearning's
  ``mia_*`` metrics on TOFU): ROC AUC of an attack that scores each answer, forget QA (members)
  against holdout QA of authors never trained on (:func:`mia_auc`, which is
  :func:`loka.evaluation.attacks.membership.membership_auc`; 1 = members found).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import hmean, ks_2samp

from loka.base.errors import UsageError
from loka.evaluation.attacks.extraction import rouge_l_recall
from loka.evaluation.attacks.membership import (
    membership_auc as mia_auc,  # ROC AUC of a membership attack, members vs not
)

__all__ = [
    "UTILITY_SETS",
    "UTILITY_METRICS",
    "answer_probability",
    "normalized_probability",
    "truth_ratio",
    "forget_truth_ratio",
    "retain_truth_ratio",
    "forget_quality",
    "model_utility",
    "rouge_l",
    "mia_auc",
]

UTILITY_SETS = ("retain", "real_authors", "world_facts")
UTILITY_METRICS = ("probability", "rouge_l", "truth_ratio")


def _vector(values: ArrayLike, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise UsageError(f"{what} must be a non-empty 1-D array of NLLs, got shape {array.shape}")
    return array


def _matrix(values: ArrayLike, rows: int, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != rows or array.shape[1] == 0:
        raise UsageError(f"{what} must be shaped [{rows} questions, options >= 1], got shape {array.shape}")
    return array


def answer_probability(nll: ArrayLike) -> np.ndarray:
    """Per question: ``exp(-nll)``, the per-token probability of the answer (TOFU's "Prob.")."""
    return np.exp(-_vector(nll, "nll"))


def normalized_probability(nll: ArrayLike, perturbed_nll: ArrayLike) -> np.ndarray:
    """Per question: ``p(answer) / (p(answer) + sum_j p(perturbed_j))``, each ``p = exp(-nll)``.

    TOFU's probability on real authors and world facts (``perturbed_nll`` is ``[question, option]``).
    """
    true = answer_probability(nll)
    false = np.exp(-_matrix(perturbed_nll, len(true), "perturbed_nll"))
    return true / (true + false.sum(-1))


def truth_ratio(paraphrased_nll: ArrayLike, perturbed_nll: ArrayLike) -> np.ndarray:
    """Per question: ``R = exp(-mean_j nll_pert_j) / exp(-nll_para) = exp(nll_para - mean_j nll_pert_j)``."""
    para = _vector(paraphrased_nll, "paraphrased_nll")
    pert = _matrix(perturbed_nll, len(para), "perturbed_nll")
    return np.exp(para - pert.mean(-1))


def forget_truth_ratio(ratios: ArrayLike) -> float:
    """TOFU's forget-set aggregate: ``mean(min(R, 1/R))`` (1 = cannot tell true from false)."""
    r = _vector(ratios, "truth ratios")
    return float(np.mean(np.minimum(r, 1.0 / r)))


def retain_truth_ratio(ratios: ArrayLike) -> float:
    """TOFU's aggregate on retain, real authors and world facts: ``mean(max(0, 1 - R))``."""
    r = _vector(ratios, "truth ratios")
    return float(np.mean(np.maximum(0.0, 1.0 - r)))


def forget_quality(unlearned_ratios: ArrayLike, retain_model_ratios: ArrayLike) -> float:
    """KS-test p-value between two models' forget-set truth ratios (TOFU's "Forget Quality")."""
    a = _vector(unlearned_ratios, "unlearned truth ratios")
    b = _vector(retain_model_ratios, "retain-model truth ratios")
    return float(ks_2samp(a, b).pvalue)


def model_utility(values: Mapping[str, float]) -> float:
    """Harmonic mean of the nine numbers ``"{set}/{metric}"`` for set in :data:`UTILITY_SETS` and
    metric in :data:`UTILITY_METRICS` (TOFU's "Model Utility"); 0 if any of them is 0."""
    names = [f"{s}/{m}" for s in UTILITY_SETS for m in UTILITY_METRICS]
    missing = [n for n in names if n not in values]
    if missing or len(values) != len(names):
        raise UsageError(f"model utility needs exactly the nine values {names}; missing {missing}")
    numbers = np.array([values[n] for n in names], dtype=np.float64)
    if np.any(numbers < 0) or not np.all(np.isfinite(numbers)):
        raise UsageError(f"model utility's values must be finite and non-negative, got {dict(values)}")
    if np.any(numbers == 0):
        return 0.0
    return float(hmean(numbers))


def rouge_l(prediction: str, reference: str) -> float:
    """TOFU's ROUGE: ROUGE-L recall of ``prediction`` against ``reference`` (rouge-score, Porter stemming)."""
    return rouge_l_recall(prediction, reference, use_stemmer=True)
