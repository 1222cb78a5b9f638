"""One honest verdict (issue 24, part 4), on hand-built evaluations (no model is trained).

The comparison's verdicts read every seed of a method (not the first seed's evaluation), meet a
control on the seeds it ran (and a control has every seed by default), say "not shown" where two
intervals overlap (overlap fails to show a difference; it does not show that there is none), and
never draw anything from a check that cannot tell the original from the oracle, or that has no
oracle to be calibrated against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from loka.comparison import Comparison
from loka.comparison import running as running_module
from loka.comparison.outcomes import CALIBRATED, MethodOutcome
from loka.evaluation import cache as cache_module
from loka.evaluation.intervals import Interval, compare_intervals
from loka.evaluation.result import UnlearningEvaluation
from loka.methods.result import UnlearningResult

FORGET = tuple(f"f{i}" for i in range(10))  # forget people, one fact each
RETAIN = tuple(f"r{i}" for i in range(10))
OTHERS = tuple(f"n{i}" for i in range(10))  # MIA non-members


def ev(forget: float | Sequence[float], *, retain: float = 0.95, relearn: float | None = None,
       mia: float = 0.5, label: str = "m") -> UnlearningEvaluation:  # fmt: skip
    """An evaluation whose per-person values are given: ``forget`` per person (or one value for
    all), retain and relearning accuracy for everyone, and membership scores with an AUC of ``mia``
    (members score 1 against a share ``mia`` of non-members scoring 0, the rest 2)."""
    values = [forget] * len(FORGET) if isinstance(forget, int | float) else list(forget)
    below = round(mia * len(OTHERS))
    details: dict[str, Any] = {
        "forget": (FORGET, tuple(values)),
        "retain": (RETAIN, (retain,) * len(RETAIN)),
        "mia.loss.members": (FORGET, (1.0,) * len(FORGET)),
        "mia.loss.nonmembers": (OTHERS, (0.0,) * below + (2.0,) * (len(OTHERS) - below)),
    }
    if relearn is not None:
        details["relearning"] = (FORGET, (relearn,) * len(FORGET))
    mean = sum(values) / len(values)
    return UnlearningEvaluation(mean, retain, mia, mean, retain, None, {"loss": mia}, label=label, details=details)


def comparison(*outcomes: MethodOutcome, oracle: bool = True, relearn: tuple[float, float] = (1.0, 0.0)) -> Comparison:
    """original (knows everything; relearns to ``relearn[0]``, MIA 1.0), the oracle (forgets,
    relearns to ``relearn[1]``, MIA 0.5), then ``outcomes``."""
    rows = [MethodOutcome("original", (ev(1.0, relearn=relearn[0], mia=1.0, label="original"),))]
    if oracle:
        rows.append(MethodOutcome("oracle", (ev(0.0, relearn=relearn[1], mia=0.5, label="oracle"),)))
    return Comparison(tuple(rows) + outcomes)


def test_overlapping_intervals_read_not_shown():
    a, b, c = Interval(0.5, 0.4, 0.6), Interval(0.55, 0.45, 0.7), Interval(0.9, 0.8, 1.0)
    assert compare_intervals(a, b) == "not shown" and compare_intervals(a, c) == "lower"
    method = MethodOutcome("m", (ev(0.02), ev(0.0)), controls=(ev(0.01), ev(0.03)))
    done = comparison(method)
    verdict = done.verdicts()["m"]
    assert "Against its random control (2 seeds): forget not shown (0.01 vs 0.02)" in verdict
    assert "forget lower (0.01 vs 0.02)" not in verdict and "no difference" not in verdict
    assert "a difference is not shown" in done.table()


def test_the_method_verdict_reads_every_seed_not_the_first():
    """Seed 0 forgot everything; seeds 1 and 2 forgot nothing. The first seed's evaluation says
    excellent; the row and the verdict read all three seeds and say insufficient."""
    method = MethodOutcome("m", (ev(0.0), ev(1.0), ev(1.0)))
    done = comparison(method)
    assert method.evaluation.forget_quality == "excellent"
    assert method.forget_quality() == "insufficient"
    assert [q for label, *_, q in done.rows() if label == "m"] == ["insufficient"]
    verdict = done.verdicts()["m"]
    assert verdict.startswith("Over 3 seeds: forget quality insufficient (forget 0.67, retain 0.95).")
    assert "excellent" not in verdict


def test_a_finding_needs_every_seed_and_an_informative_check():
    """Relearning brings the facts back in seed 0 only: the seed-0 evaluation would call the method
    relearnable; over all seeds the interval meets the oracle's, so nothing is claimed. When every
    seed relearns, the verdict says so."""
    once = MethodOutcome("once", (ev(0.0, relearn=1.0), ev(0.0, relearn=0.0), ev(0.0, relearn=0.0)))
    always = MethodOutcome("always", (ev(0.0, relearn=1.0), ev(0.0, relearn=1.0), ev(0.0, relearn=1.0)))
    verdicts = comparison(once, always).verdicts()
    assert "relearnable" not in verdicts["once"] and "relearn not shown" in verdicts["once"]
    assert (
        "Still detectable, intervals apart from the oracle's: relearnable (relearn 1.00 vs oracle 0.00)"
        in (verdicts["always"])
    )


def test_no_verdict_is_drawn_from_an_uninformative_check():
    """The original relearns no more than the oracle: the relearning attack cannot tell a model
    that knows from one that never saw, so a method that 'relearns' gets no verdict from it,
    the table blanks the column, and the verdict says why it was skipped."""
    method = MethodOutcome("m", (ev(0.0, relearn=1.0), ev(0.0, relearn=1.0)))
    loka = MethodOutcome("loka", (ev(0.0, relearn=1.0), ev(0.0, relearn=1.0)))
    control = MethodOutcome("loka @random", (ev(0.0, relearn=0.0), ev(0.0, relearn=0.0)))
    done = comparison(method, loka, control, relearn=(0.2, 0.2))
    assert done.informative()["relearn"] is False
    assert done.unusable()["relearn"].startswith("uninformative")
    verdict = done.verdicts()["m"]
    assert "relearnable" not in verdict and "relearn higher" not in verdict
    assert "No verdict drawn from relearn (uninformative: the original and the oracle are not apart on it)" in verdict
    assert all(numbers["relearn"] is None for _, numbers, *_ in done.rows())
    located = done.localization()["loka @random"]
    assert "relearn 1.00" not in located.split("No verdict")[0] and "No verdict drawn from relearn" in located


def test_without_an_oracle_no_calibrated_check_gives_a_verdict():
    """No oracle: membership inference and relearning are not calibrated. Their numbers stay in
    the table with a line that says so, and no verdict (method or localization) uses them."""
    loka = MethodOutcome("loka", (ev(0.0, relearn=1.0, mia=0.9),))
    control = MethodOutcome("loka @random", (ev(0.0, relearn=0.0, mia=0.5),))
    done = comparison(loka, control, oracle=False)
    assert set(done.unusable()) == set(CALIBRATED)
    assert all(reason == "not calibrated: no oracle" for reason in done.unusable().values())
    assert "not calibrated (no oracle): MIA, relearn; shown, but no verdict is drawn from them." in done.table()
    assert next(numbers for label, numbers, *_ in done.rows() if label == "loka")["MIA"] is not None
    located = done.localization()["loka @random"]
    assert located.startswith("The located components were not shown to differ from random components")
    assert "Worse: none" in located and "No verdict drawn from relearn (not calibrated: no oracle); MIA" in located
    assert "No verdict drawn from MIA (not calibrated: no oracle); relearn (not calibrated" in done.verdicts()["loka"]
    assert done.to_dict()["no_verdict_from"] == done.unusable()
    assert done.report().uncalibrated == list(done.unusable())


def test_a_control_is_met_on_the_seeds_it_ran():
    """A method of three seeds with a control on the first only (``control_seeds=1``): the control
    row says so, and the verdict compares the method's first seed with it, not all three. The
    localization verdict does the same for a location row of one seed."""
    runs = (ev(0.9), ev(0.1), ev(0.1))
    method = MethodOutcome("m", runs, controls=(ev(0.9),))
    loka = MethodOutcome("loka", runs)
    located = MethodOutcome("loka @random", (ev(0.9),))
    done = comparison(method, loka, located)
    assert [label for label, *_ in done.rows()][3] == "  random control (1 of 3 seeds)"
    assert "Against its random control (1 seed): forget not shown (0.90 vs 0.90)" in done.verdicts()["m"]
    assert "1 seed each" in done.localization()["loka @random"]
    assert "forget 0.90 vs 0.90" in done.localization()["loka @random"]


def test_localization_mia_is_judged_by_meeting_the_oracles_interval():
    """Located MIA 0.5 (the oracle's), random 1.0: the located set is better on MIA; the other
    way round it is worse; two MIAs both away from the oracle's are not a verdict."""
    near, far = ev(0.0, mia=0.5), ev(0.0, mia=1.0)
    better = comparison(MethodOutcome("loka", (near,)), MethodOutcome("loka @random", (far,)))
    worse = comparison(MethodOutcome("loka", (far,)), MethodOutcome("loka @random", (near,)))
    assert "Better: MIA 0.50 vs 1.00" in better.localization()["loka @random"]
    assert "Worse: MIA 1.00 vs 0.50" in worse.localization()["loka @random"]


def test_compare_gives_every_seed_a_control_and_every_location_row_every_seed(monkeypatch):
    """By default a control row has as many seeds as its method, and so does a location row
    (the runs are stubs: this checks which jobs compare makes, not what they compute)."""
    calls: list[tuple[str, int, bool]] = []

    def run(model, job, protocol, budget, common, oracle, progress):
        name, method, _, seed, with_control = job
        calls.append((name, seed, with_control))
        result = UnlearningResult(None, method, {"seed": seed}, 0.0)
        return result, ev(0.0, label=name), (ev(0.5, label=f"{name} control") if with_control else None)

    monkeypatch.setattr(running_module, "_run", run)
    monkeypatch.setattr(running_module, "evaluate", lambda model, **kwargs: ev(1.0, label=kwargs["label"]))
    monkeypatch.setattr(cache_module, "evaluate", lambda model, **kwargs: ev(1.0, label=kwargs["label"]))

    class Protocol:  # what compare reads from a protocol besides passing it on
        forget = retain_train = retain_validation = retain_eval = None

        def sizes(self) -> dict[str, int]:
            return {}

        def describe(self) -> str:
            return ""

    protocol = Protocol()
    done = running_module.compare(
        object(), protocol=protocol, methods=("loka", "task_vector"), seeds=3, attribute=False, probe=False,
        progress=False,
    )  # fmt: skip
    assert done.names == ["original", "loka", "task_vector", "loka @random"]
    assert len(done["task_vector"].controls) == len(done["task_vector"].runs) == 3
    assert len(done["loka @random"].runs) == len(done["loka"].runs) == 3
    assert not done["loka"].controls  # LOKA's controls are its location rows
    assert sorted(seed for name, seed, control in calls if control) == [0, 1, 2]
    with pytest.raises(ValueError, match="control_seeds must be a non-negative integer or None"):
        running_module.compare(object(), protocol=protocol, methods=("task_vector",), control_seeds=-1)


def test_a_column_a_method_trained_against_is_marked_and_gives_it_no_verdict():
    """LOKA's erase="subject" optimises the whole-text loss (the MIA column's statistic) and its
    adversary a relearning step: its own numbers there are starred and no verdict of its is drawn
    from them; a method that trained against neither keeps both."""
    loka = MethodOutcome(
        "loka", (ev(0.0, relearn=0.0, mia=0.5),), configs=({"erase": "subject", "adversary_weight": 1.0},)
    )
    npo = MethodOutcome("npo", (ev(0.0, relearn=0.0, mia=0.5),), configs=({"beta": 0.1},))
    done = comparison(loka, npo)
    assert loka.trained_against == ("MIA", "relearn") and npo.trained_against == ()
    assert done.to_dict()["outcomes"][2]["trained_against"] == ["MIA", "relearn"]
    rows = {line[:17].strip(): line for line in done.table().splitlines()}  # the label column is 17 wide
    assert rows["loka"].count("*") == 2 and "*" not in rows["npo"]
    assert "* the method trained against this statistic" in done.table()
    verdicts = done.verdicts()
    assert "MIA (the method trained against it)" in verdicts["loka"]
    assert "relearn (the method trained against it)" in verdicts["loka"]
    assert "trained against" not in verdicts["npo"]
