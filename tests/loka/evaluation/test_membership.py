"""Membership inference: the attacks on hand-made log-probabilities, and parity with the reference
code of MUSE (github.com/swj0419/muse_bench) and open-unlearning (github.com/locuslab/open-unlearning).

Each ``_ref_*`` function below is a literal transcription of the reference formula, fed the same
numbers as ours (the references take float tensors from a model; here they take float64 arrays).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from sklearn.metrics import auc as sklearn_auc
from sklearn.metrics import roc_auc_score, roc_curve

from loka.evaluation.attacks.membership import (
    ATTACKS,
    DEFAULT_MIN_K,
    membership_auc,
    membership_scores,
    privleak,
    zlib_length,
)


# --- literal transcriptions of the references -------------------------------------------------
def _ref_open_unlearning_min_k(lp: np.ndarray, k: float) -> float:
    # open-unlearning src/evals/metrics/mia/min_k.py, MinKProbAttack.compute_score
    if lp.size == 0:
        return 0
    num_k = max(1, int(len(lp) * k))
    sorted_vals = np.sort(lp)
    return -np.mean(sorted_vals[:num_k])


def _ref_muse_min_k(all_prob: np.ndarray, ratio: float) -> float:
    # muse_bench metrics/privleak.py, inference(): pred[f"Min-{int(ratio*100)}%"]
    k_length = int(len(all_prob) * ratio)
    topk_prob = np.sort(all_prob)[:k_length]
    return float(-np.mean(topk_prob).item())


def _ref_open_unlearning_zlib(avg_loss: float, text: str) -> float:
    # open-unlearning src/evals/metrics/mia/zlib.py, ZLIBAttack.compute_score
    zlib_entropy = len(zlib.compress(text.encode("utf-8")))
    return avg_loss / zlib_entropy


def _ref_muse_zlib(p1_likelihood: float, text: str) -> float:
    # muse_bench metrics/privleak.py, inference(): pred["PPL/zlib"] (p1_likelihood is the mean loss)
    zlib_entropy = len(zlib.compress(bytes(text, "utf-8")))
    return float(p1_likelihood / zlib_entropy)


def _ref_open_unlearning_auc(forget_scores: list[float], holdout_scores: list[float]) -> float:
    # open-unlearning src/evals/metrics/mia/utils.py, mia_auc (scores are loss-like)
    scores = np.array(forget_scores + holdout_scores)
    labels = np.array([0] * len(forget_scores) + [1] * len(holdout_scores))
    return roc_auc_score(labels, scores)


def _ref_muse_auc(forget_ppl: list[float], holdout_ppl: list[float]) -> float:
    # muse_bench metrics/privleak.py, eval() with split0 = "forget", split1 = "holdout", and sweep()
    ppl_nonmember, ppl_member = forget_ppl, holdout_ppl
    ppl = np.array(ppl_nonmember + ppl_member)
    y = np.array([0] * len(ppl_nonmember) + [1] * len(ppl_member))
    fpr, tpr, _ = roc_curve(y, -ppl)
    return sklearn_auc(fpr, tpr)


def _ref_muse_privleak(auc_unlearned: float, auc_retrain: float) -> float:
    # muse_bench eval.py, eval_model(): out['privleak'] (both AUCs in MUSE's orientation)
    return (auc_unlearned - auc_retrain) / auc_retrain * 100


def _ref_open_unlearning_privleak(score: float, ref: float) -> float:
    # open-unlearning src/evals/metrics/privacy.py, privleak (both AUCs from its mia_auc)
    score = 1 - score
    ref = 1 - ref
    return (score - ref) / (ref + 1e-10) * 100


# --- hand-made numbers ---------------------------------------------------------------------------
LOG_PROBS = [torch.tensor([-1.0, -3.0, -2.0, -6.0, -0.5]), torch.tensor([-0.1, -0.2])]
TEXTS = ["aaaaaaaaaa", "hello"]


def test_membership_scores_on_hand_made_log_probs():
    np.testing.assert_allclose(membership_scores(LOG_PROBS, TEXTS, attack="loss"), [-12.5 / 5, -0.15])
    # 5 tokens x 0.4 = 2 lowest: -6, -3; 2 tokens x 0.4 = 0.8 -> int 0 -> at least 1: -0.2
    np.testing.assert_allclose(membership_scores(LOG_PROBS, TEXTS, attack="min_k", k=0.4), [-4.5, -0.2])
    # the zlib attack divides the *mean* NLL by the compressed length
    expected = [-12.5 / 5 / len(zlib.compress(b"aaaaaaaaaa")), -0.15 / len(zlib.compress(b"hello"))]
    np.testing.assert_allclose(membership_scores(LOG_PROBS, TEXTS, attack="zlib"), expected)
    assert zlib_length("hello") == len(zlib.compress(b"hello"))


def test_min_k_defaults_to_forty_percent_and_truncates():
    assert DEFAULT_MIN_K == 0.4
    lp = [torch.tensor([-7.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0])]
    # 7 x 0.4 = 2.8: int() keeps 2 (-7, -6); round() would keep 3
    assert membership_scores(lp, ["x"], attack="min_k")[0] == pytest.approx(-6.5)
    assert membership_scores(lp, ["x"], attack="min_k", k=1.0)[0] == pytest.approx(-4.0)


def test_membership_scores_reject_bad_input():
    with pytest.raises(ValueError, match="unknown membership attack 'ppl'"):
        membership_scores(LOG_PROBS, TEXTS, attack="ppl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"min-k fraction must be in \(0, 1\]"):
        membership_scores(LOG_PROBS, TEXTS, attack="min_k", k=0)
    with pytest.raises(ValueError, match="text 1 has no scored tokens"):
        membership_scores([torch.tensor([-1.0]), torch.tensor([])], TEXTS, attack="loss")
    with pytest.raises(ValueError, match="2 token log-prob sequences for 1 texts"):
        membership_scores(LOG_PROBS, TEXTS[:1], attack="loss")
    with pytest.raises(ValueError, match="at least one member and one non-member"):
        membership_auc(LOG_PROBS, TEXTS, [], [])


def test_membership_auc_counts_member_over_nonmember_pairs():
    members = [torch.tensor([-1.0, -1.0]), torch.tensor([-2.0])]  # LOSS scores -1, -2
    others = [torch.tensor([-3.0]), torch.tensor([-1.0, -2.0])]  # -3, -1.5
    # pairs (member > non-member): -1>-3, -1>-1.5, -2>-3 yes; -2>-1.5 no -> 3/4
    assert membership_auc(members, ["a b", "c"], others, ["d", "e f"]) == pytest.approx(0.75)
    assert membership_auc(others, ["d", "e f"], members, ["a b", "c"]) == pytest.approx(0.25)


# --- parity with the references --------------------------------------------------------------------
def _random_texts(seed: int, n: int) -> tuple[list[np.ndarray], list[str]]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 40, size=n)
    log_probs = [np.log(rng.uniform(1e-4, 1.0, size=int(m))) for m in lengths]
    words = ["alpha", "beta", "gamma", "delta", "Kuwait", "1956", "!"]
    texts = [" ".join(rng.choice(words, size=int(m))) for m in lengths]
    return log_probs, texts


@pytest.mark.parametrize("k", [0.05, 0.2, 0.4, 0.6])
def test_min_k_equals_the_references(k):
    log_probs, texts = _random_texts(0, 30)
    ours = membership_scores(log_probs, texts, attack="min_k", k=k)
    ou = np.array([_ref_open_unlearning_min_k(lp, k) for lp in log_probs])
    np.testing.assert_array_equal(ours, -ou)  # open-unlearning's score is loss-like: minus ours
    # MUSE takes int(n * k) without the floor of 1; where that is >= 1 the two agree
    long_enough = [i for i, lp in enumerate(log_probs) if int(len(lp) * k) >= 1]
    assert long_enough
    muse = np.array([_ref_muse_min_k(log_probs[i], k) for i in long_enough])
    np.testing.assert_array_equal(ours[long_enough], -muse)


def test_zlib_and_loss_equal_the_references():
    log_probs, texts = _random_texts(1, 30)
    avg_loss = [float(-lp.mean()) for lp in log_probs]  # open-unlearning avg_loss, MUSE p1_likelihood
    zlib_scores = membership_scores(log_probs, texts, attack="zlib")
    np.testing.assert_array_equal(
        zlib_scores, [-_ref_open_unlearning_zlib(a, t) for a, t in zip(avg_loss, texts, strict=True)]
    )
    np.testing.assert_array_equal(zlib_scores, [-_ref_muse_zlib(a, t) for a, t in zip(avg_loss, texts, strict=True)])
    np.testing.assert_array_equal(membership_scores(log_probs, texts, attack="loss"), [-a for a in avg_loss])


@pytest.mark.parametrize("attack", ATTACKS)
def test_auc_orientation_against_the_references(attack):
    """Ours (members high) equals open-unlearning's AUC and is one minus MUSE's, on the same texts."""
    forget, forget_texts = _random_texts(2, 25)
    holdout, holdout_texts = _random_texts(3, 20)
    forget = [lp + 0.5 for lp in forget]  # members a little more likely
    ours = membership_auc(forget, forget_texts, holdout, holdout_texts, attack=attack)
    # the references' loss-like scores are minus ours
    forget_ref = list(-membership_scores(forget, forget_texts, attack=attack))
    holdout_ref = list(-membership_scores(holdout, holdout_texts, attack=attack))
    assert 0.5 < ours < 1.0
    assert ours == pytest.approx(_ref_open_unlearning_auc(forget_ref, holdout_ref), abs=1e-12)
    assert ours == pytest.approx(1 - _ref_muse_auc(forget_ref, holdout_ref), abs=1e-12)


# --- PrivLeak ------------------------------------------------------------------------------------
# MUSE's AUC of its retrained model, forget vs holdout, Min-40%, in MUSE's orientation
# (muse_bench constants.py, AUC_RETRAIN["news"|"books"]["forget_holdout_Min-40%"])
MUSE_RETRAIN_AUC = {"news": 0.47719999999999996, "books": 0.5392999999999999}


@pytest.mark.parametrize("corpus", ["news", "books"])
def test_privleak_on_muses_retrain_aucs(corpus):
    muse_retrain = MUSE_RETRAIN_AUC[corpus]
    oracle = 1 - muse_retrain  # our orientation
    # the retrained model against itself: 0
    assert privleak(oracle, oracle) == 0.0
    # a target model that memorised the forget set (our AUC 1, MUSE's 0): -100, as MUSE's target
    # rows (-99.81 News, -57.26 Books in open-unlearning's docs/repro.md) approach
    assert privleak(1.0, oracle) == pytest.approx(-100.0)
    # forget texts less familiar than unseen ones (over-unlearning): positive
    assert privleak(0.2, oracle) == pytest.approx((0.8 - muse_retrain) / muse_retrain * 100)
    assert privleak(0.2, oracle) > 0
    for ours in (0.0, 0.13, 0.5, 0.77, 0.999, 1.0):
        muse = 1 - ours
        assert privleak(ours, oracle) == pytest.approx(_ref_muse_privleak(muse, muse_retrain), rel=1e-9, abs=1e-9)
        # open-unlearning's privleak takes AUCs from its mia_auc, which are in our orientation
        assert privleak(ours, oracle) == _ref_open_unlearning_privleak(ours, oracle)


def test_privleak_end_to_end_from_token_log_probs():
    """The whole chain on the same numbers: AUCs from each reference's pipeline, then its PrivLeak."""
    forget, forget_texts = _random_texts(4, 20)
    holdout, holdout_texts = _random_texts(5, 20)
    memorised = [lp * 0.2 for lp in forget]  # the original: forget texts far more likely
    retrained = list(forget)  # the oracle: like any unseen text
    ours = {
        name: membership_auc(lps, forget_texts, holdout, holdout_texts, attack="min_k")
        for name, lps in (("original", memorised), ("oracle", retrained))
    }
    muse = {
        name: _ref_muse_auc([_ref_muse_min_k(lp, 0.4) for lp in lps], [_ref_muse_min_k(lp, 0.4) for lp in holdout])
        for name, lps in (("original", memorised), ("oracle", retrained))
    }
    expected = _ref_muse_privleak(muse["original"], muse["oracle"])
    assert privleak(ours["original"], ours["oracle"]) == pytest.approx(expected, rel=1e-9)
    assert expected < -50


def test_privleak_rejects_values_that_are_not_aucs():
    with pytest.raises(ValueError, match=r"oracle_auc must be a ROC AUC in \[0, 1\], got 1.5"):
        privleak(0.5, 1.5)
    with pytest.raises(ValueError, match=r"auc must be a ROC AUC in \[0, 1\], got -0.1"):
        privleak(-0.1, 0.5)
