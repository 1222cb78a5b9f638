"""The certificate's statistics against hand numbers and reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from loka.base.errors import UsageError
from loka.certify.result import Check, Null
from loka.certify.statistics import (
    auc,
    decide,
    difference,
    difference_interval,
    holm,
    measure,
    null_from_splits,
    p_value,
    pass_margin,
    verdict,
)


def test_holm_matches_hand_numbers():
    # sorted 0.01, 0.02, 0.03, 0.04 (m = 4): 4 x 0.01 = 0.04, 3 x 0.02 = 0.06, 2 x 0.03 = 0.06,
    # 1 x 0.04 = 0.04 -> made non-decreasing: 0.04, 0.06, 0.06, 0.06; returned in input order
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    # capped at 1, ties keep their order, one p-value is its own adjustment
    assert holm([0.5, 0.5, 0.001]) == pytest.approx([1.0, 1.0, 0.003])
    assert holm([0.2]) == [0.2]
    assert holm([]) == []
    with pytest.raises(UsageError, match="p-values must lie in"):
        holm([0.1, 1.5])


def test_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        f, r = rng.integers(0, 5, size=7).astype(float), rng.integers(0, 5, size=11).astype(float)
        expected = roc_auc_score(np.r_[np.ones(7), np.zeros(11)], np.r_[f, r])
        assert auc(f, ["a"] * 7, r, ["b"] * 11) == pytest.approx(expected, abs=1e-12)


def test_difference_is_of_per_person_means():
    # forget: person a (1, 1, 0) -> 2/3, person b (0) -> 0: mean 1/3; reference: c (0, 1) -> 1/2
    assert difference(np.array([1, 1, 0, 0.0]), ["a", "a", "a", "b"], np.array([0, 1.0]), ["c", "c"]) == pytest.approx(
        1 / 3 - 1 / 2
    )


def _iid(seed: int, n_people: int = 20, per_person: int = 3):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=n_people * per_person)
    people = [f"p{i}" for i in range(n_people) for _ in range(per_person)]
    return values, people


def test_null_from_splits_is_seeded_and_centred_on_no_difference_for_iid_data():
    values, people = _iid(1)
    a = null_from_splits(auc, values, people, n_splits=200, seed=3)
    assert a == null_from_splits(auc, values, people, n_splits=200, seed=3)
    assert a != null_from_splits(auc, values, people, n_splits=200, seed=4)
    assert abs(a.center - 0.5) < 0.02 and a.low < 0.5 < a.high and a.sd > 0
    d = null_from_splits(difference, values, people, n_splits=200, seed=3)
    assert abs(d.center) < 0.05 and d.low < 0 < d.high
    with pytest.raises(UsageError, match="at least 2 reference people"):
        null_from_splits(auc, values[:3], ["p0"] * 3, n_splits=10, seed=0)


def test_difference_interval_covers_the_point_and_shrinks_with_more_people():
    small = difference_interval(*_iid(2, 6), *_iid(3, 6), n_resamples=500)
    large = difference_interval(*_iid(2, 60), *_iid(3, 60), n_resamples=500)
    point = difference(*_iid(2, 6), *_iid(3, 6))
    assert small[0] <= point <= small[1]
    assert large[1] - large[0] < small[1] - small[0]


def test_p_value_normal_tail():
    null = Null(center=0.5, sd=0.05, low=0.4, high=0.6, n_splits=100)
    assert p_value(0.6, null, "two-sided") == pytest.approx(0.0455, abs=1e-3)  # z = 2
    assert p_value(0.6, null, "greater") == pytest.approx(0.02275, abs=1e-4)
    assert p_value(0.4, null, "greater") == pytest.approx(1 - 0.02275, abs=1e-4)
    flat = Null(0.0, 0.0, 0.0, 0.0, 10)
    assert p_value(0.0, flat, "two-sided") == 1.0 and p_value(0.1, flat, "two-sided") == 0.0
    assert p_value(-0.1, flat, "greater") == 1.0


def test_the_three_verdicts_on_constructed_numbers():
    m, a = 0.1, 0.05
    two = {"sided": "two-sided", "alpha": a}
    assert verdict(0.02, (-0.05, 0.08), m, 0.5, **two) == "PASS"  # interval inside +-m
    assert verdict(0.30, (0.20, 0.40), m, 0.001, **two) == "FAIL"  # beyond m and significant
    assert verdict(-0.30, (-0.40, -0.20), m, 0.001, **two) == "FAIL"  # too unfamiliar fails too
    assert verdict(0.30, (0.20, 0.40), m, 0.2, **two) == "INCONCLUSIVE"  # not significant after Holm
    assert verdict(0.05, (-0.15, 0.25), m, 0.6, **two) == "INCONCLUSIVE"  # too wide to decide
    one = {"sided": "greater", "alpha": a}
    assert verdict(-0.30, (-0.40, -0.20), m, 0.001, **one) == "PASS"  # below the reference is fine
    assert verdict(0.30, (0.20, 0.40), m, 0.001, **one) == "FAIL"
    assert verdict(0.05, (-0.05, 0.15), m, 0.3, **one) == "INCONCLUSIVE"


def test_a_wider_pass_margin_passes_a_wide_interval_but_never_overrules_a_shown_difference():
    m, two = 0.1, {"sided": "two-sided", "alpha": 0.05}
    assert verdict(0.05, (-0.15, 0.25), m, 0.6, **two, pass_margin=0.25) == "PASS"
    assert verdict(0.05, (-0.15, 0.25), m, 0.6, **two, pass_margin=0.2) == "INCONCLUSIVE"
    # significant and beyond the margin: FAIL, though the interval lies within the pass margin
    assert verdict(0.15, (0.12, 0.18), m, 0.001, **two, pass_margin=0.25) == "FAIL"


def test_pass_margin_is_the_power_formula_clipped_to_the_suite():
    null = Null(0.5, 0.1, 0.3, 0.7, 200)
    kw = {"alpha": 0.05, "power": 0.95, "margin_max": 0.5}
    # 20 forget, 20 reference people (halves of 10): se = 0.1 * sqrt((1/20 + 1/20) / (1/10 + 1/10))
    se = 0.1 * np.sqrt(0.5)
    assert pass_margin(null, 20, 20, 0.15, **kw) == pytest.approx((1.6449 + 1.9600) * se, abs=1e-3)
    assert pass_margin(null, 20, 20, 0.15, **{**kw, "margin_max": 0.2}) == 0.2  # capped
    assert pass_margin(null, 20, 20, 0.3, **kw) == 0.3  # never below the suite's margin
    # four times the people halve the null's spread: the suite's margin stands
    assert pass_margin(Null(0.5, 0.05, 0.4, 0.6, 200), 80, 80, 0.15, **kw) == 0.15
    assert pass_margin(None, 20, 20, 0.15, **kw) == 0.15
    # more people, a smaller reach (the null sd itself shrinks too; here held fixed)
    assert pass_margin(null, 40, 20, 0.01, **kw) < pass_margin(null, 10, 20, 0.01, **kw)


def test_a_clean_forget_set_passes_at_the_pass_margin_in_most_draws():
    """Forget and reference people drawn from one distribution, with person effects (what makes a
    membership AUC wide): at the suite's margin alone few draws PASS, at the pass margin nearly all."""
    rng = np.random.default_rng(1)
    kw = {"sided": "two-sided", "n_splits": 100, "n_resamples": 300, "confidence": 0.90, "alpha": 0.05,
          "power": 0.95}  # fmt: skip
    passed = {None: 0, 0.3: 0}
    draws = 20
    for seed in range(draws):
        people = np.repeat(np.arange(40), 5)
        values = rng.normal(size=40)[people] + 0.5 * rng.normal(size=200)
        f, r = values[:100], values[100:]
        fp, rp = [f"f{i}" for i in people[:100]], [f"r{i}" for i in people[100:]]
        for cap in passed:
            c = measure("x", "", f, fp, r, rp, statistic="auc", margin=0.1, seed=seed, margin_max=cap, **kw)
            passed[cap] += decide([c], alpha=0.05)[0].verdict == "PASS"
    assert passed[None] <= draws // 2 and passed[0.3] >= draws - 2


def test_measure_and_decide_fail_a_memorised_set_and_pass_a_matched_one():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=60)
    ref_people = [f"r{i // 3}" for i in range(60)]
    people = [f"f{i // 3}" for i in range(30)]
    kw = {"sided": "two-sided", "n_splits": 100, "n_resamples": 300, "confidence": 0.95, "seed": 0}
    known = measure("known", "", ref[:30] + 5, people, ref, ref_people, statistic="auc", margin=0.15, **kw)
    same = measure("same", "", rng.normal(size=30), people, ref, ref_people, statistic="auc", margin=0.45, **kw)
    skipped = Check.skip("skipped", "", "why")
    info = measure("info", "", ref[:30] + 5, people, ref, ref_people, statistic="auc", margin=0.15, **kw)
    judged = decide([known, same, skipped, info.with_(role="info")], alpha=0.05)
    assert known.observed == 1.0 and judged[0].verdict == "FAIL"
    assert judged[1].verdict == "PASS"
    assert judged[2].verdict is None and judged[2].p_holm is None
    # Holm runs over the held-out and dev checks only (2 here); "info" keeps its own p-value
    assert judged[1].p_holm == pytest.approx(min(1.0, max(2 * known.p_value, same.p_value)))
    assert judged[3].p_holm is None and judged[3].verdict == "FAIL"
