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

    def unusable(self) -> dict[str, str]:
        """The columns no verdict may be drawn from, each with the reason: a calibrated check that
        cannot tell the original from the oracle (*uninformative*), or that has no oracle to be
        calibrated against (*not calibrated*). Every verdict of :meth:`verdicts` and
        :meth:`localization` skips them and says so."""
        missing = "no oracle" if "oracle" not in self.names else "the original or the oracle was not scored on it"
        reasons = {False: "uninformative: the original and the oracle are not apart on it",
                   None: f"not calibrated: {missing}"}  # fmt: skip
        return {c: reasons[ok] for c, ok in self.informative().items() if ok is not True}

    def rows(self) -> list[tuple[str, dict[str, Interval | None], dict[str, float] | None, str]]:
        """(label, interval by column, compute summary, forget quality), with a control row under
        each method that has one; every number and grade over all of a row's seeds. Uncalibrated
        checks that cannot tell the original from the oracle are None in every row. A control
        row with fewer seeds than its method says how many it has."""
        blind = {c for c, ok in self.informative().items() if ok is False}
        rows = []
        for o in self.outcomes:
            numbers = {c: (None if c in blind else o.interval(c)) for c in COLUMNS}
            rows.append((o.name, numbers, o.compute_summary(), o.forget_quality()))
            if o.controls:
                numbers = {c: (None if c in blind else o.interval(c, controls=True)) for c in COLUMNS}
                label = "  random control" + _fewer(len(o.controls), len(o.runs))
                rows.append((label, numbers, None, o.forget_quality(controls=True)))
        return rows

    def table(self) -> str:
        """The method x metric table: mean [95% interval] over people and seeds. forget / retain /
        para / unseen are first-token accuracies (forget prompts the method was given; retain people
        no method trained on; the forget facts in other wordings the original learned; a wording
        held out of training); MIA is the whole-text LOSS attack's AUC (forget vs never-seen
        people), MIA ans the same on the answer tokens; relearn is the worst case of the relearning
        attack; benign the forget accuracy after a fine-tune on retain facts alone (no forget fact:
        what it brings back was hidden, not removed); quant8 / quant4 the forget accuracy after
        rounding the weights to 8 / 4 bits; lens the logit lens's best-layer readout of the forget
        answers; probe the residual probe's readout; then optimizer steps, forward tokens, seconds
        per run and the percentage of the model's parameters the method changed. Rows
        ``loka @random`` etc. are LOKA's localization controls (:mod:`loka.methods.localized.localization`)."""
        rows = self.rows()
        columns = [c for c in COLUMNS if any(r[1][c] is not None for r in rows)]
        blind = [c for c, ok in self.informative().items() if ok is False]
        uncalibrated = [c for c, ok in self.informative().items() if ok is None and c in columns]
        width = 18
        header = f"{'method':<17}" + "".join(f"{c:>{width}}" for c in columns)
        trained = {o.name: o.trained_against for o in self.outcomes}
        header += f"{'steps':>7}{'Mtok':>8}{'sec':>7}{'%par':>7}"
        lines = [self.title, header, "-" * len(header)]
        shares = {o.name: o.parameter_fraction for o in self.outcomes}
        for label, numbers, compute, _ in rows:
            mine = trained.get(label, ())
            cells = "".join(
                f"{format(v, '.2f').replace(', ', ',') + ('*' if c in mine else ''):>{width}}"
                if v is not None
                else f"{'-':>{width}}"
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
        if uncalibrated:
            lines.append(
                f"not calibrated (no oracle): {', '.join(uncalibrated)}; shown, but no verdict is drawn from them."
            )
        if any(trained.values()):
            lines.append(
                "* the method trained against this statistic (LOKA's erase='subject' pulls the whole-text loss "
                "onto strangers'; adversary_weight trains against a relearning step): no evidence for it, and "
                "no verdict of its own is drawn from it; Min-K, Min-K++, MIA ans, in-ctx, benign, LoRA, quant, lens "
                "and probe are trained against by no method."
            )
        lines.append(
            "mean [95% interval] over people and method seeds; where intervals overlap, a difference is not shown."
        )
        return "\n".join(lines)

    def verdicts(self) -> dict[str, str]:
        """Each method in words, from every seed: its forget quality and what the calibrated checks
        still find against the oracle; then, column by column, against the oracle and against its
        random control (on the seeds the control ran), a difference only where the intervals do
        not overlap ("not shown" where they do). No verdict is drawn from a column of
        :meth:`unusable`; each verdict names the ones it skipped."""
        out = {}
        oracle = self["oracle"] if "oracle" in self.names else None
        unusable = self.unusable()
        for o in self.outcomes:
            yardstick = oracle if o.name != "oracle" else None
            mine = {**unusable, **dict.fromkeys(o.trained_against, "the method trained against it")}
            parts = [_summary(o, yardstick if o.name != "original" else None, mine)]
            if yardstick is not None:
                parts.append("Against the oracle: " + _differences(o, yardstick, mine) + ".")
            if o.controls:
                seeds = f"{len(o.controls)} seed{'s' if len(o.controls) > 1 else ''}"
                parts.append(f"Against its random control ({seeds}): " + _differences(o, o, mine, controls=True) + ".")
            skipped = [f"{c} ({why})" for c, why in mine.items() if o.interval(c) is not None]
            if skipped:
                parts.append("No verdict drawn from " + "; ".join(skipped) + ".")
            out[o.name] = " ".join(parts)
        return out

    def localization(self) -> dict[str, str]:
        """For every localization control row (``loka @random`` ...), in words: did the located
        set beat it at equal budget on forget, retain, para, relearn and MIA, on the same seeds
        (the control's; LOKA's first runs)? Lower forget, para and relearn are better, higher
        retain; for MIA, the one whose interval meets the oracle's while the other's does not. A
        difference only where the intervals do not overlap ("not shown" where they do), and
        never from a column of :meth:`unusable`."""
        if "loka" not in self.names:
            return {}
        located = self["loka"]
        unusable = self.unusable()
        oracle_mia = self["oracle"].interval("MIA") if "oracle" in self.names else None
        out = {}
        for o in self.outcomes:
            if not o.name.startswith(LOCATION_PREFIX):
                continue
            n = len(o.runs)
            won, lost, same, skipped = [], [], [], []
            for column in LOCALIZATION_COLUMNS:
                x, y = located.interval(column, seeds=n), o.interval(column)
                if x is None or y is None:
                    continue
                if column in unusable:
                    skipped.append(f"{column} ({unusable[column]})")
                    continue
                better: bool | None = None
                if column == "MIA":
                    if oracle_mia is not None and x.overlaps(oracle_mia) != y.overlaps(oracle_mia):
                        better = x.overlaps(oracle_mia)
                elif (relation := compare_intervals(x, y)) != "not shown":
                    better = (relation == "higher") == (column == "retain")
                text = f"{column} {x.mean:.2f} vs {y.mean:.2f}"
                (same if better is None else won if better else lost).append(text)
            share = (located.parameter_fraction or 0.0, o.parameter_fraction or 0.0)
            verdict = (
                "beat"
                if won and not lost
                else "lost to"
                if lost and not won
                else "were not shown to differ from"
                if not won
                else "mixed against"
            )
            out[o.name] = (
                f"The located components {verdict} {o.name.removeprefix(LOCATION_PREFIX)} components "
                f"({100 * share[0]:.1f}% vs {100 * share[1]:.1f}% of parameters changed; {n} seed"
                f"{'s' if n > 1 else ''} each). Better: {'; '.join(won) or 'none'}. "
                f"Worse: {'; '.join(lost) or 'none'}. Not shown (intervals overlap): {'; '.join(same) or 'none'}."
            )
            if skipped:
                out[o.name] += f" No verdict drawn from {'; '.join(skipped)}."
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
            "no_verdict_from": self.unusable(),
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
            uncalibrated=[c for c, ok in self.informative().items() if ok is None],
            figures=self.figures(), settings=settings, trained={o.name: o.trained_against for o in self.outcomes},
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


def _fewer(n: int, of: int) -> str:
    """`` (n of m seeds)`` when a control ran on fewer seeds than its method, else nothing."""
    return f" ({n} of {of} seeds)" if n < of else ""


def _differences(a: MethodOutcome, b: MethodOutcome, unusable: Mapping[str, str], *, controls: bool = False) -> str:
    """``a`` against ``b`` (or against ``b``'s random controls, on the seeds they ran), column by
    column: "lower" / "higher" where the intervals do not overlap, else "not shown"; the
    columns of ``unusable`` are left out."""
    seeds = len(b.controls) if controls else None
    words = []
    for column in COLUMNS:
        if column in unusable:
            continue
        x, y = a.interval(column, seeds=seeds), b.interval(column, controls=controls)
        if x is None or y is None:
            continue
        words.append(f"{column} {compare_intervals(x, y)} ({x.mean:.2f} vs {y.mean:.2f})")
    return "; ".join(words) if words else "nothing to compare"


# what a check still finding the forget facts above the oracle's level means, in words
_FINDINGS = {
    "relearn": "relearnable",
    "benign": "a fine-tune on other people's facts alone brings it back",
    "LoRA": "relearning through low-rank adapters brings it back",
    "in-ctx": "the person's other facts written before the question bring it back",
    "quant8": "8-bit quantization brings it back",
    "quant4": "4-bit quantization brings it back",
    "lens": "the logit lens reads it inside the model",
    "probe": "a probe reads it inside the model",
}


def _summary(o: MethodOutcome, oracle: MethodOutcome | None, unusable: Mapping[str, str]) -> str:
    """One method over all its seeds: the forget-quality grade of its mean forget and retain
    accuracy, and (given the ``oracle``; not for the unedited original) each calibrated,
    informative check whose interval lies above the oracle's (knowledge still there), or whose
    MIA interval misses the oracle's (membership still told)."""
    forget, retain = o.interval("forget"), o.interval("retain")
    n = len(o.runs)
    text = f"Over {n} seed{'s' if n > 1 else ''}: forget quality {o.forget_quality()}"
    if forget is not None and retain is not None:
        text += f" (forget {forget.mean:.2f}, retain {retain.mean:.2f})"
    text += "."
    if oracle is None:
        return text
    findings = []
    for column, words in _FINDINGS.items():
        x, y = o.interval(column), oracle.interval(column)
        if column not in unusable and x is not None and y is not None and compare_intervals(x, y) == "higher":
            findings.append(f"{words} ({column} {x.mean:.2f} vs oracle {y.mean:.2f})")
    x, y = o.interval("MIA"), oracle.interval("MIA")
    if "MIA" not in unusable and x is not None and y is not None and not x.overlaps(y):
        side = "more" if x.mean > y.mean else "less"
        findings.append(f"membership inference tells the forget people apart ({side} familiar than to the oracle: "
                        f"MIA {x.mean:.2f} vs {y.mean:.2f})")  # fmt: skip
    if findings:
        text += " Still detectable, intervals apart from the oracle's: " + "; ".join(findings) + "."
    return text
