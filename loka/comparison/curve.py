"""LOKA's budget curve: how much it forgets and keeps as it may change more components.

For every size on a grid (a fraction of all neurons, or of neurons and heads) LOKA runs twice
under one :class:`loka.methods.Budget`: on the located components and on random components of
the same count per layer (:func:`loka.methods.localized.localization.control_mask`), once per method seed. Each
run is scored on the protocol's forget facts (the prompts it was given), retain-eval people (that
no method trains on) and the forget facts in the other wordings (``paraphrase_eval``), and
records how many parameters it changed. Numbers are means with 95% intervals over people and
seeds (:mod:`loka.evaluation.intervals`).

    curve = budget_curve(model, protocol, sizes=(0.0025, 0.01, 0.05), seeds=3)
    print(curve.table())
    curve.plot().show()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from loka.base.errors import UsageError
from loka.evaluation.intervals import Interval, mean_interval, per_person
from loka.methods.budget import Budget
from loka.methods.localized.config import SIZES
from loka.methods.registry import method_config, unlearn
from loka.protocol import Protocol
from loka.scoring.metrics import score_facts

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["BudgetCurve", "CurvePoint", "budget_curve", "CURVE_METRICS"]

# answer-token accuracy on: the forget prompts given, retain-eval people, the forget facts in other wordings
CURVE_METRICS = ("forget", "retain", "para")


@dataclass(frozen=True)
class CurvePoint:
    """One run: size, where, seed, what it changed, and per-person accuracies per metric."""

    size: float
    location: str
    seed: int
    parameters: int
    parameter_fraction: float
    steps: int
    people: Mapping[str, tuple[str, ...]]  # metric -> people (order of values)
    values: Mapping[str, tuple[float, ...]]  # metric -> each person's accuracy

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size, "location": self.location, "seed": self.seed, "parameters": self.parameters,
            "parameter_fraction": self.parameter_fraction, "steps": self.steps,
            "people": {k: list(v) for k, v in self.people.items()},
            "values": {k: list(v) for k, v in self.values.items()},
        }  # fmt: skip


@dataclass(frozen=True)
class BudgetCurve:
    """Every run of the curve; ``interval(size, location, metric)`` summarises over seeds and people."""

    points: tuple[CurvePoint, ...]

    @property
    def sizes(self) -> list[float]:
        return sorted({p.size for p in self.points})

    @property
    def metrics(self) -> list[str]:
        return [m for m in CURVE_METRICS if self.points and m in self.points[0].people]

    @property
    def locations(self) -> list[str]:
        return list(dict.fromkeys(p.location for p in self.points))

    def _runs(self, size: float, location: str) -> list[CurvePoint]:
        return [p for p in self.points if p.size == size and p.location == location]

    def interval(self, size: float, location: str, metric: str) -> Interval:
        if metric not in CURVE_METRICS:
            raise UsageError(f"metric must be one of {', '.join(CURVE_METRICS)}, got {metric!r}")
        runs = self._runs(size, location)
        if not runs:
            raise UsageError(f"no run at size {size} on {location!r} components")
        people = [p for p in runs[0].people[metric] if all(p in r.people[metric] for r in runs)]
        tables = [dict(zip(r.people[metric], r.values[metric], strict=True)) for r in runs]
        return mean_interval([[t[p] for p in people] for t in tables])

    def parameter_fraction(self, size: float, location: str) -> float:
        return float(np.mean([p.parameter_fraction for p in self._runs(size, location)]))

    def table(self) -> str:
        """One line per size and location: % components, % parameters, then forget / retain / para."""
        header = f"{'size':>7} {'where':<9}{'%param':>8}{'steps':>7}" + "".join(f"{m:>19}" for m in self.metrics)
        lines = [header, "-" * len(header)]
        for size in self.sizes:
            for location in self.locations:
                if not self._runs(size, location):
                    continue
                cells = "".join(
                    f"{format(self.interval(size, location, m), '.2f').replace(', ', ','):>19}" for m in self.metrics
                )
                steps = np.mean([p.steps for p in self._runs(size, location)])
                share = 100 * self.parameter_fraction(size, location)
                lines.append(f"{100 * size:>6.2f}% {location:<9}{share:>8.2f}{steps:>7.0f}{cells}")
        lines.append("size: share of components; mean [95% interval] over people and method seeds.")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"points": [p.to_dict() for p in self.points]}

    def plot(self) -> go.Figure:
        """Forget, retain and paraphrase accuracy against the share of parameters changed, located
        vs random, with 95% intervals."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        metrics = self.metrics
        figure = make_subplots(rows=1, cols=len(metrics), subplot_titles=metrics, shared_yaxes=True)
        colours = {"located": "#1f77b4", "random": "#d62728"}
        for col, metric in enumerate(metrics, start=1):
            for location in self.locations:
                sizes = [s for s in self.sizes if self._runs(s, location)]
                intervals = [self.interval(s, location, metric) for s in sizes]
                figure.add_trace(
                    go.Scatter(
                        x=[100 * self.parameter_fraction(s, location) for s in sizes],
                        y=[i.mean for i in intervals],
                        error_y={
                            "type": "data",
                            "symmetric": False,
                            "array": [i.high - i.mean for i in intervals],
                            "arrayminus": [i.mean - i.low for i in intervals],
                        },  # fmt: skip
                        mode="lines+markers",
                        name=location,
                        legendgroup=location,
                        showlegend=col == 1,
                        line={"color": colours.get(location)},
                    )  # fmt: skip
                )
            figure.update_xaxes(title_text="% of parameters changed", type="log", row=1, col=col)
        figure.update_yaxes(title_text="accuracy", range=[0, 1.05], row=1, col=1)
        figure.update_layout(title="LOKA budget curve: located vs random components", height=380)
        return figure


def _per_person(model: Any, knowledge: Any) -> tuple[tuple[str, ...], tuple[float, ...]]:
    scores = score_facts(model, knowledge)
    correct = (scores.n_correct_tokens / scores.n_target_tokens.clamp(min=1)).tolist()
    people, values = per_person(correct, [f.subject or f.id for f in knowledge])
    return tuple(people), tuple(float(v) for v in values)


def check_sizes(sizes: Any) -> None:
    """Curve sizes: a non-empty list of fractions in (0, 1]."""
    if (
        isinstance(sizes, str | float | int)
        or not sizes
        or any(isinstance(s, bool) or not isinstance(s, float) or not 0 < s <= 1 for s in sizes)
    ):
        raise UsageError(f"sizes must be fractions in (0, 1], got {sizes!r}")


def budget_curve(
    model: Any,
    protocol: Protocol,
    *,
    sizes: Sequence[float] = SIZES,
    seeds: int | Sequence[int] = 3,
    locations: Sequence[str] = ("located", "random"),
    budget: Budget | None = None,
    options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> BudgetCurve:
    """Run LOKA at every size in ``sizes`` on each of ``locations`` for each seed (see the module docstring)."""
    check_sizes(sizes)
    bad = [x for x in locations if x not in ("located", "random", "least", "complement")]
    if not locations or bad:
        raise UsageError(f"locations must be among 'located', 'random', 'least', 'complement', got {list(locations)!r}")
    run_seeds = list(range(seeds)) if isinstance(seeds, int) and not isinstance(seeds, bool) else list(seeds)
    if not run_seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in run_seeds):
        raise UsageError(f"seeds must be a positive count or a list of non-negative integers, got {seeds!r}")
    options = dict(options or {})
    clash = sorted({"size", "location", "location_seed"} & set(options))
    if clash:
        raise UsageError(f"options may not set {clash[0]!r}: the curve sets it")
    method_config("loka", **options)  # a bad option fails here, before any run
    jobs = [(size, location, seed) for size in sizes for location in locations for seed in run_seeds]
    points = []
    for size, location, seed in tqdm(jobs, desc="budget curve", disable=not progress, leave=False):
        result = unlearn(
            model, protocol.forget, protocol.retain_train, method="loka", validation=protocol.retain_validation,
            reference=protocol.reference, augment=protocol.augment, budget=budget or Budget(), seed=seed,
            progress=False, size=size, location=location, location_seed=seed, **options,
        )  # fmt: skip
        sets = {"forget": protocol.forget, "retain": protocol.retain_eval, "para": protocol.paraphrase_eval}
        scored = {k: _per_person(result.model, ks) for k, ks in sets.items() if ks is not None}
        chosen = result.config["chosen"]
        points.append(
            CurvePoint(
                size,
                location,
                seed,
                chosen["parameters"],
                chosen["parameter_fraction"],
                int(chosen["steps"]),
                {k: v[0] for k, v in scored.items()},
                {k: v[1] for k, v in scored.items()},
            )  # fmt: skip
        )
    return BudgetCurve(tuple(points))
