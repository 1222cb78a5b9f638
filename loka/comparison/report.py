"""The comparison as one self-contained HTML page (plotly.js inlined: it opens offline).

The page holds, in order: the protocol in words, the method x metric table (mean and 95% interval
over people and seeds, each method's random control under it, compute per run), which checks
could not tell the original from the oracle, the verdict of each method in words, bars of the
main numbers with their intervals, the relearning curves, the forget-set attribution heatmaps,
and each method's settings and mask summary.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from loka.base.files import json_default

__all__ = ["Report", "figure_html", "figures_html", "html_page", "report_html", "write_report"]


@dataclass(frozen=True)
class Report:
    """What the page shows, as plain data (:meth:`loka.comparison.Comparison.report` builds it): the
    table's rows ``(label, numbers, compute, forget quality)`` (a label that starts with a space is a
    control), each row's share of parameters changed, the verdicts in words, the columns that could
    not tell the original from the oracle, the figures, each method's settings, and the checks that
    had no oracle to be calibrated against."""

    title: str
    protocol: str
    sets: Mapping[str, int]
    rows: Sequence[tuple[str, Mapping[str, Any], Mapping[str, float] | None, str]]
    shares: Mapping[str, float | None]
    verdicts: Mapping[str, str]
    localization: Mapping[str, str]
    blind: Sequence[str]
    figures: Mapping[str, go.Figure]
    settings: Mapping[str, Mapping[str, Any]]
    uncalibrated: Sequence[str] = ()  # calibrated checks with no oracle to calibrate them: shown, never judged
    trained: Mapping[str, Sequence[str]] = field(default_factory=dict)  # row -> columns its method optimised


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { padding: 4px 10px; text-align: right; border-bottom: 1px solid #ddd; }
th:first-child, td:first-child { text-align: left; }
tr.control td { color: #777; font-size: 90%; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 85%; }
.note { color: #555; font-size: 90%; }
"""


def _table(report: Report) -> str:
    rows = report.rows
    columns = [c for c in (rows[0][1] if rows else {}) if any(r[1][c] is not None for r in rows)]
    heads = ["method", *columns, "steps", "M tokens", "seconds", "% params", "forget quality"]
    shares = report.shares
    head = "".join(f"<th>{html.escape(c)}</th>" for c in heads)
    body = []
    for label, numbers, compute, quality in rows:
        mine = report.trained.get(label, ())
        cells = [format(numbers[c], ".3f") + ("*" if c in mine else "") if numbers[c] is not None else "–"
                 for c in columns]  # fmt: skip
        if compute is not None:
            cells += [f"{compute['steps']:.0f}", f"{compute['forward_Mtokens']:.2f}", f"{compute['seconds']:.1f}"]
        else:
            cells += ["–"] * 3
        cells.append(f"{100 * shares[label]:.2f}" if shares.get(label) is not None else "–")
        row_class = ' class="control"' if label.startswith(" ") else ""
        tds = "".join(f"<td>{html.escape(c)}</td>" for c in [label.strip(), *cells, quality])
        body.append(f"<tr{row_class}>{tds}</tr>")
    note = (
        '<p class="note">* the method trained against this statistic: no evidence for it.</p>'
        if any(report.trained.values())
        else ""
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"


def _localization(report: Report) -> str:
    verdicts = report.localization
    if not verdicts:
        return ""
    items = "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(t)}</li>" for n, t in verdicts.items())
    return (
        '<h2>Does the location matter?</h2><p class="note">LOKA\'s edit (same objective, optimizer, budget and '
        "seeds) on the located components against the same edit elsewhere: <i>random</i> components of the same "
        "count per layer, the <i>least</i> attributed, the <i>complement</i> (same count, none of the located), "
        "whole MLP <i>layers</i>, the <i>full</i> set of neurons and heads. Lower forget, para and relearn are "
        "better, higher retain, and an MIA interval that meets the oracle's where the other's does not; every "
        "seed of the control row against the same seeds of LOKA, and no verdict from an uninformative check.</p>"
        "<ul>" + items + "</ul>"
    )


def _settings(report: Report) -> str:
    parts = []
    for name, record in report.settings.items():
        text = json.dumps(record, indent=2, default=json_default)
        parts.append(f"<details><summary>{html.escape(name)}</summary><pre>{html.escape(text)}</pre></details>")
    return "".join(parts)


def figure_html(figure: go.Figure) -> str:
    """One plotly figure as an HTML fragment, for a page made by :func:`html_page`."""
    return pio.to_html(figure, full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def _figures(figures: dict[str, go.Figure]) -> str:
    return "".join(
        f"<section><h3>{html.escape(name)}</h3>{figure_html(figure)}</section>" for name, figure in figures.items()
    )


def html_page(title: str, body: str) -> str:
    """Every page loka writes: ``body`` (HTML) under ``title``, with one style and plotly.js
    inlined, so that the file opens offline and references no external URL."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style><script type="text/javascript">{get_plotlyjs()}</script></head>
<body><h1>{html.escape(title)}</h1>
{body}
</body></html>
"""


def figures_html(title: str, figures: dict[str, go.Figure]) -> str:
    """A self-contained page of plotly figures, each under its name."""
    return html_page(title, _figures(figures))


def report_html(report: Report) -> str:
    """The whole page as one string (no external URL is referenced)."""
    verdicts = "".join(
        f"<li><b>{html.escape(name)}</b>: {html.escape(text)}</li>" for name, text in report.verdicts.items()
    )
    sets = ", ".join(f"{name} {n}" for name, n in report.sets.items())
    blind = list(report.blind)
    calibration = (
        f"<p><b>Uninformative here:</b> {html.escape(', '.join(blind))}: the original model and the oracle are "
        "not apart on them, so they cannot judge a method and are not shown.</p>"
        if blind
        else ""
    )
    if report.uncalibrated:
        calibration += (
            f"<p><b>Not calibrated:</b> {html.escape(', '.join(report.uncalibrated))}: there is no oracle to say "
            "what a model that never saw the forget set scores on them; their numbers are shown, but no verdict "
            "is drawn from them.</p>"
        )
    body = f"""<h2>Protocol</h2><p>{html.escape(report.protocol)}</p>
<p class="note">Sets: {html.escape(sets)}. Every number is a mean and a 95% interval (bootstrap over people
and method seeds); where intervals overlap, a difference is "not shown" (which does not show that there is
none). Verdicts use every seed, and a control is met on the seeds it ran. Accuracies are first-target-token top-1:
<i>forget</i> on the forget prompts the methods were given, <i>retain</i> on retain people no method trained on,
<i>para</i> on the forget facts in other wordings the original learned and no method saw, <i>unseen</i> on a
wording held out of the original's training. MIA is the LOSS attack's ROC AUC on the whole text, forget facts
(members) against people never trained on and never shown to a method; 0.5 means an attacker cannot tell them
apart; "MIA ans" scores the answer tokens only. "relearn" is the worst case of the relearning attack (fine-tune
on half of the forget facts mixed with retain facts, over a fixed grid, score the other half); "benign" the
forget accuracy after the same fine-tune on retain facts alone, which cannot teach a forget answer; "probe" is a
linear probe's readout of the forget values from inside the model; "extract" the exact verbatim-continuation
rate of the forget passages. Steps, tokens (forward, millions) and seconds are per run. Each method's
<i>random control</i> is an edit of the same size in random places; the oracle was trained without the forget
set.</p>{calibration}
<h2>Methods</h2>{_table(report)}
<h2>Verdicts</h2><ul>{verdicts}</ul>{_localization(report)}
<h2>Figures</h2>{_figures(dict(report.figures))}
<h2>Settings</h2>{_settings(report)}"""
    return html_page(report.title, body)


def write_report(report: Report, path: str | os.PathLike[str]) -> Path:
    """Write :func:`report_html` to ``path`` (through a temporary file, so a failure leaves nothing)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(report_html(report), encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
