"""Drawing a mask: one heatmap per component kind, layers on the y axis (plotly).

:meth:`ablation.AblationMask.plot` draws a mask with it. A cell is how much of the component is
removed (``AblationMask.strength``): 1 for zero, mean and
resample ablation, ``1 - factor`` for scaling, 0 where nothing is done. The colour scale is RdBu
centred on 0, so removed components are red and amplified ones (factor > 1) blue. Hover labels
use the component labels of :mod:`loka.base.components`, ``L{l}N{i}`` and ``L{l}H{h}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import plotly.graph_objects as go
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

__all__ = ["plot_strengths"]

Kind = Literal["neuron", "head"]


def plot_strengths(
    strengths: Mapping[Kind, Float[Tensor, "n_layers width"]], counts: Mapping[Kind, int], *, title: str
) -> go.Figure:
    """The figure described in the module docstring: one heatmap per kind in ``strengths`` (neurons
    first), titled with the kind's count of ablated components (``counts``)."""
    kinds = [(kind, letter) for kind, letter in (("neuron", "N"), ("head", "H")) if kind in strengths]
    widths = [strengths[kind].shape[1] for kind, _ in kinds]  # type: ignore[index]
    fig = make_subplots(
        rows=1,
        cols=len(kinds),
        column_widths=[max(w, 8) for w in widths] if len(kinds) == 2 else None,
        subplot_titles=[f"{kind}s ({counts[kind]} ablated)" for kind, _ in kinds],  # type: ignore[index]
        horizontal_spacing=0.08,
    )
    for col, (kind, letter) in enumerate(kinds, start=1):
        strength = strengths[kind]  # type: ignore[index]
        n_layers, width = strength.shape
        labels = [[f"L{layer}{letter}{index}" for index in range(width)] for layer in range(n_layers)]
        fig.add_trace(
            go.Heatmap(
                z=strength.tolist(),
                x=list(range(width)),
                y=list(range(n_layers)),
                text=labels,
                hovertemplate="%{text}<br>removed: %{z:.3g}<extra></extra>",
                colorscale="RdBu",
                reversescale=True,
                zmid=0.0,
                zmin=-1.0,
                zmax=1.0,
                showscale=col == len(kinds),
                colorbar={"title": {"text": "removed"}},
                name=f"{kind}s",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text=f"{kind} index", row=1, col=col)
        fig.update_yaxes(title_text="layer", dtick=1, row=1, col=col)
    fig.update_layout(title=title)
    return fig
