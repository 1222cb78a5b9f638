"""Means with 95% intervals over people and seeds, and what counts as "a difference".

Every number of a comparison is a mean over people (the unit the sets are drawn by) and over
method seeds. Its interval comes from :func:`scipy.stats.bootstrap` with the people and the seeds
as two samples resampled independently (a two-level percentile bootstrap): it covers both "other
people of the same kind" and "another run of the method". Two numbers differ only when their
intervals do not overlap; otherwise a report says "not shown": overlapping intervals fail to show
a difference, which is not evidence that there is none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy.stats import bootstrap

from loka.base.errors import UsageError

__all__ = ["Interval", "mean_interval", "auc_interval", "per_person", "compare_intervals", "paired_gap"]

CONFIDENCE = 0.95
N_RESAMPLES = 1000


@dataclass(frozen=True)
class Interval:
    """A mean and its 95% interval; ``n_people`` and ``n_seeds`` say what it is over."""

    mean: float
    low: float
    high: float
    n_people: int = 0
    n_seeds: int = 1

    def __format__(self, spec: str) -> str:
        digits = spec or ".2f"
        return f"{self.mean:{digits}} [{self.low:{digits}}, {self.high:{digits}}]"

    def __str__(self) -> str:
        return format(self)

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def compare_intervals(a: Interval, b: Interval) -> Literal["lower", "higher", "not shown"]:
    """``a`` against ``b``: "lower" or "higher" when the intervals do not overlap, else "not shown"
    (a difference is not shown; it may still exist)."""
    if a.overlaps(b):
        return "not shown"
    return "lower" if a.mean < b.mean else "higher"


def _bootstrap(
    statistic: Callable[..., float], samples: Sequence[np.ndarray], seed: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Percentile interval of ``statistic(*samples)``, resampling each sample of two or more
    observations independently (a sample of one, e.g. a single seed, is held fixed)."""
    free = [i for i, s in enumerate(samples) if len(s) >= 2]
    if not free:
        value = statistic(*samples)
        return value, value

    def partial(*resampled: np.ndarray) -> float:
        full = list(samples)
        for i, r in zip(free, resampled, strict=True):
            full[i] = r
        return statistic(*full)

    result = bootstrap(
        tuple(samples[i] for i in free), partial, vectorized=False, paired=False, n_resamples=N_RESAMPLES,
        confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed),
    )  # fmt: skip
    low, high = result.confidence_interval
    return float(low), float(high)


def per_person(values: Sequence[float], people: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Each person's mean of ``values`` (people in first-seen order)."""
    order = list(dict.fromkeys(people))
    index = {p: i for i, p in enumerate(order)}
    sums, counts = np.zeros(len(order)), np.zeros(len(order))
    for value, person in zip(values, people, strict=True):
        sums[index[person]] += value
        counts[index[person]] += 1
    return order, sums / counts


def mean_interval(matrix: np.ndarray | Sequence[Sequence[float]], *, seed: int = 0) -> Interval:
    """The mean of a ``[seed, person]`` matrix (each cell a person's mean under one seed) and its
    interval, resampling people and seeds independently."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim != 2 or matrix.size == 0:
        raise UsageError(f"expected a non-empty [seed, person] matrix, got shape {matrix.shape}")
    seeds, people = np.arange(matrix.shape[0]), np.arange(matrix.shape[1])

    def statistic(s: np.ndarray, p: np.ndarray) -> float:
        return float(matrix[np.ix_(s.astype(int), p.astype(int))].mean())

    low, high = _bootstrap(statistic, (seeds, people), seed)
    mean = float(matrix.mean())
    return Interval(mean, min(low, mean), max(high, mean), matrix.shape[1], matrix.shape[0])


def auc_interval(
    members: Sequence[Sequence[float]],
    member_people: Sequence[str],
    nonmembers: Sequence[Sequence[float]],
    nonmember_people: Sequence[str],
    *,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Interval:
    """The mean over seeds of a membership attack's ROC AUC, and its interval resampling member
    people, non-member people and seeds. ``members[s][i]`` is seed ``s``'s score of member text
    ``i`` (higher = "member"); the people say whose text each is; ``confidence`` is the
    interval's level (95% by default).

    The AUC is the Mann-Whitney statistic (the share of member-non-member pairs the attack orders
    right, ties half), which equals sklearn's ``roc_auc_score``; it is summed per pair of people
    once, so that each resample costs a small matrix product."""
    members, nonmembers = np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)
    if members.ndim != 2 or nonmembers.ndim != 2 or len(members) != len(nonmembers):
        raise UsageError("members and nonmembers must be [seed, text] arrays with the same number of seeds")
    m_index, n_index = _person_index(member_people), _person_index(nonmember_people)
    m_one_hot = np.eye(m_index.max() + 1)[m_index]  # [text, person]
    n_one_hot = np.eye(n_index.max() + 1)[n_index]
    pairs = []  # per seed: [member person, non-member person] sums of correctly ordered pairs
    for k in range(len(members)):
        ordered = (members[k][:, None] > nonmembers[k][None, :]) + 0.5 * (members[k][:, None] == nonmembers[k][None, :])
        pairs.append(m_one_hot.T @ ordered @ n_one_hot)
    counts = m_one_hot.T @ np.ones((len(m_index), len(n_index))) @ n_one_hot

    def statistic(s: np.ndarray, m: np.ndarray, n: np.ndarray) -> float:
        wm = np.bincount(m.astype(int), minlength=counts.shape[0])
        wn = np.bincount(n.astype(int), minlength=counts.shape[1])
        total = wm @ counts @ wn
        return float(np.mean([wm @ pairs[int(k)] @ wn / total for k in s]))

    samples = (np.arange(len(members)), np.arange(counts.shape[0]), np.arange(counts.shape[1]))
    mean = statistic(*samples)
    low, high = _bootstrap(statistic, samples, seed, confidence)
    return Interval(mean, min(low, mean), max(high, mean), counts.shape[0] + counts.shape[1], len(members))


def _person_index(people: Sequence[str]) -> np.ndarray:
    order = {p: i for i, p in enumerate(dict.fromkeys(people))}
    return np.array([order[p] for p in people], dtype=int)


def paired_gap(
    people: Sequence[str],
    a: Sequence[float],
    b: Sequence[float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """The mean of ``a - b`` over paired items and its one-sided lower confidence bound, from a
    paired bootstrap over people (scipy's, percentile method; a person's items are resampled
    together). The probe, the logit lens and the quantization attack each use it to say whether
    the original reads the forget facts better than the oracle."""
    if not 0 < confidence < 1:
        raise UsageError(f"confidence must be strictly between 0 and 1, got {confidence!r}")
    people_ = np.asarray(people, dtype=object)
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(diff) == 0 or len(people_) != len(diff):
        raise UsageError(
            f"paired_gap needs one person per item and at least one item, got {len(people_)} / {len(diff)}"
        )
    names = sorted(set(people_))
    sums = np.array([diff[people_ == p].sum() for p in names])
    counts = np.array([(people_ == p).sum() for p in names], dtype=float)
    gap = float(sums.sum() / counts.sum())
    if len(names) < 2 or np.allclose(sums / counts, gap):
        return gap, gap  # nothing to resample

    def ratio(s: np.ndarray, n: np.ndarray, axis: int = -1) -> np.ndarray:
        return s.sum(axis=axis) / n.sum(axis=axis)

    result = bootstrap(
        (sums, counts), ratio, paired=True, vectorized=True, n_resamples=n_resamples,
        confidence_level=confidence, alternative="greater", method="percentile", rng=np.random.default_rng(seed),
    )  # fmt: skip
    return gap, float(result.confidence_interval.low)
