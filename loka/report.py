"""The comparison as one self-contained HTML page (plotly.js inlined: it opens offline).

The page holds, in order: the method x metric table (with each method's random control under
it), the verdict of each evaluation in words, bars of the main numbers, the relearning curves,
the forget-set attribution heatmaps, and each method's settings and mask summary.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

if TYPE_CHECKING:
    from loka.comparison import Comparison

__all__ = ["comparison_figures", "figures_html", "report_html", "write_report"]

_BARS = ("forget", "retain", "para", "MIA", "relearn", "probe")
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { padding: 4px 10px; text-align: right; border-bottom: 1px solid #ddd; }
th:first-child, td:first-child { text-align: left; }
tr.control td { color: #777; font-size: 90%; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 85%; }
.note { color: #555; font-size: 90%; }
"""


def comparison_figures(comparison: Comparison) -> dict[str, go.Figure]:
    """See :meth:`loka.comparison.Comparison.figures`."""
    figures: dict[str, go.Figure] = {}
    bars = go.Figure()
    for label, numbers, _, _ in comparison.rows():
        if label.startswith(" "):
            continue
        bars.add_bar(name=label, x=list(_BARS), y=[numbers[c] for c in _BARS])
    bars.update_layout(
        title="Forget / retain / paraphrase accuracy, MIA AUC, accuracy after relearning, probe accuracy",
        barmode="group",
        yaxis={"range": [0, 1.05], "title": "value"},
    )
    figures["metrics"] = bars
    curves = go.Figure()
    for outcome in comparison.outcomes:
        for ev, name, dash in ((outcome.evaluation, outcome.name, "solid"), (outcome.evaluation.control, "", "dot")):
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
    if comparison.scores is not None:
        for name, figure in comparison.scores.plot().items():
            if name in ("heads", "neurons"):
                figures[name] = figure
    for outcome in comparison.outcomes:
        if outcome.mask is not None:
            figures[f"mask: {outcome.name}"] = outcome.mask.plot(title=f"{outcome.name}: ablated components")
    return figures


def _table(comparison: Comparison) -> str:
    columns = list(next(iter(comparison.rows()))[1]) if comparison.outcomes else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["method", *columns, "seconds", "forget quality"])
    body = []
    for label, numbers, seconds, quality in comparison.rows():
        cells = [f"{v:.3f}" if v is not None else "–" for v in numbers.values()]
        cells.append(f"{seconds:.1f}" if seconds is not None else "–")
        row_class = ' class="control"' if label.startswith(" ") else ""
        tds = "".join(f"<td>{html.escape(c)}</td>" for c in [label.strip(), *cells, quality])
        body.append(f"<tr{row_class}>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _settings(comparison: Comparison) -> str:
    parts = []
    for outcome in comparison.outcomes:
        record: dict[str, Any] = {"settings": dict(outcome.config)}
        if outcome.mask is not None:
            record["mask"] = outcome.mask.summary()
        text = json.dumps(record, indent=2, default=str)
        parts.append(f"<details><summary>{html.escape(outcome.name)}</summary><pre>{html.escape(text)}</pre></details>")
    return "".join(parts)


def _figures(figures: dict[str, go.Figure]) -> str:
    return "".join(
        f"<section><h3>{html.escape(name)}</h3>"
        f"{pio.to_html(figure, full_html=False, include_plotlyjs=False, config={'displaylogo': False})}</section>"
        for name, figure in figures.items()
    )


def _page(title: str, body: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style><script type="text/javascript">{get_plotlyjs()}</script></head>
<body><h1>{html.escape(title)}</h1>
{body}
</body></html>
"""


def figures_html(title: str, figures: dict[str, go.Figure]) -> str:
    """A self-contained page of plotly figures, each under its name."""
    return _page(title, _figures(figures))


def report_html(comparison: Comparison) -> str:
    """The whole page as one string (no external URL is referenced)."""
    verdicts = "".join(
        f"<li><b>{html.escape(name)}</b>: {html.escape(text)}</li>" for name, text in comparison.verdicts().items()
    )
    sets = ", ".join(f"{n} {name}" for name, n in comparison.sets.items())
    body = f"""<p class="note">Sets: {html.escape(sets)}. Accuracies are first-target-token top-1.
MIA is the LOSS attack's ROC AUC, forget facts (members) against holdout facts (never trained);
0.5 means an attacker cannot tell them apart; "MIA ans" is the same attack on the answer tokens only.
"relearn" is the held-out half of the forget facts after
fine-tuning on the other half; "probe" is a
logistic-regression probe's accuracy on the forget values read from the residual stream; "extract" is the exact
verbatim-continuation rate of the forget passages. Each method's <i>random control</i> is an edit of the same
size in random places; the oracle was trained without the forget set.</p>
<h2>Methods</h2>{_table(comparison)}
<h2>Verdicts</h2><ul>{verdicts}</ul>
<h2>Figures</h2>{_figures(comparison_figures(comparison))}
<h2>Settings</h2>{_settings(comparison)}"""
    return _page(comparison.title, body)


def write_report(comparison: Comparison, path: str | os.PathLike[str]) -> Path:
    """Write :func:`report_html` to ``path`` (through a temporary file, so a failure leaves nothing)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(report_html(comparison), encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
