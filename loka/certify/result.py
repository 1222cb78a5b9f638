"""One check of a certificate (:class:`Check`) and the null it is read against (:class:`Null`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

__all__ = ["Verdict", "Sided", "Role", "Null", "Check"]

Verdict = Literal["PASS", "FAIL", "INCONCLUSIVE"]
Sided = Literal["two-sided", "greater"]
Role = Literal["held-out", "dev", "info"]


@dataclass(frozen=True)
class Null:
    """The statistic between two random halves of the reference people, over ``n_splits`` splits:
    its mean (``center``: what "no difference" looks like for this attack, measured, not assumed),
    standard deviation and central 95% range."""

    center: float
    sd: float
    low: float
    high: float
    n_splits: int


@dataclass(frozen=True)
class Check:
    """One check: forget against reference inside the edited model (or, for collateral damage,
    AFTER against BEFORE on retain facts).

    ``observed`` is the statistic (``statistic``: a difference of per-person means, forget minus
    reference, or a ROC AUC with the forget texts as the positive class); ``interval`` its
    bootstrap interval over people; ``null`` the same statistic between halves of the reference
    people; ``deviation`` = observed - null centre. ``sided``: "two-sided" (too familiar and too
    unfamiliar both give the forget set away) or "greater" (only a forget set *above* the
    reference fails). ``p_value`` tests "no deviation" (normal tail of the null's spread, or the
    named test); ``p_holm`` is Holm-adjusted over every check of the certificate. ``role``:
    held-out (counts), dev (the method could have trained against it) or info (never counts).
    ``margin`` bounds a FAIL (a shown difference beyond it), ``pass_margin`` (None: ``margin``) a
    PASS (see :mod:`loka.certify.statistics`).
    A skipped check has ``skipped`` (why) and no numbers."""

    name: str
    description: str
    statistic: Literal["difference", "auc"] = "difference"
    sided: Sided = "two-sided"
    margin: float = 0.0
    pass_margin: float | None = None
    observed: float | None = None
    forget_value: float | None = None
    reference_value: float | None = None
    interval: tuple[float, float] | None = None
    null: Null | None = None
    p_value: float | None = None
    p_holm: float | None = None
    verdict: Verdict | None = None
    role: Role = "held-out"
    n_forget: int = 0
    n_reference: int = 0
    test: str = "normal tail of the reference-split null"
    skipped: str | None = None
    note: str = ""

    @property
    def center(self) -> float:
        return 0.0 if self.null is None else self.null.center

    @property
    def deviation(self) -> float | None:
        return None if self.observed is None else self.observed - self.center

    @property
    def equivalence_margin(self) -> float:
        """The margin a PASS of this check is judged at."""
        return self.margin if self.pass_margin is None else self.pass_margin

    @property
    def counts(self) -> bool:
        """Whether this check counts toward the certificate's overall verdict."""
        return self.role == "held-out" and self.skipped is None

    def with_(self, **changes: Any) -> Check:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["deviation"] = self.deviation
        return data

    @classmethod
    def skip(cls, name: str, description: str, reason: str) -> Check:
        return cls(name=name, description=description, skipped=reason)
