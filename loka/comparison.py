"""Every unlearning method under one protocol, judged by one evaluation, with intervals.

:func:`compare` runs the methods under a :class:`loka.protocol.Protocol` (the same sets, the same
:class:`loka.methods.Budget`, several method seeds), evaluates each run beside the exact-retrain
oracle and beside a random control of the same size (:mod:`ablation.control`: the same number of components
per layer for a mask, the same singular values per changed weight tensor for a weight edit), and
returns a :class:`Comparison`: ``.table()`` for the terminal, ``.to_dict()`` for JSON,
``.figures()`` for plotly and ``.save(out_dir)`` for ``comparison.json`` + a self-contained
``report.html`` (:mod:`loka.report`). :func:`compare_testbed` does it on the built-in testbed;
``loka compare`` and ``loka demo`` are the command line for both.

Every number is a mean with a 95% interval over people and seeds (:mod:`loka.intervals`); two
numbers differ only where their intervals do not overlap. The checks that must first tell the
original model from the oracle (membership inference, relearning, probe) are shown only when
they do; otherwise the table says "uninformative".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import attribution
from ablation import AblationMask, random_edit_like
from loka.configs import method_config
from loka.curve import BudgetCurve, budget_curve, check_sizes
from loka.data import KnowledgeSet
from loka.errors import UsageError
from loka.evaluation import UnlearningEvaluation, evaluate
from loka.files import check_output as check_output_dir
from loka.files import json_default as _json_default
from loka.intervals import Interval, auc_interval, compare_intervals, mean_interval, per_person
from loka.localization import LOCATIONS
from loka.methods import METHODS, Budget, Compute, UnlearningResult, unlearn
from loka.models import load_model
from loka.probe import fit_probe
from loka.protocol import Protocol
from loka.report import comparison_figures, write_report

__all__ = ["Comparison", "MethodOutcome", "compare", "compare_testbed", "DEFAULT_METHODS"]

logger = logging.getLogger(__name__)
DEFAULT_METHODS: tuple[str, ...] = ("loka", "gradient_ascent", "npo", "rmu", "task_vector")
FORMAT = "loka-comparison"
JSON_FILE, HTML_FILE = "comparison.json", "report.html"


@dataclass(frozen=True)
class MethodOutcome:
    """One row of the comparison: a method's evaluation under each seed, what each run spent, its
    settings, and the evaluations of its random controls."""

    name: str
    runs: tuple[UnlearningEvaluation, ...]
    computes: tuple[Compute, ...] = ()
    configs: tuple[Mapping[str, Any], ...] = ()
    controls: tuple[UnlearningEvaluation, ...] = ()
    mask: AblationMask | None = None
    seconds: float | None = None  # wall seconds per run (the oracle: its training time)

    @property
    def evaluation(self) -> UnlearningEvaluation:
        """The first seed's evaluation."""
        return self.runs[0]

    @property
    def config(self) -> Mapping[str, Any]:
        return self.configs[0] if self.configs else {}

    def interval(self, column: str, *, controls: bool = False) -> Interval | None:
        """Mean and 95% interval of ``column`` (see :data:`COLUMNS`) over people and seeds
        (computed once per outcome: the bootstrap is the slow part of a table)."""
        cache = self.__dict__.setdefault("_intervals", {})
        if (column, controls) not in cache:
            cache[column, controls] = column_interval(self.controls if controls else self.runs, column)
        return cache[column, controls]

    @property
    def parameter_fraction(self) -> float | None:
        """Mean share of the model's parameters the runs changed (1 for methods that train every
        weight; None for the original and the oracle)."""
        shares = [
            c["chosen"]["parameter_fraction"] for c in self.configs if "parameter_fraction" in c.get("chosen", {})
        ]
        if shares:
            return float(np.mean(shares))
        return 1.0 if self.computes else None

    def compute_summary(self) -> dict[str, float] | None:
        """Mean optimizer steps, forward tokens (millions) and seconds over the runs."""
        if not self.computes:
            return None
        mean = lambda xs: float(np.mean(list(xs)))  # noqa: E731
        return {
            "steps": mean(c.steps for c in self.computes),
            "forward_Mtokens": mean(c.forward_tokens for c in self.computes) / 1e6,
            "backward_Mtokens": mean(c.backward_tokens for c in self.computes) / 1e6,
            "seconds": mean(c.seconds for c in self.computes),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seconds": self.seconds,
            "intervals": {c: (i.to_dict() if (i := self.interval(c)) else None) for c in COLUMNS},
            "control_intervals": (
                {c: (i.to_dict() if (i := self.interval(c, controls=True)) else None) for c in COLUMNS}
                if self.controls
                else None
            ),
            "compute": self.compute_summary(),
            "parameter_fraction": self.parameter_fraction,
            "computes": [c.to_dict() for c in self.computes],
            "configs": [dict(c) for c in self.configs],
            "mask": None if self.mask is None else self.mask.summary(),
            "runs": [r.to_dict() for r in self.runs],
            "controls": [r.to_dict() for r in self.controls],
        }


# column -> (detail key, kind, scalar fallback path); "mean" columns average a per-person value,
# "auc" columns are a membership attack's ROC AUC (members vs non-members, resampled by person)
COLUMNS: dict[str, tuple[str, str, str]] = {
    "forget": ("forget", "mean", "forget_accuracy"),
    "retain": ("retain", "mean", "retain_accuracy"),
    "para": ("paraphrase", "mean", "paraphrase_forget_accuracy"),
    "unseen": ("unseen_wording", "mean", "unseen_wording_forget_accuracy"),
    "MIA": ("mia.loss", "auc", "membership_inference_auc"),
    "MIA ans": ("mia.loss_answer", "auc", "mia_aucs.loss_answer"),
    "relearn": ("relearning", "mean", "relearning.after"),
    "quant8": ("quant.8bit.forget", "mean", "quantization.forget_8bit"),
    "quant4": ("quant.4bit.forget", "mean", "quantization.forget_4bit"),
    "lens": ("logit_lens", "mean", "logit_lens.best"),
    "probe": ("probe", "mean", "probe.forget_accuracy"),
    "extract": ("extraction", "mean", "extraction.exact_match"),
}
# the columns the localization verdict compares (located vs each control)
LOCALIZATION_COLUMNS = ("forget", "retain", "para", "relearn", "MIA")
LOCATION_PREFIX = "loka @"
# checks that must first tell the original from the oracle (else "uninformative")
CALIBRATED = ("MIA", "MIA ans", "relearn", "quant8", "quant4", "lens", "probe")


def metric(evaluation: UnlearningEvaluation | None, path: str) -> float | None:
    """``evaluation``'s number at a dotted ``path`` (``"relearning.after"``), None where absent."""
    value: Any = evaluation
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
    return None if value is None else float(value)


def column_interval(runs: Sequence[UnlearningEvaluation], column: str) -> Interval | None:
    """The mean and 95% interval of one column over ``runs`` (one per seed), by person."""
    if not runs:
        return None
    key, kind, path = COLUMNS[column]
    if kind == "auc":
        members = [r.details.get(f"{key}.members") for r in runs]
        nonmembers = [r.details.get(f"{key}.nonmembers") for r in runs]
        if all(m is not None for m in members) and all(n is not None for n in nonmembers):
            return auc_interval([m[1] for m in members], members[0][0], [n[1] for n in nonmembers], nonmembers[0][0])  # type: ignore[index]
    else:
        details = [r.details.get(key) for r in runs]
        if all(d is not None for d in details):
            tables = [dict(zip(*per_person(d[1], d[0]), strict=True)) for d in details]  # type: ignore[index]
            people = [p for p in tables[0] if all(p in t for t in tables)]
            if people:
                return mean_interval([[t[p] for p in people] for t in tables])
    values = [v for r in runs if (v := metric(r, path)) is not None]
    if not values:
        return None
    return Interval(float(np.mean(values)), float(np.min(values)), float(np.max(values)), 0, len(values))


@dataclass(frozen=True)
class Comparison:
    """The methods' outcomes, first the original model and (when known) the oracle."""

    outcomes: tuple[MethodOutcome, ...]
    scores: attribution.AttributionScores | None = None  # forget-set attribution (the report's heatmaps)
    title: str = "loka comparison"
    sets: Mapping[str, int] = field(default_factory=dict)  # facts (and people) per set
    protocol: str = ""  # the protocol in words
    curve: BudgetCurve | None = None  # LOKA's budget curve, when asked for

    def __getitem__(self, name: str) -> MethodOutcome:
        for outcome in self.outcomes:
            if outcome.name == name:
                return outcome
        raise KeyError(f"no method {name!r} in this comparison; it has {[o.name for o in self.outcomes]}")

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.outcomes]

    def informative(self) -> dict[str, bool | None]:
        """Per calibrated check: does it tell the original from the oracle (their intervals apart)?
        None when there is no oracle to calibrate against."""
        if "oracle" not in self.names or "original" not in self.names:
            return dict.fromkeys(CALIBRATED)
        out: dict[str, bool | None] = {}
        for column in CALIBRATED:
            a, b = self["original"].interval(column), self["oracle"].interval(column)
            out[column] = None if a is None or b is None else not a.overlaps(b)
        return out

    def rows(self) -> list[tuple[str, dict[str, Interval | None], dict[str, float] | None, str]]:
        """(label, interval by column, compute summary, forget quality), with a control row under
        each method that has one. Uncalibrated checks that cannot tell the original from the
        oracle are None in every row."""
        blind = {c for c, ok in self.informative().items() if ok is False}
        rows = []
        for o in self.outcomes:
            numbers = {c: (None if c in blind else o.interval(c)) for c in COLUMNS}
            rows.append((o.name, numbers, o.compute_summary(), o.evaluation.forget_quality))
            if o.controls:
                numbers = {c: (None if c in blind else o.interval(c, controls=True)) for c in COLUMNS}
                rows.append(("  random control", numbers, None, o.controls[0].forget_quality))
        return rows

    def table(self) -> str:
        """The method x metric table: mean [95% interval] over people and seeds. forget / retain /
        para / unseen are first-token accuracies (forget prompts the method was given; retain people
        no method trained on; the forget facts in other wordings the original learned; a wording
        held out of training); MIA is the whole-text LOSS attack's AUC (forget vs never-seen
        people), MIA ans the same on the answer tokens; relearn is the worst case of the relearning
        attack; quant8 / quant4 the forget accuracy after rounding the weights to 8 / 4 bits; lens
        the logit lens's best-layer readout of the forget answers; probe the residual probe's
        readout; then optimizer steps, forward tokens, seconds per run and the percentage of the
        model's parameters the method changed. Rows
        ``loka @random`` etc. are LOKA's localization controls (:mod:`loka.localization`)."""
        rows = self.rows()
        columns = [c for c in COLUMNS if any(r[1][c] is not None for r in rows)]
        blind = [c for c, ok in self.informative().items() if ok is False]
        width = 17
        header = f"{'method':<17}" + "".join(f"{c:>{width}}" for c in columns)
        header += f"{'steps':>7}{'Mtok':>8}{'sec':>7}{'%par':>7}"
        lines = [self.title, header, "-" * len(header)]
        shares = {o.name: o.parameter_fraction for o in self.outcomes}
        for label, numbers, compute, _ in rows:
            cells = "".join(
                f"{format(v, '.2f').replace(', ', ','):>{width}}" if v is not None else f"{'-':>{width}}"
                for c, v in numbers.items()
                if c in columns
            )
            if compute is not None:
                cells += f"{compute['steps']:>7.0f}{compute['forward_Mtokens']:>8.2f}{compute['seconds']:>7.1f}"
                if shares.get(label) is not None:
                    cells += f"{100 * shares[label]:>7.1f}"
            lines.append(f"{label:<17}{cells}")
        if blind:
            lines.append(
                f"uninformative here (the original and the oracle are not apart): {', '.join(blind)}; not shown."
            )
        lines.append("mean [95% interval] over people and method seeds; intervals that overlap mean no difference.")
        return "\n".join(lines)

    def verdicts(self) -> dict[str, str]:
        """Each method in words: against the oracle and against its random control, column by
        column, a difference only where the intervals do not overlap."""
        out = {}
        oracle = self["oracle"] if "oracle" in self.names else None
        blind = {c for c, ok in self.informative().items() if ok is False}
        for o in self.outcomes:
            parts = [o.evaluation.verdict()]
            if oracle is not None and o.name not in ("oracle",):
                parts.append("Against the oracle: " + _differences(o, oracle, blind) + ".")
            if o.controls:
                parts.append("Against its random control: " + _differences(o, o, blind, controls=True) + ".")
            out[o.name] = " ".join(parts)
        return out

    def localization(self) -> dict[str, str]:
        """For every localization control row (``loka @random`` ...), in words: did the located
        set beat it at equal budget on forget, retain, para, relearn and MIA (lower forget, para,
        relearn and |MIA - oracle MIA| is better; higher retain)? A difference only where the
        intervals do not overlap."""
        if "loka" not in self.names:
            return {}
        located = self["loka"]
        blind = {c for c, ok in self.informative().items() if ok is False}
        oracle_mia = self["oracle"].interval("MIA") if "oracle" in self.names else None
        out = {}
        for o in self.outcomes:
            if not o.name.startswith(LOCATION_PREFIX):
                continue
            won, lost, same = [], [], []
            for column in LOCALIZATION_COLUMNS:
                x, y = located.interval(column), o.interval(column)
                if column in blind or x is None or y is None:
                    continue
                relation = compare_intervals(x, y)
                if column == "MIA" and oracle_mia is not None and relation != "no difference":
                    better = abs(x.mean - oracle_mia.mean) < abs(y.mean - oracle_mia.mean)
                elif relation != "no difference":
                    better = (relation == "higher") == (column == "retain")
                text = f"{column} {x.mean:.2f} vs {y.mean:.2f}"
                if relation == "no difference":
                    same.append(text)
                else:
                    (won if better else lost).append(text)
            share = (located.parameter_fraction or 0.0, o.parameter_fraction or 0.0)
            verdict = (
                "beat"
                if won and not lost
                else "lost to"
                if lost and not won
                else "tied with"
                if not won
                else "mixed against"
            )
            out[o.name] = (
                f"The located components {verdict} {o.name.removeprefix(LOCATION_PREFIX)} components "
                f"({100 * share[0]:.1f}% vs {100 * share[1]:.1f}% of parameters changed). "
                f"Better: {'; '.join(won) or 'none'}. Worse: {'; '.join(lost) or 'none'}. "
                f"No difference: {'; '.join(same) or 'none'}."
            )
            spent = (located.compute_summary(), o.compute_summary())
            if spent[0] is not None and spent[1] is not None:
                out[o.name] += (
                    f" Compute to stop: {spent[0]['steps']:.0f} vs {spent[1]['steps']:.0f} steps, "
                    f"{spent[0]['seconds']:.0f} vs {spent[1]['seconds']:.0f} s (mean over seeds)."
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "localization": self.localization(),
            "title": self.title,
            "protocol": self.protocol,
            "sets": dict(self.sets),
            "informative": self.informative(),
            "outcomes": [o.to_dict() for o in self.outcomes],
            "top_components": [c.label for c in self.scores.top(20)] if self.scores is not None else None,
            "curve": None if self.curve is None else self.curve.to_dict(),
        }

    def figures(self) -> dict[str, Any]:
        """Plotly figures: ``"metrics"`` (bars with intervals per method), ``"relearning"``
        (accuracy of the held-out forget half during the relearning attack), and the attribution
        heatmaps (``"heads"``, ``"neurons"``) when scores are attached."""
        return comparison_figures(self)

    def save(self, out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write ``comparison.json`` and ``report.html`` into ``out_dir`` (created). An existing
        ``out_dir`` is an error unless ``overwrite`` and it holds an earlier comparison."""
        out = Path(out_dir).expanduser()
        check_output_dir(out, overwrite=overwrite, marker=JSON_FILE)
        out.mkdir(parents=True, exist_ok=True)
        (out / JSON_FILE).write_text(json.dumps(self.to_dict(), indent=1, default=_json_default) + "\n")
        write_report(self, out / HTML_FILE)
        return out


def _differences(a: MethodOutcome, b: MethodOutcome, blind: set[str], *, controls: bool = False) -> str:
    words = []
    for column in COLUMNS:
        if column in blind:
            continue
        x, y = a.interval(column), b.interval(column, controls=controls)
        if x is None or y is None:
            continue
        relation = compare_intervals(x, y)
        words.append(f"{column} {'no difference' if relation == 'no difference' else relation}"
                     f" ({x.mean:.2f} vs {y.mean:.2f})")  # fmt: skip
    return "; ".join(words) if words else "nothing to compare"


def _control(model: Any, result: UnlearningResult, seed: int) -> Any:
    return random_edit_like(model, result.model, seed=seed)


_Job = tuple[str, str, dict[str, Any], int, bool]  # row name, method, options, seed, with a control


def _run(
    model: Any,
    job: _Job,
    protocol: Protocol,
    budget: Budget,
    common: Mapping[str, Any],
    oracle: UnlearningEvaluation | None,
    progress: bool,
) -> tuple[UnlearningResult, UnlearningEvaluation, UnlearningEvaluation | None]:
    """One method run and its evaluation (and its random control's); the result without its model."""
    name, method, method_options, run_seed, with_control = job
    if isinstance(model, str | Path):  # in a worker process
        torch.set_num_threads(1)
        model = load_model(model)
    logger.info("running %s (seed %d)", name, run_seed)
    result = unlearn(
        model, protocol.forget, protocol.retain_train, method=method, validation=protocol.retain_validation,
        reference=protocol.reference, augment=protocol.augment, budget=budget, seed=run_seed,
        progress=progress, **method_options,
    )  # fmt: skip
    evaluation = evaluate(result.model, **common, oracle=oracle, seen=result.seen, label=name)
    controlled = (
        evaluate(_control(model, result, run_seed), **common, label=f"{name} control") if with_control else None
    )
    return dataclasses.replace(result, model=None), evaluation, controlled


def compare(
    model: Any,
    *,
    protocol: Protocol | None = None,
    forget: KnowledgeSet | None = None,
    retain: KnowledgeSet | None = None,
    holdout: KnowledgeSet | None = None,
    oracle: Any = None,
    oracle_seconds: float | None = None,
    passages: KnowledgeSet | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    budget: Budget | None = None,
    seeds: int | Sequence[int] = 3,
    control_seeds: int = 1,
    control: bool = True,
    locations: Sequence[str] | None = None,
    location_seeds: int | None = None,
    curve: Sequence[float] | None = None,
    probe: bool = True,
    relearn: bool = True,
    attribute: bool = True,
    seed: int = 0,
    progress: bool = True,
    workers: int = 1,
    title: str = "loka comparison",
) -> Comparison:
    """Run ``methods`` on ``model`` (a TransformerBridge or a directory) under one protocol and
    evaluate each run.

    The sets come from ``protocol`` (:class:`loka.protocol.Protocol`), or are built from
    ``forget`` / ``retain`` / ``holdout`` (and ``passages``) with :meth:`Protocol.from_sets`
    (seeded by ``seed``). Every method gets the same sets, the same ``budget`` (:class:`Budget`:
    the stopping rule) and runs once per method seed (``seeds``: a count or the seeds
    themselves); each number is then a mean with a 95% interval over people and seeds.
    ``oracle`` (a model directory or model trained without ``forget``) is evaluated once and is
    every row's yardstick; ``oracle_seconds`` (its training time) goes in its row. ``options``
    maps a method name to its options for :func:`loka.unlearn`. ``variants`` adds rows of a method
    with other options, by row name (``{"loka subject": {"erase": "subject"}}``: the method is
    ``"loka"`` unless a ``"method"`` key names another; the options go on top of that method's
    ``options``), under the same sets, budget and seeds. ``control`` adds, for the first
    ``control_seeds`` runs of every method, the evaluation of a random edit of the same size
    (same singular values, random directions). ``locations`` (default: ``("random",)`` when LOKA
    is among the methods) adds LOKA's localization controls
    (:data:`loka.localization.LOCATIONS`: ``"random"``, ``"least"``, ``"complement"``,
    ``"layers"``, ``"full"``) as rows ``loka @random`` ...: the same edit, objective, budget and
    seeds on other components (the first ``location_seeds`` seeds; default all);
    :meth:`Comparison.localization` says which won. ``curve`` (sizes,
    fractions of the components) adds LOKA's budget curve, located vs random, for the same seeds
    (:func:`loka.curve.budget_curve`; the report plots it).
    ``attribute`` attaches forget-set attribution scores for the report's heatmaps.
    ``workers`` > 1 runs the method runs (and their evaluations) in that many worker processes of
    one torch thread each (``model`` must then be a directory; a script that calls it needs an
    ``if __name__ == "__main__":`` guard); every run is seeded on its own, so the numbers are the
    same as with one process on one thread.
    """
    unknown = [m for m in methods if m not in METHODS or m == "retrain"]
    if unknown:
        allowed = ", ".join(m for m in METHODS if m != "retrain")
        raise UsageError(f"unknown method {unknown[0]!r} for compare; choose from {allowed} (the oracle is oracle=)")
    if len(set(methods)) != len(methods):
        raise UsageError(f"methods repeat a name: {list(methods)}")
    options = dict(options or {})
    stray = sorted(set(options) - set(methods))
    if stray:
        raise UsageError(f"options given for {stray[0]!r}, which is not among the methods {list(methods)}")
    extra = []
    for label, given in (variants or {}).items():
        given = dict(given)
        method = given.pop("method", "loka")
        if method not in METHODS or method == "retrain":
            raise UsageError(f"variant {label!r}: unknown method {method!r}")
        if label in methods or label.startswith(LOCATION_PREFIX):
            raise UsageError(f"variant name {label!r} is taken by a method or a location row; choose another")
        extra.append((label, method, {**options.get(method, {}), **given}))
    for name in methods:  # a bad option fails here, before any method runs
        method_config(name, **options.get(name, {}))
    for _, method, given in extra:
        method_config(method, **given)
    run_seeds = list(range(seeds)) if isinstance(seeds, int) and not isinstance(seeds, bool) else list(seeds)
    if not run_seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in run_seeds):
        raise UsageError(f"seeds must be a positive count or a list of non-negative integers, got {seeds!r}")
    if locations is None:
        locations = ("random",) if "loka" in methods else ()
    bad = [x for x in locations if x not in LOCATIONS or x == "located"]
    if isinstance(locations, str) or bad:
        allowed = ", ".join(x for x in LOCATIONS if x != "located")
        raise UsageError(f"unknown location {bad[0] if bad else locations!r}; locations are a list of {allowed}")
    if curve is not None:
        check_sizes(curve)
    if (locations or curve) and "loka" not in methods:
        raise UsageError("locations and curve are about LOKA's edit; include 'loka' in methods or leave them out")
    if not isinstance(control_seeds, int) or control_seeds < 0:
        raise UsageError(f"control_seeds must be a non-negative integer, got {control_seeds!r}")
    if protocol is None:
        missing = [n for n, v in (("forget", forget), ("retain", retain), ("holdout", holdout)) if v is None]
        if missing:
            raise UsageError(f"compare needs protocol= or all of forget=, retain=, holdout= (missing {missing})")
        protocol = Protocol.from_sets(forget=forget, retain=retain, holdout=holdout, passages=passages, seed=seed)
    elif any(v is not None for v in (forget, retain, holdout, passages)):
        raise UsageError("give either protocol= or forget=/retain=/holdout=/passages=, not both")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"workers must be a positive integer, got {workers!r}")
    source = model if isinstance(model, str | Path) else None
    if workers > 1 and source is None:
        raise UsageError("workers > 1 needs the model as a directory (each worker process loads it)")
    if isinstance(model, str | Path):
        model = load_model(model)
    budget = budget or Budget()
    common: dict[str, Any] = dict(protocol=protocol, probe=probe, relearn=relearn)
    rows = [(name, name, dict(options.get(name, {}))) for name in methods] + extra
    rows += [(f"{LOCATION_PREFIX}{x}", "loka", {**options.get("loka", {}), "location": x}) for x in locations]
    if location_seeds is not None and (isinstance(location_seeds, bool) or not isinstance(location_seeds, int)
                                       or location_seeds < 1):  # fmt: skip
        raise UsageError(f"location_seeds must be a positive integer or None, got {location_seeds!r}")
    jobs: list[_Job] = []
    for name, method, method_options in rows:
        for i, run_seed in enumerate(run_seeds[:location_seeds] if " @" in name else run_seeds):
            if "location" in method_options:  # each seed draws its own control components
                method_options = {**method_options, "location_seed": run_seed}
            # LOKA's own controls are the location rows; the direction control is for whole-model edits
            jobs.append((name, method, method_options, run_seed, control and method != "loka" and i < control_seeds))
    # the probe reads every model at the block where it reads the original best (chosen on held-out
    # retain people of the original): one readout location for all, fixed like the relearning grid
    pool = None
    if workers > 1:  # the method runs start now, beside the original's and the oracle's evaluations
        if probe:
            retain = protocol.retain_train + protocol.retain_validation + protocol.retain_eval
            common["probe_layer"] = fit_probe(model, model.tokenizer, protocol.forget, retain).layer
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    threads = torch.get_num_threads()
    if pool is not None:  # this process works beside the workers: one thread, or the pools spin against each other
        torch.set_num_threads(1)
    try:
        futures = [] if pool is None else [
            pool.submit(_run, str(source), job, protocol, budget, dict(common), None, False) for job in jobs
        ]  # fmt: skip
        outcomes = []
        original = evaluate(model, **common, label="original")
        common["probe_layer"] = original.probe.layer if original.probe is not None else None
        oracle_evaluation = None
        if oracle is not None:
            oracle_evaluation = evaluate(oracle, **common, label="oracle")
            original = dataclasses.replace(original, oracle=oracle_evaluation)
        outcomes.append(MethodOutcome("original", (original,)))
        if oracle_evaluation is not None:
            outcomes.append(MethodOutcome("oracle", (oracle_evaluation,), configs=({"oracle": str(oracle)},),
                                          seconds=oracle_seconds))  # fmt: skip
        scores = None
        if attribute:
            scores = attribution.attribute(
                model, protocol.forget, method="grad_x_act", baseline="corrupt", direction="denoise",
                positions="last", seed=seed, progress=progress,
            )  # fmt: skip
        if pool is None:
            done = _run_jobs(model, jobs, protocol, budget, common, oracle_evaluation, progress)
        else:
            done = _collect(futures, oracle_evaluation, progress)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
            torch.set_num_threads(threads)
    runs: dict[str, list[tuple[UnlearningResult, UnlearningEvaluation, UnlearningEvaluation | None]]] = {}
    for job, outcome in zip(jobs, done, strict=True):
        runs.setdefault(job[0], []).append(outcome)
    for name, _, _ in rows:
        done = runs[name]
        outcomes.append(
            MethodOutcome(
                name,
                tuple(ev for _, ev, _ in done),
                computes=tuple(r.compute for r, _, _ in done if r.compute is not None),
                configs=tuple(dict(r.config) for r, _, _ in done),
                controls=tuple(c for _, _, c in done if c is not None),
                mask=done[0][0].mask,
                seconds=float(np.mean([r.seconds for r, _, _ in done])),
            )
        )
    budget_curve_ = None
    if curve is not None:
        budget_curve_ = budget_curve(
            model, protocol, sizes=curve, seeds=run_seeds, budget=budget, options=options.get("loka"), progress=progress
        )
    return Comparison(tuple(outcomes), scores, title, protocol.sizes(), protocol.describe(), budget_curve_)


def _run_jobs(
    model: Any,
    jobs: Sequence[_Job],
    protocol: Protocol,
    budget: Budget,
    common: Mapping[str, Any],
    oracle: UnlearningEvaluation | None,
    progress: bool,
) -> list[tuple[UnlearningResult, UnlearningEvaluation, UnlearningEvaluation | None]]:
    """Every job's outcome, in job order, in this process."""
    return [
        _run(model, job, protocol, budget, common, oracle, progress)
        for job in tqdm(jobs, desc="compare: method runs", disable=not progress, leave=False)
    ]


def _collect(
    futures: Sequence[Future], oracle: UnlearningEvaluation | None, progress: bool
) -> list[tuple[UnlearningResult, UnlearningEvaluation, UnlearningEvaluation | None]]:
    """The worker processes' outcomes in job order, each evaluation with the oracle's attached (the
    workers ran before it was known; ``evaluate(oracle=an evaluation)`` only stores it)."""
    bar = tqdm(total=len(futures), desc="compare: method runs", disable=not progress, leave=False)
    for _ in as_completed(futures):
        bar.update()
    bar.close()
    out = []
    for future in futures:
        result, evaluation, controlled = future.result()
        out.append((result, dataclasses.replace(evaluation, oracle=oracle), controlled))
    return out


def compare_testbed(testbed: Any, **kwargs: Any) -> Comparison:
    """:func:`compare` on a :class:`loka.testbed.Testbed` under its protocol
    (:meth:`loka.protocol.Protocol.from_testbed`): its original model, its oracle, the forget
    facts in one wording (the others scored as paraphrases), retain people split into train /
    validation / eval, holdout people split into reference and MIA non-members, and the forget
    people's passages (verbatim extraction)."""
    config = testbed.config
    protocol = kwargs.pop("protocol", None) or Protocol.from_testbed(testbed, seed=kwargs.get("seed", 0))
    kwargs.setdefault(
        "title",
        f"loka comparison on the {testbed.root.name.split('-')[0]} testbed (world seed {config.world.seed}): "
        f"{len(protocol.forget)} forget facts / {len(protocol.retain_eval)} retain-eval facts",
    )
    return compare(
        testbed.model_dir if kwargs.get("workers", 1) > 1 else load_model(testbed.model_dir),
        protocol=protocol,
        oracle=testbed.oracle_dir,
        oracle_seconds=testbed.info["training"]["oracle"]["seconds"],
        **kwargs,
    )
