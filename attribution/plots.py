"""Plotly figures for attribution results: layers on the y axis, RdBu centred on 0.

Red is negative and blue positive (plotly's ``RdBu``), so in an ablation plot the components the
knowledge needs are red, and in a denoising plot the components that restore it are blue.
Hovering a cell shows the component's label (``L{layer}H{head}``, ``L{layer}N{neuron}``).
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots
from torch import Tensor

from attribution.positions import POSITION_CLASSES

__all__ = ["scores_figures", "layer_scan_figure", "heatmap"]

COLORSCALE = "RdBu"


def heatmap(values: Tensor, *, letter: str, title: str, x_title: str, colorbar: str = "effect") -> go.Figure:
    """A layer x unit heatmap; hover labels ``L{l}{letter}{i}``."""
    values = values.detach().float().cpu()
    n_layers, width = values.shape
    labels = [[f"L{layer}{letter}{index}" for index in range(width)] for layer in range(n_layers)]
    figure = go.Figure(
        go.Heatmap(
            z=values.tolist(),
            x=list(range(width)),
            y=list(range(n_layers)),
            text=labels,
            colorscale=COLORSCALE,
            zmid=0,
            colorbar={"title": colorbar},
            hovertemplate="%{text}: %{z:.4g}<extra></extra>",
        )
    )
    figure.update_layout(title=title, xaxis_title=x_title, yaxis_title="layer")
    figure.update_yaxes(tickmode="array", tickvals=list(range(n_layers)), ticktext=[f"L{i}" for i in range(n_layers)])
    return figure


def _subtitle(scores: Any, kind: str | None = None) -> str:
    """How the scores (of ``kind``, or of every kind, each in its settings) were made."""
    if kind is None and scores.metadata.by_kind:
        return "; ".join(f"{one}s: {_subtitle(scores, one)}" for one in scores.kinds)
    meta = scores.metadata if kind is None else scores.metadata.of_kind(kind)
    return f"{meta.method}, baseline {meta.baseline}, {meta.direction}, positions {meta.positions}, {meta.metric}"


def scores_figures(scores: Any, *, k: int = 20) -> dict[str, go.Figure]:
    """The figures of :meth:`attribution.scores.AttributionScores.plot`."""
    figures: dict[str, go.Figure] = {}
    sub = _subtitle(scores)
    if scores.heads is not None:
        figures["heads"] = heatmap(
            scores.heads, letter="H", title=f"Attention heads<br><sup>{_subtitle(scores, 'head')}</sup>", x_title="head"
        )
    if scores.neurons is not None:
        neurons = scores.neurons.detach().float().cpu()
        neuron_sub = _subtitle(scores, "neuron")
        figures["neurons"] = heatmap(
            neurons, letter="N", title=f"MLP neurons<br><sup>{neuron_sub}</sup>", x_title="neuron"
        )
        distribution = go.Figure()
        for layer in range(neurons.shape[0]):
            distribution.add_trace(
                go.Box(x=neurons[layer].tolist(), name=f"L{layer}", orientation="h", boxpoints="outliers")
            )
        distribution.update_layout(
            title=f"Neuron scores per layer<br><sup>{neuron_sub}</sup>",
            xaxis_title="score",
            yaxis_title="layer",
            showlegend=False,
        )
        figures["neuron_distribution"] = distribution
    top = scores.top(k)
    values = [float(scores.of(c.kind)[c.layer, c.index]) for c in top]
    bound = max((abs(v) for v in values), default=1.0) or 1.0
    figures["top"] = go.Figure(
        go.Bar(
            x=values[::-1],
            y=[c.label for c in top][::-1],
            orientation="h",
            marker={"color": values[::-1], "colorscale": COLORSCALE, "cmin": -bound, "cmax": bound},
        )
    )
    figures["top"].update_layout(title=f"Top {len(top)} components<br><sup>{sub}</sup>", xaxis_title="score")
    return figures


def layer_scan_figure(scan: Any, fact: int | None = None) -> go.Figure:
    """One heatmap per site: layer x position class (all facts) or layer x token (one fact)."""
    if fact is None:
        values, present = scan.by_class()
        x = [POSITION_CLASSES[c] for c in present]
        title = f"Layer scan, mean over {len(scan.fact_ids)} facts by position class"
    else:
        length = len(scan.tokens[fact])
        values = scan.effects[fact, :, :, :length]
        x = [f"{i}: {token}" for i, token in enumerate(scan.tokens[fact])]
        title = f"Layer scan of {scan.fact_ids[fact]!r}"
    meta = scan.metadata
    title += f"<br><sup>{meta['direction']} with baseline {meta['baseline']}, {meta['metric']}</sup>"
    bound = float(values.abs().max()) if values.numel() else 1.0
    figure = make_subplots(rows=1, cols=len(scan.sites), subplot_titles=list(scan.sites), shared_yaxes=True)
    n_layers = values.shape[1]
    for column, site in enumerate(scan.sites, start=1):
        z: Tensor = values[column - 1].float()
        figure.add_trace(
            go.Heatmap(
                z=z.tolist(),
                x=x,
                y=list(range(n_layers)),
                colorscale=COLORSCALE,
                zmid=0,
                zmin=-bound or None,
                zmax=bound or None,
                showscale=column == len(scan.sites),
                hovertemplate=f"{site} L%{{y}} @ %{{x}}: %{{z:.4g}}<extra></extra>",
            ),
            row=1,
            col=column,
        )
    figure.update_layout(title=title)
    figure.update_yaxes(title_text="layer", row=1, col=1)
    return figure
