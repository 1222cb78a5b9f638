"""Choosing components from scores: the top-k rule behind ``AblationMask.from_scores``.

Attribution gives every component a score (larger = matters more for the knowledge to remove).
Selection turns scores into a boolean mask in one of two ways:

* ``k``: the ``k`` highest-scoring components;
* ``fraction``: the smallest number of top components that is at least ``fraction`` of the pool.

The pool is the neurons, the heads, or both ranked together (their scores must then be in the
same units, e.g. an estimated change in the loss). ``per_layer_max`` caps how many components of
one kind a single layer may contribute, so that one layer cannot take the whole budget. Ties are
broken deterministically: neurons before heads, then lower layer, then lower index.

``random_indices_like`` draws the control for a mask: in every layer, the same number of
components of each kind, chosen uniformly at random.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from loka.base.errors import UsageError

__all__ = ["count_for", "random_like_layers", "select_top"]


def count_for(pool_size: int, *, k: int | None, fraction: float | None) -> int:
    """How many components to choose from a pool of ``pool_size`` (exactly one of k / fraction)."""
    if (k is None) == (fraction is None):
        raise UsageError("give exactly one of k (a count) or fraction (a share of the components), not both or neither")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise UsageError(f"k must be a non-negative integer, got {k!r}")
        if k > pool_size:
            raise UsageError(f"k={k} is more than the {pool_size} components that can be chosen")
        return k
    assert fraction is not None
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise UsageError(f"fraction must be a number in (0, 1], got {fraction!r}")
    return min(pool_size, math.ceil(fraction * pool_size - 1e-9))


def _check_finite(name: str, scores: Tensor) -> None:
    bad = ~torch.isfinite(scores)
    if bad.any():
        layer, index = (int(i) for i in bad.nonzero()[0])
        raise UsageError(f"{name}[{layer}, {index}] is {scores[layer, index].item()}; scores must be finite")


def select_top(
    scores: dict[str, Float[Tensor, "n_layers width"]],
    count: int,
    per_layer_max: int | None,
) -> dict[str, Bool[Tensor, "n_layers width"]]:
    """Masks (one per kind in ``scores``, same shapes) with True at the ``count`` top components.

    ``scores`` maps a name (``"neurons"``, ``"heads"``) to ``[n_layers, width]`` scores, in
    tie-break order (neurons first).
    """
    if per_layer_max is not None and (
        isinstance(per_layer_max, bool) or not isinstance(per_layer_max, int) or per_layer_max < 1
    ):
        raise UsageError(f"per_layer_max must be a positive integer or None, got {per_layer_max!r}")
    flat, groups, sizes = [], [], []
    n_groups = 0
    for name, tensor in scores.items():
        if tensor.dim() != 2:
            raise UsageError(f"scores.{name} must be 2-d [n_layers, width], got shape {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise UsageError(f"scores.{name} must be a float tensor, got {tensor.dtype}")
        tensor = tensor.detach().to("cpu", torch.float64)
        _check_finite(f"scores.{name}", tensor)
        n_layers, width = tensor.shape
        flat.append(tensor.reshape(-1))
        # group = (kind, layer): the unit that per_layer_max caps
        groups.append(torch.arange(n_layers).repeat_interleave(width) + n_groups)
        n_groups += n_layers
        sizes.append(tensor.numel())
    values, group = torch.cat(flat), torch.cat(groups)
    order = torch.sort(values, descending=True, stable=True).indices
    if per_layer_max is not None:
        # rank of each sorted entry within its group: stable-sort by group, subtract group starts
        sorted_group = group[order]
        by_group = torch.sort(sorted_group, stable=True).indices
        counts = torch.bincount(sorted_group, minlength=n_groups)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(order)
        rank[by_group] = torch.arange(len(order)) - starts[sorted_group[by_group]]
        order = order[rank < per_layer_max]
        if count > len(order):
            raise UsageError(
                f"only {len(order)} components can be chosen with per_layer_max={per_layer_max}, "
                f"but {count} were asked for"
            )
    chosen = torch.zeros(len(values), dtype=torch.bool)
    chosen[order[:count]] = True
    out, start = {}, 0
    for (name, tensor), size in zip(scores.items(), sizes, strict=True):
        out[name] = chosen[start : start + size].reshape(tensor.shape)
        start += size
    return out


def random_like_layers(
    mask: Bool[Tensor, "n_layers width"], generator: torch.Generator
) -> Bool[Tensor, "n_layers width"]:
    """A mask with, in every layer, as many True entries as ``mask`` has, at random indices."""
    out = torch.zeros_like(mask)
    width = mask.shape[1]
    for layer, count in enumerate(mask.sum(dim=1).tolist()):
        if count:
            out[layer, torch.randperm(width, generator=generator)[:count]] = True
    return out
