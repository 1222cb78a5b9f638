"""Membership inference: can an attacker tell texts a model trained on from texts it never saw?

An attack turns the per-token log-probabilities of a text into one score; the ROC AUC (sklearn) of
that score, members against non-members, says how well it separates them (0.5: not at all). The
three attacks are those of MUSE (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for
Language Models", github.com/swj0419/muse_bench ``metrics/privleak.py``) and of open-unlearning
(github.com/locuslab/open-unlearning ``src/evals/metrics/mia/``), with the sign flipped so that a
higher score always means "more likely a member":

- ``loss`` (Yeom et al. 2018): minus the mean token NLL (open-unlearning ``LOSSAttack``, the
  ``avg_loss`` of ``evaluate_probability``; MUSE's ``PPL`` key holds the same mean loss).
- ``zlib`` (Carlini et al. 2021, "Extracting Training Data from Large Language Models"): minus the
  mean token NLL divided by the length in bytes of the zlib-compressed UTF-8 text
  (open-unlearning ``ZLIBAttack``; MUSE's ``PPL/zlib``).
- ``min_k`` (Shi et al. 2024, "Detecting Pretraining Data from Large Language Models", Min-K% Prob):
  the mean of the ``max(1, int(n * k))`` lowest of the ``n`` token log-probabilities
  (open-unlearning ``MinKProbAttack``, which returns minus that mean). ``k = 0.4`` by default: MUSE's
  PrivLeak uses ``Min-40%`` (``eval.py``'s ``privleak_auc_key``) and open-unlearning's ``mia_min_k``
  configs set ``k: 0.4``. MUSE itself takes ``int(n * k)`` without the floor of 1 (an empty mean on
  texts of fewer than 3 tokens); the floor is open-unlearning's.
- **Min-K%++** (Zhang et al. 2024, "Min-K%++: Improved Baseline for Detecting Pre-Training Data
  from Large Language Models", arXiv 2404.02936; open-unlearning ``MinKPlusPlusAttack``): each
  token's log-probability is standardised by the model's own next-token distribution at that
  position, ``(log p(x_t) - mu_t) / sigma_t`` with ``mu_t = E_{z~p}[log p(z)]`` and ``sigma_t`` the
  standard deviation of ``log p(z)`` under the same distribution; the score is the mean of the
  lowest ``k`` share (:func:`min_k_plus_plus`). It needs the whole next-token distribution, so its
  inputs come from :func:`token_statistics`, not from the log-probabilities alone.

Which tokens are scored is the caller's choice: MUSE scores every token of a text after its first,
open-unlearning's TOFU attack only an answer's tokens (see :mod:`loka.benchmarks.tofu`).

**AUC convention.** :func:`membership_auc` labels members 1 and non-members 0, so 1.0 means "the
attack finds the members perfectly" (open-unlearning's ``mia_auc`` has the same orientation: "auc is
1 when the forget data is much more likely than the holdout data"). MUSE labels the other way round
(holdout 1, forget 0, scores ``-loss``), so its AUC is one minus ours: an original model that
memorised the forget set has a MUSE AUC near 0. :func:`privleak` converts before applying MUSE's
formula.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score

from loka.base.errors import UsageError
from loka.data.knowledge import KnowledgeSet
from loka.scoring.metrics import text_token_log_probs

__all__ = [
    "ATTACKS", "Attack", "DEFAULT_MIN_K", "membership_scores", "membership_auc", "privleak", "zlib_length",
    "TokenStatistics", "token_statistics", "as_statistics", "min_k_plus_plus",
]  # fmt: skip

Attack = Literal["loss", "zlib", "min_k"]
ATTACKS: tuple[Attack, ...] = ("loss", "zlib", "min_k")
DEFAULT_MIN_K = 0.4  # MUSE's PrivLeak key "Min-40%"; open-unlearning's mia_min_k config k: 0.4


def zlib_length(text: str) -> int:
    """Length in bytes of the zlib-compressed UTF-8 text (the zlib attack's normaliser)."""
    return len(zlib.compress(text.encode("utf-8")))


def _as_array(log_probs: torch.Tensor | ArrayLike, index: int) -> np.ndarray:
    values = log_probs.detach().cpu().double() if isinstance(log_probs, torch.Tensor) else log_probs
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise UsageError(f"text {index} has no scored tokens; every text needs at least one token log-probability")
    return array


def membership_scores(
    token_log_probs: Sequence[torch.Tensor | ArrayLike],
    texts: Sequence[str],
    *,
    attack: Attack,
    k: float = DEFAULT_MIN_K,
) -> np.ndarray:
    """One score per text, higher = "more likely a training member" (float64).

    ``token_log_probs[i]`` are the log-probabilities of the scored tokens of ``texts[i]``; ``texts``
    matter only to ``zlib``. ``loss``: ``mean(lp)``; ``zlib``: ``mean(lp) / zlib_length(text)``;
    ``min_k``: the mean of the ``max(1, int(len(lp) * k))`` smallest ``lp`` (see the module
    docstring for the references).
    """
    if attack not in ATTACKS:
        raise UsageError(f"unknown membership attack {attack!r}; use one of {ATTACKS}")
    if not 0 < k <= 1:
        raise UsageError(f"min-k fraction must be in (0, 1], got {k}")
    if len(token_log_probs) != len(texts):
        raise UsageError(f"got {len(token_log_probs)} token log-prob sequences for {len(texts)} texts")
    scores = np.empty(len(texts))
    for i, (log_probs, text) in enumerate(zip(token_log_probs, texts, strict=True)):
        lp = _as_array(log_probs, i)
        if attack == "loss":
            scores[i] = lp.mean()
        elif attack == "zlib":
            scores[i] = lp.mean() / zlib_length(text)
        else:
            n = max(1, int(len(lp) * k))
            scores[i] = np.sort(lp)[:n].mean()
    return scores


def membership_auc(
    member_log_probs: Sequence[torch.Tensor | ArrayLike],
    member_texts: Sequence[str],
    nonmember_log_probs: Sequence[torch.Tensor | ArrayLike],
    nonmember_texts: Sequence[str],
    *,
    attack: Attack = "loss",
    k: float = DEFAULT_MIN_K,
) -> float:
    """ROC AUC (sklearn) of a membership attack, members (label 1) against non-members (label 0).

    The inputs are per-token log-probabilities of each text (see
    :func:`loka.scoring.metrics.text_token_log_probs`). 1.0: the attack finds the members perfectly; 0.5:
    it cannot tell them apart. This is open-unlearning's orientation and one minus MUSE's.
    """
    if not member_log_probs or not nonmember_log_probs:
        raise UsageError("membership inference needs at least one member and one non-member text")
    scores = membership_scores(
        [*member_log_probs, *nonmember_log_probs], [*member_texts, *nonmember_texts], attack=attack, k=k
    )
    labels = np.r_[np.ones(len(member_log_probs)), np.zeros(len(nonmember_log_probs))]
    return float(roc_auc_score(labels, scores))


def privleak(auc: float, oracle_auc: float) -> float:
    """MUSE's PrivLeak of a model against the exact-retrain oracle, in percent.

    Both AUCs are in :func:`membership_auc`'s convention (members high) on the same forget (members)
    and holdout (non-members) texts. MUSE computes its AUC with holdout as the positive class
    (``muse_bench/metrics/privleak.py``: ``sweep`` on ``[0] * forget + [1] * holdout`` with scores
    ``-loss``), i.e. ``1 - auc``, and ``eval.py`` reports
    ``(AUC_unlearned - AUC_retrain) / AUC_retrain * 100``. So

        PrivLeak = ((1 - auc) - (1 - oracle_auc)) / (1 - oracle_auc) * 100

    which is 0 for the oracle itself, near -100 for a model that still has the forget set
    memorised (AUC near 1 in our convention; open-unlearning's ``docs/repro.md`` reports -99.81 for
    MUSE's News target model), and
    positive when unlearning overshoots (the forget texts now look *less* familiar than unseen
    ones). open-unlearning's ``privleak`` (``src/evals/metrics/privacy.py``) does the same
    conversion and adds 1e-10 to the denominator; so do we, so that an oracle AUC of exactly 1
    gives a huge finite number rather than a division by zero.
    """
    for name, value in (("auc", auc), ("oracle_auc", oracle_auc)):
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"{name} must be a ROC AUC in [0, 1], got {value}")
    muse_auc, muse_oracle_auc = 1.0 - auc, 1.0 - oracle_auc
    return (muse_auc - muse_oracle_auc) / (muse_oracle_auc + 1e-10) * 100.0


TokenStatistics = tuple[np.ndarray, np.ndarray, np.ndarray]  # per token: log p(x_t), mu_t, sigma_t


def token_statistics(
    model: Any, tokenizer: Any, knowledge: KnowledgeSet, *, batch_size: int = 32
) -> list[TokenStatistics]:
    """For every fact's text (prompt + target, after BOS), per token: ``log p(x_t | x_<t)``,
    ``mu_t`` and ``sigma_t`` of the next-token distribution it was drawn against (float64 arrays;
    :func:`loka.scoring.metrics.text_token_log_probs` with ``moments=True``)."""
    rows = text_token_log_probs(model, knowledge, tokenizer=tokenizer, batch_size=batch_size, moments=True)
    return [as_statistics(row) for row in rows]


def as_statistics(row: torch.Tensor) -> TokenStatistics:
    """One ``[3, tokens]`` row of ``text_token_log_probs(..., moments=True)`` as float64 arrays."""
    lp, mu, sd = row.double().numpy()
    return lp, mu, sd


def min_k_plus_plus(log_probs: Sequence[float], means: Sequence[float], stds: Sequence[float], k: float) -> float:
    """Min-K%++ of one text: the mean of the ``max(1, int(n * k))`` lowest standardised token
    scores ``(log p - mu) / sigma`` (a token whose distribution has ``sigma`` 0 scores 0)."""
    lp, mu, sd = (np.asarray(x, dtype=float) for x in (log_probs, means, stds))
    if lp.size == 0 or not (lp.shape == mu.shape == sd.shape):
        raise UsageError("min_k_plus_plus needs equally long, non-empty log-prob, mean and std sequences")
    if not 0 < k <= 1:
        raise UsageError(f"min-k fraction must be in (0, 1], got {k}")
    z = np.divide(lp - mu, sd, out=np.zeros_like(lp), where=sd > 0)
    n = max(1, int(len(z) * k))
    return float(np.sort(z)[:n].mean())
