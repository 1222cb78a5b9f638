"""The statistics every check shares: a null measured from reference-vs-reference splits, a
bootstrap interval over people, Holm's correction, and the three verdicts.

**Null.** What "the forget people look like strangers" means differs per attack: a membership
AUC of forget against never-seen texts is not 0.5 even for a model retrained without them (MUSE's
retrained models score 0.52-0.72, see ``notes/erasure-evidence.md``), and an accuracy difference
has a spread that depends on how many people there are. So each check's null is *measured*: the
reference people are split at random into two halves (``n_splits`` times, seeded), and the same
statistic is computed between the halves. Its mean is the centre the forget set is compared with,
its standard deviation, rescaled from two halves of the reference to the real comparison (forget
people against all reference people: ``sqrt((1/n_f + 1/n_r) / (1/h_1 + 1/h_2))``, 0.71 for 20
against 20), the scale of the test. (Read unscaled, the halves' spread made the test too
conservative: on the default testbed gradient ascent's forget texts, AUC 0.17 against a centre
of 0.50, were not shown different after Holm.)

**Interval.** The statistic is recomputed on people resampled with replacement, forget and
reference people independently (:func:`scipy.stats.bootstrap`, percentile; an AUC with
:func:`loka.evaluation.intervals.auc_interval`): it covers "other people of the same kind".

**p-value.** ``(observed - centre) / scale`` read against the normal tail (two-sided, or one-sided
where only "forget above reference" fails), with ``scale`` the larger of the comparison's standard
error read from the null (the null's sd rescaled from two halves of the reference to forget
against the whole reference, :func:`comparison_se`) and the standard error the interval implies
(its width over 2 z): a reference
whose values do not vary at all (every stranger's answer wrong) must not make any forget
deviation "certain". A normal tail rather than the split count, because a small reference has
few distinct splits (8 people: 35 halvings) and a rank p-value could then never fall below
Holm's bar.

**Verdicts** (deviation d = observed - centre, [lo, hi] its interval minus the centre; ``margin`` m
and ``margin_max`` fixed in the suite):

- FAIL: the Holm-adjusted p-value is below ``alpha`` and |d| > m (one-sided: d > m): a difference
  beyond the margin is shown. Checked first: a shown difference is never overruled.
- PASS: the interval lies within the **pass margin** m' (two-sided: -m' <= lo and hi <= m';
  one-sided: hi <= m'). This is Schuirmann's two one-sided tests (TOST) when the interval is the
  ``1 - 2 alpha`` one (the suite's ``confidence`` is 0.90 for ``alpha`` 0.05), and the overall
  PASS (every counted check PASSes) is an intersection-union test, valid at ``alpha`` with no
  multiplicity correction (Berger 1982).
- INCONCLUSIVE: neither.

**The pass margin** m' = min(max(m, (z_{1-alpha} + z_{(1+power)/2}) se), ``margin_max``) with se
the statistic's standard error between the forget and reference people, read from the null (its
halves hold about n_r / 2 people each, so se = null sd x sqrt((1/n_f + 1/n_r) / (1/h_1 + 1/h_2))).
(z_{1-alpha} + z_{(1+power)/2}) se is the smallest margin a TOST at this many people reaches with
probability ``power`` when the forget people are truly like strangers (the textbook sample-size
formula, solved for the margin): asking for less than that makes a clean model INCONCLUSIVE
most of the time (20 forget and 20 reference people give a membership AUC an se near 0.065, so
a clean model can show +-0.15 only half the time). m' depends on the reference people and the
numbers of people only, never on the forget values, so the test stays valid; the certificate
states m' beside each PASS, and ``margin_max`` bounds what a PASS may mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import bootstrap, norm, rankdata

from loka.base.errors import UsageError
from loka.certify.result import Check, Null, Sided, Verdict
from loka.evaluation.intervals import auc_interval, per_person

__all__ = [
    "difference",
    "auc",
    "null_from_splits",
    "difference_interval",
    "p_value",
    "holm",
    "verdict",
    "pass_margin",
    "comparison_se",
    "test_scale",
    "measure",
    "decide",
]

Statistic = Callable[[np.ndarray, Sequence[str], np.ndarray, Sequence[str]], float]


def difference(forget: np.ndarray, forget_people: Sequence[str], ref: np.ndarray, ref_people: Sequence[str]) -> float:
    """Mean over forget people of their mean value, minus the same over reference people."""
    return float(per_person(forget, forget_people)[1].mean() - per_person(ref, ref_people)[1].mean())


def auc(forget: np.ndarray, forget_people: Sequence[str], ref: np.ndarray, ref_people: Sequence[str]) -> float:
    """ROC AUC of the values, forget texts labelled 1, reference texts 0: the Mann-Whitney
    identity ``(rank sum of forget - n_f (n_f + 1) / 2) / (n_f n_r)`` with mid-ranks for ties,
    which equals sklearn's ``roc_auc_score`` (tested) at a fraction of its cost inside the null's
    loop."""
    n_f, n_r = len(forget), len(ref)
    ranks = rankdata(np.r_[forget, ref])
    return float((ranks[:n_f].sum() - n_f * (n_f + 1) / 2) / (n_f * n_r))


_STATISTICS: dict[str, Statistic] = {"difference": difference, "auc": auc}


def null_from_splits(
    statistic: Statistic, values: np.ndarray, people: Sequence[str], *, n_splits: int, seed: int
) -> Null:
    """The statistic between random halves of the reference people (``n_splits`` splits; the first
    half is the pseudo-forget side), as a :class:`Null`. Deterministic for a ``seed``."""
    values = np.asarray(values, dtype=float)
    names = list(dict.fromkeys(people))
    if len(names) < 2:
        raise UsageError(f"a null needs at least 2 reference people to split in halves, got {len(names)}")
    owner = np.array([names.index(p) for p in people])
    people_ = np.asarray(people, dtype=object)
    rng = np.random.default_rng(seed)
    half = len(names) // 2
    stats = []
    for _ in range(n_splits):
        chosen = np.zeros(len(names), dtype=bool)
        chosen[rng.permutation(len(names))[:half]] = True
        a = chosen[owner]
        stats.append(statistic(values[a], list(people_[a]), values[~a], list(people_[~a])))
    stats_ = np.asarray(stats)
    sd = float(stats_.std(ddof=1)) if len(stats_) > 1 else 0.0
    low, high = np.quantile(stats_, [0.025, 0.975])
    return Null(float(stats_.mean()), sd, float(low), float(high), n_splits)


def difference_interval(
    forget: np.ndarray,
    forget_people: Sequence[str],
    ref: np.ndarray,
    ref_people: Sequence[str],
    *,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`difference`, resampling forget people and reference
    people independently (a side with one person is held fixed)."""
    a = per_person(forget, forget_people)[1]
    b = per_person(ref, ref_people)[1]
    samples = [a, b]
    free = [i for i, s in enumerate(samples) if len(s) >= 2 and not np.allclose(s, s[0])]
    point = float(a.mean() - b.mean())
    if not free:
        return point, point

    def statistic(*resampled: np.ndarray, axis: int = -1) -> np.ndarray:
        full: list = list(samples)
        for i, r in zip(free, resampled, strict=True):
            full[i] = r
        return np.mean(full[0], axis=axis) - np.mean(full[1], axis=axis)

    result = bootstrap(
        tuple(samples[i] for i in free), statistic, vectorized=True, paired=False, n_resamples=n_resamples,
        confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed),
    )  # fmt: skip
    low, high = result.confidence_interval
    return min(float(low), point), max(float(high), point)


def p_value(observed: float, null: Null, sided: Sided, *, scale: float | None = None) -> float:
    """The p-value of "no deviation from the null's centre": the normal tail of
    ``(observed - centre) / scale`` (both tails for two-sided, the upper for "greater");
    ``scale`` defaults to the null's standard deviation. With a scale of zero, 0 when the
    observed value deviates (in the tested direction) and 1 otherwise."""
    d = observed - null.center
    scale = null.sd if scale is None else scale
    if scale <= 0:
        moved = abs(d) > 1e-12 if sided == "two-sided" else d > 1e-12
        return 0.0 if moved else 1.0
    z = d / scale
    return float(2 * norm.sf(abs(z)) if sided == "two-sided" else norm.sf(z))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order: sorted ascending, the
    i-th (from 0) of m is multiplied by m - i, made non-decreasing, and capped at 1."""
    p = np.asarray(p_values, dtype=float)
    if p.size == 0:
        return []
    if np.any((p < 0) | (p > 1)) or np.any(np.isnan(p)):
        raise UsageError(f"p-values must lie in [0, 1], got {p.tolist()}")
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


def verdict(
    deviation: float,
    interval: tuple[float, float],
    margin: float,
    p_adjusted: float,
    *,
    sided: Sided,
    alpha: float,
    pass_margin: float | None = None,
) -> Verdict:
    """PASS / FAIL / INCONCLUSIVE (see the module docstring); ``interval`` is of the deviation
    (observed minus the null's centre); ``pass_margin`` (default ``margin``) bounds a PASS."""
    low, high = interval
    wide = margin if pass_margin is None else pass_margin
    beyond = abs(deviation) > margin if sided == "two-sided" else deviation > margin
    if p_adjusted < alpha and beyond:
        return "FAIL"
    if (-wide <= low if sided == "two-sided" else True) and high <= wide:
        return "PASS"
    return "INCONCLUSIVE"


def comparison_se(null: Null | None, n_forget: int, n_reference: int) -> float:
    """The statistic's standard error between ``n_forget`` forget and ``n_reference`` reference
    people, read from the null between halves of the reference (h_1 and h_2 people):
    ``null sd x sqrt((1/n_f + 1/n_r) / (1/h_1 + 1/h_2))`` (0 without a null or people)."""
    if null is None or n_forget < 1 or n_reference < 2 or null.sd <= 0:
        return 0.0
    h1 = n_reference // 2
    h2 = n_reference - h1
    return float(null.sd * np.sqrt((1 / n_forget + 1 / n_reference) / (1 / h1 + 1 / h2)))


def pass_margin(
    null: Null | None, n_forget: int, n_reference: int, margin: float, *, alpha: float, power: float, margin_max: float
) -> float:
    """The margin a PASS is judged at (see the module docstring): the power-limited margin
    ``(z_{1-alpha} + z_{(1+power)/2}) se``, at least ``margin`` and at most ``margin_max`` (never
    below ``margin``); ``margin`` when there is no null or too few people to read an se."""
    se = comparison_se(null, n_forget, n_reference)
    if se <= 0:
        return margin
    reach = (norm.ppf(1 - alpha) + norm.ppf((1 + power) / 2)) * se
    return float(max(margin, min(reach, margin_max)))


def test_scale(null: Null, n_forget: int, n_reference: int, interval: tuple[float, float], confidence: float) -> float:
    """The scale a deviation is read against: the larger of the comparison's standard error read
    from the null (:func:`comparison_se`) and the one the bootstrap interval implies (its width
    over 2 z), or the null's own sd when there are too few people to rescale it."""
    standard_error = (interval[1] - interval[0]) / (2 * norm.ppf(0.5 + confidence / 2))
    se = comparison_se(null, n_forget, n_reference)
    return max(se if se > 0 else null.sd, standard_error)


def measure(
    name: str,
    description: str,
    forget: Sequence[float],
    forget_people: Sequence[str],
    reference: Sequence[float],
    reference_people: Sequence[str],
    *,
    statistic: str,
    sided: Sided,
    margin: float,
    n_splits: int,
    n_resamples: int,
    confidence: float,
    seed: int,
    alpha: float = 0.05,
    power: float = 0.95,
    margin_max: float | None = None,
    p_override: tuple[float, str] | None = None,
    note: str = "",
) -> Check:
    """A :class:`Check` (without its verdict) from per-item values of both sides: the observed
    statistic, its null from reference splits, its interval over people, its p-value
    (``p_override``: a (p, test name) pair from another test, e.g. dataset inference's t-test)
    and the margin a PASS is judged at (:func:`pass_margin`; ``margin`` when ``margin_max`` is
    None)."""
    if statistic not in _STATISTICS:
        raise UsageError(f"unknown statistic {statistic!r}; use one of {tuple(_STATISTICS)}")
    f, r = np.asarray(forget, dtype=float), np.asarray(reference, dtype=float)
    if len(f) == 0 or len(r) == 0:
        return Check.skip(name, description, "no items on one side")
    fn = _STATISTICS[statistic]
    observed = fn(f, forget_people, r, reference_people)
    null = null_from_splits(fn, r, reference_people, n_splits=n_splits, seed=seed)
    if statistic == "auc":
        iv = auc_interval([f], forget_people, [r], reference_people, seed=seed, confidence=confidence)
        interval = (iv.low, iv.high)
        forget_value, reference_value = float(f.mean()), float(r.mean())
    else:
        interval = difference_interval(
            f, forget_people, r, reference_people, confidence=confidence, n_resamples=n_resamples, seed=seed
        )
        forget_value = float(per_person(f, forget_people)[1].mean())
        reference_value = float(per_person(r, reference_people)[1].mean())
    n_f, n_r = len(set(forget_people)), len(set(reference_people))
    scale = test_scale(null, n_f, n_r, interval, confidence)
    p, test = p_override if p_override is not None else (p_value(observed, null, sided, scale=scale), Check.test)
    wide = margin if margin_max is None else pass_margin(null, n_f, n_r, margin, alpha=alpha, power=power,
                                                         margin_max=margin_max)  # fmt: skip
    return Check(
        name=name, description=description, statistic=statistic, sided=sided, margin=margin, observed=observed,
        forget_value=forget_value, reference_value=reference_value, interval=interval, null=null, p_value=p,
        n_forget=n_f, n_reference=n_r, test=test, note=note, pass_margin=wide,
    )  # fmt: skip


def decide(checks: Sequence[Check], *, alpha: float) -> list[Check]:
    """Holm-adjust the p-values of every measured held-out and dev check (one family; "info"
    checks are judged on their own p-value) and give each its verdict."""
    measured = [i for i, c in enumerate(checks) if c.skipped is None and c.p_value is not None]
    family = [i for i in measured if checks[i].role != "info"]
    adjusted = dict(zip(family, holm([checks[i].p_value for i in family]), strict=True))  # type: ignore[misc]
    out = list(checks)
    for i in measured:
        c = checks[i]
        p = adjusted.get(i, c.p_value)
        assert c.interval is not None and c.deviation is not None and p is not None
        iv = (c.interval[0] - c.center, c.interval[1] - c.center)
        judged = verdict(c.deviation, iv, c.margin, p, sided=c.sided, alpha=alpha, pass_margin=c.pass_margin)
        out[i] = c.with_(p_holm=adjusted.get(i), verdict=judged)
    return out
