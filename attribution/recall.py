"""Recall@k: how many of a known answer's neurons a locator ranks at the top.

On an ordinary model nobody knows which neurons carry a fact, so a locator cannot be checked
directly. Where the answer is known by construction (neurons *planted* with a fact, as in Chang
et al.'s INJ benchmark, NAACL 2024; :mod:`loka.testbed.planted`), the check is recall::

    Recall@k = |top-k neurons by the locator  ∩  planted neurons| / |planted neurons|

Chang et al. take the top ``k%`` **per layer** (``get_layerwise_scores`` in their code:
``round(d_mlp * k)`` neurons of every layer), because planted neurons are spread over the layers
and scores of different layers need not be comparable; the **global** variant
(``per_layer=False``) takes the top ``k`` over all layers at once (``get_global_scores``), and
rewards a locator whose scores are comparable across layers. A locator that scores at random has
an expected recall of ``k / d_mlp`` per layer (the share selected); :attr:`Recall.chance` says
what it is for the selection actually made.

``k`` is a number of neurons (an ``int``: per layer, or in all with ``per_layer=False``) or a
fraction (a ``float`` in ``(0, 1]``: of a layer's neurons, or of all neurons), rounded half up to
a count. Scores are read as "larger = more important": an
:class:`~attribution.scores.AttributionScores` through its
:meth:`~attribution.scores.AttributionScores.importance`, a tensor as it is.

**Ties** break by position, deterministically: among equal scores the neuron of the lower layer,
then the lower index, ranks first (a stable descending sort of the row-major flattening, as
:meth:`AttributionScores.top <attribution.scores.AttributionScores.top>` ranks). A constant
locator therefore selects the first ``k`` neurons of each layer, which is neither an optimistic
nor a pessimistic guess about the planted ones; :attr:`Recall.boundary_ties` counts the neurons
left out that tie the lowest selected score, so that a recall decided by tie order is visible.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from attribution.peeling import Peeling
from attribution.scores import AttributionScores
from loka.base.components import Component
from loka.base.errors import UsageError

__all__ = ["Recall", "recall_at_k", "planted_mask"]


@dataclass(frozen=True)
class Recall:
    """Recall@k of one locator against one planted set.

    ``hits`` planted neurons were among the ``selected`` top-ranked ones, out of ``n_planted``;
    ``per_layer_hits[l]`` / ``per_layer_planted[l]`` / ``per_layer_selected[l]`` break it down by
    layer. ``k_per_layer`` is the count taken in each layer (``None`` for the global variant).
    """

    recall: float
    hits: int
    n_planted: int
    selected: int
    per_layer: bool
    k_per_layer: int | None
    per_layer_hits: tuple[int, ...]
    per_layer_planted: tuple[int, ...]
    per_layer_selected: tuple[int, ...]
    n_neurons: int
    boundary_ties: int

    @property
    def chance(self) -> float:
        """The expected recall of scores drawn at random for this selection (every planted neuron
        is selected with probability selected / neurons in its layer, or overall)."""
        if not self.per_layer:
            return self.selected / self.n_neurons
        width = self.n_neurons // len(self.per_layer_planted)
        expected = sum(s / width * p for s, p in zip(self.per_layer_selected, self.per_layer_planted, strict=True))
        return expected / self.n_planted

    def to_dict(self) -> dict[str, Any]:
        return {
            "recall": self.recall,
            "hits": self.hits,
            "n_planted": self.n_planted,
            "selected": self.selected,
            "per_layer": self.per_layer,
            "k_per_layer": self.k_per_layer,
            "per_layer_hits": list(self.per_layer_hits),
            "per_layer_planted": list(self.per_layer_planted),
            "per_layer_selected": list(self.per_layer_selected),
            "chance": self.chance,
            "boundary_ties": self.boundary_ties,
        }


def _scores_tensor(scores: Any) -> Tensor:
    if isinstance(scores, AttributionScores | Peeling):
        if "neuron" not in scores.kinds:
            raise UsageError(f"recall_at_k needs neuron scores; these {type(scores).__name__} have heads only")
        values = scores.importance("neurons")
    elif isinstance(scores, Tensor):
        values = scores
    else:
        raise UsageError(
            f"scores must be AttributionScores, a Peeling or a [n_layers, d_mlp] tensor, got {type(scores).__name__}"
        )
    if values.ndim != 2 or values.numel() == 0:
        raise UsageError(f"neuron scores must be a non-empty [n_layers, d_mlp] tensor, got shape {tuple(values.shape)}")
    if values.is_complex() or values.dtype == torch.bool:
        raise UsageError(f"neuron scores must be real numbers, got {values.dtype}")
    values = values.detach().cpu().to(torch.float64)
    if not torch.isfinite(values).all():
        raise UsageError("neuron scores must all be finite (found nan or inf)")
    return values


def planted_mask(planted: Any, shape: tuple[int, int]) -> Bool[Tensor, "n_layers d_mlp"]:
    """``planted`` (a boolean ``[n_layers, d_mlp]`` tensor, or ``("neuron", layer, index)``
    addresses / ``"L1N7"`` labels) as a boolean mask of ``shape``; UsageError if it does not fit
    or is empty."""
    if isinstance(planted, Tensor):
        if planted.dtype != torch.bool:
            raise UsageError(f"planted must be a boolean tensor (or a list of neuron addresses), got {planted.dtype}")
        if tuple(planted.shape) != shape:
            raise UsageError(f"planted has shape {tuple(planted.shape)}; the scores have {shape} (n_layers, d_mlp)")
        mask = planted.detach().cpu().clone()
    elif isinstance(planted, Iterable) and not isinstance(planted, str | bytes):
        mask = torch.zeros(shape, dtype=torch.bool)
        for value in planted:
            component = Component.parse(value)
            if component.kind != "neuron":
                raise UsageError(f"planted holds neurons only; got {component.label}")
            if component.layer >= shape[0] or component.index >= shape[1]:
                raise UsageError(
                    f"planted neuron {component.label} is outside the scores' shape {shape} (n_layers, d_mlp)"
                )
            mask[component.layer, component.index] = True
    else:
        raise UsageError(
            f"planted must be a boolean [n_layers, d_mlp] tensor or a list of ('neuron', layer, index), "
            f"got {type(planted).__name__}"
        )
    if not mask.any():
        raise UsageError("planted is empty: recall needs at least one planted neuron")
    return mask


def _count(k: Any, size: int, what: str) -> int:
    """``k`` (an int count, or a float fraction in (0, 1]) as a count in ``1..size``."""
    if isinstance(k, bool) or not isinstance(k, int | float):
        raise UsageError(f"k must be a number of neurons (int) or a fraction in (0, 1] (float), got {k!r}")
    if isinstance(k, int):
        if not 1 <= k <= size:
            raise UsageError(f"k must be between 1 and {size} ({what}), got {k}")
        return k
    if not (math.isfinite(k) and 0 < k <= 1):
        raise UsageError(f"a fractional k must be in (0, 1], got {k!r} (give an int for a number of neurons)")
    count = math.floor(k * size + 0.5)
    if count < 1:
        raise UsageError(f"k={k!r} selects no neuron of {size} ({what}); use a fraction of at least {0.5 / size:.3g}")
    return count


def _top(values: Float[Tensor, " n"], count: int) -> tuple[Tensor, int]:
    """The indices of the ``count`` largest values (ties: lower index first), and how many
    values left out equal the smallest one selected."""
    order = torch.sort(values, descending=True, stable=True).indices
    chosen = order[:count]
    threshold = values[chosen[-1]]
    ties = int((values[order[count:]] == threshold).sum())
    return chosen, ties


def recall_at_k(scores: Any, planted: Any, k: int | float, *, per_layer: bool = True) -> Recall:
    """Recall@k of ``scores`` against the ``planted`` neurons (see the module docstring).

    Args:
        scores: :class:`~attribution.scores.AttributionScores` with neuron scores or a
            :class:`~attribution.peeling.Peeling` (ranked by ``importance``), or a
            ``[n_layers, d_mlp]`` tensor (larger = more important).
        planted: a boolean ``[n_layers, d_mlp]`` tensor, or an iterable of ``("neuron", layer,
            index)`` addresses (or labels such as ``"L1N7"``).
        k: neurons per layer (``int``; in all with ``per_layer=False``) or a fraction in
            ``(0, 1]`` (``float``) of each layer's (all) neurons, rounded half up.
        per_layer: Chang et al.'s per-layer top k (default), or the top k over all layers.

    Returns:
        A frozen :class:`Recall`. Ties break toward the lower layer, then the lower index.
    """
    values = _scores_tensor(scores)
    n_layers, width = values.shape
    mask = planted_mask(planted, (n_layers, width))
    if not isinstance(per_layer, bool):
        raise UsageError(f"per_layer must be True or False, got {per_layer!r}")
    selected = torch.zeros_like(mask)
    ties = 0
    if per_layer:
        count = _count(k, width, "the neurons of one layer")
        for layer in range(n_layers):
            chosen, tied = _top(values[layer], count)
            selected[layer, chosen] = True
            ties += tied
    else:
        count = _count(k, n_layers * width, "all neurons")
        chosen, ties = _top(values.flatten(), count)
        selected.view(-1)[chosen] = True
    hits_by_layer = (selected & mask).sum(-1)
    planted_by_layer = mask.sum(-1)
    hits = int(hits_by_layer.sum())
    n_planted = int(planted_by_layer.sum())
    return Recall(
        recall=hits / n_planted,
        hits=hits,
        n_planted=n_planted,
        selected=int(selected.sum()),
        per_layer=per_layer,
        k_per_layer=count if per_layer else None,
        per_layer_hits=tuple(hits_by_layer.tolist()),
        per_layer_planted=tuple(planted_by_layer.tolist()),
        per_layer_selected=tuple(selected.sum(-1).tolist()),
        n_neurons=n_layers * width,
        boundary_ties=ties,
    )
