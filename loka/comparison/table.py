"""A finished comparison (:class:`Comparison`): the table, the verdicts in words, JSON and the report."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

import attribution
from loka.base.files import check_output as check_output_dir
from loka.base.files import json_default as _json_default
from loka.comparison.curve import BudgetCurve
from loka.comparison.outcomes import (
    CALIBRATED,
    COLUMNS,
    FORMAT,
    HTML_FILE,
    JSON_FILE,
    LOCALIZATION_COLUMNS,
    LOCATION_PREFIX,
    MethodOutcome,
)
from loka.comparison.report import Report, write_report
from loka.evaluation.intervals import Interval, compare_intervals

__all__ = ["Comparison"]

_BARS = ("forget", "retain", "para", "unseen", "MIA", "MIA ans", "relearn", "quant4", "lens", "probe")


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
        ``loka @random`` etc. are LOKA's localization controls (:mod:`loka.methods.localized.localization`)."""
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

    def figures(self) -> dict[str, go.Figure]:
        """Plotly figures: ``"metrics"`` (bars with intervals per method), ``"relearning"``
        (accuracy of the held-out forget half during the relearning attack), and the attribution
        heatmaps (``"heads"``, ``"neurons"``) when scores are attached."""
        figures: dict[str, go.Figure] = {}
        bars = go.Figure()
        for label, numbers, _, _ in self.rows():
            if label.startswith(" "):
                continue
            shown = [c for c in _BARS if numbers.get(c) is not None]
            cells = [numbers[c] for c in shown]
            bars.add_bar(
                name=label, x=shown, y=[i.mean for i in cells],
                error_y={"type": "data", "symmetric": False, "array": [i.high - i.mean for i in cells],
                         "arrayminus": [i.mean - i.low for i in cells]},
            )  # fmt: skip
        bars.update_layout(
            title="Accuracies (forget, retain-eval, paraphrases, unseen wording), MIA AUCs, relearning worst case, "
            "probe; mean and 95% interval over people and seeds",
            barmode="group",
            yaxis={"range": [0, 1.05], "title": "value"},
        )
        figures["metrics"] = bars
        curves = go.Figure()
        for outcome in self.outcomes:
            control = outcome.controls[0] if outcome.controls else None
            for ev, name, dash in ((outcome.evaluation, outcome.name, "solid"), (control, "", "dot")):
                if ev is None or ev.relearning is None or not ev.relearning.curve:
                    continue
                steps, accuracy = zip(*ev.relearning.curve, strict=True)
                label = name or f"{outcome.name} (random control)"
                curves.add_scatter(x=steps, y=accuracy, name=label, mode="lines+markers", line={"dash": dash})
        curves.update_layout(
            title="Relearning attack: accuracy on the held-out forget half while fine-tuning on the other half",
            xaxis={"title": "fine-tuning steps"},
            yaxis={"range": [0, 1.05], "title": "held-out forget accuracy"},
        )
        figures["relearning"] = curves
        if self.scores is not None:
            for name, figure in self.scores.plot().items():
                if name in ("heads", "neurons"):
                    figures[name] = figure
        if self.curve is not None:
            figures["budget curve"] = self.curve.plot()
        for outcome in self.outcomes:
            if outcome.mask is not None and outcome.name in ("loka", "loka @random"):
                figures[f"mask: {outcome.name}"] = outcome.mask.plot(title=f"{outcome.name}: the components it edited")
        return figures

    def report(self) -> Report:
        """The report's plain data (:class:`loka.comparison.report.Report`): what ``report.html`` shows."""
        settings: dict[str, dict[str, Any]] = {}
        for outcome in self.outcomes:
            settings[outcome.name] = {"settings": dict(outcome.config)}
            if outcome.mask is not None:
                settings[outcome.name]["mask"] = outcome.mask.summary()
        return Report(
            title=self.title, protocol=self.protocol, sets=dict(self.sets), rows=self.rows(),
            shares={o.name: o.parameter_fraction for o in self.outcomes}, verdicts=self.verdicts(),
            localization=self.localization(), blind=[c for c, ok in self.informative().items() if ok is False],
            figures=self.figures(), settings=settings,
        )  # fmt: skip

    def save(self, out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write ``comparison.json`` and ``report.html`` into ``out_dir`` (created). An existing
        ``out_dir`` is an error unless ``overwrite`` and it holds an earlier comparison."""
        out = Path(out_dir).expanduser()
        check_output_dir(out, overwrite=overwrite, marker=JSON_FILE)
        out.mkdir(parents=True, exist_ok=True)
        (out / JSON_FILE).write_text(json.dumps(self.to_dict(), indent=1, default=_json_default) + "\n")
        write_report(self.report(), out / HTML_FILE)
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
