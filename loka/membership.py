"""Membership inference: can an attacker tell texts a model trained on from texts it never saw?

Per-text scores (higher = "more likely a member") from per-token log-probabilities, their ROC AUC
(sklearn) members against non-members, and MUSE's PrivLeak against the exact-retrain oracle.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

__all__ = ["ATTACKS", "Attack", "membership_scores", "membership_auc", "privleak"]

Attack = Literal["loss", "zlib", "min_k"]
ATTACKS: tuple[Attack, ...] = ("loss", "zlib", "min_k")


def membership_scores(
    token_log_probs: list[torch.Tensor], texts: list[str], *, attack: Attack, k: float = 0.2
) -> np.ndarray:
    """One score per text, higher = "more likely a training member".

    ``loss``: minus the mean token NLL. ``zlib``: minus the total NLL divided by the zlib-compressed
    length of the text in bytes. ``min_k``: the mean of the lowest ``k`` fraction of token
    log-probabilities.
    """
    if attack not in ATTACKS:
        raise ValueError(f"unknown membership attack {attack!r}; use one of {ATTACKS}")
    if not 0 < k <= 1:
        raise ValueError(f"min-k fraction must be in (0, 1], got {k}")
    scores = []
    for log_probs, text in zip(token_log_probs, texts, strict=True):
        if attack == "loss":
            scores.append(log_probs.mean().item())
        elif attack == "zlib":
            scores.append(log_probs.sum().item() / len(zlib.compress(text.encode("utf-8"))))
        else:
            n = max(1, int(round(k * len(log_probs))))
            scores.append(log_probs.sort().values[:n].mean().item())
    return np.asarray(scores)


def membership_auc(
    member_log_probs: Sequence[torch.Tensor],
    member_texts: Sequence[str],
    nonmember_log_probs: Sequence[torch.Tensor],
    nonmember_texts: Sequence[str],
    *,
    attack: Attack = "loss",
    k: float = 0.2,
) -> float:
    """ROC AUC (sklearn) of a membership attack, members (label 1) against non-members (label 0).

    The inputs are per-token log-probabilities of each text (see
    :func:`loka.metrics.text_token_log_probs`); 0.5 means the attack cannot tell them apart.
    """
    if not member_log_probs or not nonmember_log_probs:
        raise ValueError("membership inference needs at least one member and one non-member text")
    scores = membership_scores(
        [*member_log_probs, *nonmember_log_probs], [*member_texts, *nonmember_texts], attack=attack, k=k
    )
    labels = np.r_[np.ones(len(member_log_probs)), np.zeros(len(nonmember_log_probs))]
    return float(roc_auc_score(labels, scores))


def privleak(auc: float, oracle_auc: float) -> float:
    """MUSE's PrivLeak: (AUC - AUC_oracle) / AUC_oracle x 100; 0 means "leaks like the oracle"."""
    return (auc - oracle_auc) / oracle_auc * 100.0
