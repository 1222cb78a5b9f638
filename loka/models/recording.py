"""Recording activations through TransformerLens hooks: the one way both tools keep what a pass saw.

A TransformerLens hook is a pair ``(hook name, function)``; the function receives the activation
at that point of the forward pass and may return a replacement. :func:`record` is the hook that
keeps the activation it sees in a dict (by hook name) and passes it on unchanged; attribution
(its patched and gradient runs), ablation (``resample`` masks, the rewrite's keys) and the
mean activations below all record through it. :func:`class_means` averages recorded activations
over token classes (every real token, or ROME-style position classes) in one pass per batch.

Hooks are always added with ``model.hooks(fwd_hooks=...)``, which removes them when the block
exits, also through an exception, so recording never leaves anything behind on the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from loka.models import logits as model_logits

__all__ = ["Hook", "record", "class_means"]

Hook = tuple[str, Callable[[Tensor, Any], Tensor | None]]


def record(store: dict[str, Tensor], name: str, *, detach: bool = True) -> Hook:
    """A hook on ``name`` that stores its activation in ``store[name]`` and passes it on.

    ``detach=False`` keeps the activation in the autograd graph (for gradients with respect to
    it, or for later hooks that compute with it). The hook returns the activation rather than
    ``None``: the bridge shows some hooks a reshaped view (``hook_z`` is ``[batch, pos, n_heads,
    d_head]`` of a ``[batch, pos, n_heads * d_head]`` tensor) and only feeds that view on when a
    hook returns it, so returning it is what puts the recorded tensor in the autograd graph.
    """

    def keep(activation: Tensor, hook: Any) -> Tensor:
        store[name] = activation.detach() if detach else activation
        return activation

    return name, keep


@torch.no_grad()
def class_means(
    model: Any,
    batches: Iterable[tuple[Mapping[str, Tensor | None], Int[Tensor, "batch pos"]]],
    names: Sequence[str],
    n_classes: int,
) -> tuple[dict[str, Float[Tensor, "cls ..."]], Float[Tensor, " cls"]]:
    """Per hook of ``names``, the mean activation of each token class, and the tokens per class.

    ``batches`` yields the forward inputs of a batch (``input_ids`` and optionally
    ``attention_mask`` and ``position_ids``, on the model's device) with the class of every token
    (``[batch, pos]``, in ``0 .. n_classes - 1``; -1: not counted, e.g. padding). Means are float32
    ``[n_classes, *activation shape after pos]`` on the CPU; a class no token has is all zero
    (its count is 0: the caller decides what stands in for it).
    """
    sums: dict[str, Tensor] = {}
    shapes: dict[str, torch.Size] = {}
    counts = torch.zeros(n_classes)
    for inputs, classes in batches:
        store: dict[str, Tensor] = {}
        kwargs = dict(inputs)
        with model.hooks(fwd_hooks=[record(store, name) for name in names]):
            model_logits(model, kwargs.pop("input_ids"), **kwargs)  # type: ignore[arg-type]
        real = classes >= 0
        one_hot = torch.nn.functional.one_hot(classes[real], n_classes).float()  # [token, class]
        counts += one_hot.sum(0).cpu()
        for name in names:
            act = store[name]
            shapes[name] = act.shape[2:]
            flat = act[real.to(act.device)].float().flatten(1)  # [token, features]
            total = einops.einsum(one_hot.to(flat.device), flat, "token c, token f -> c f").cpu()
            sums[name] = sums[name] + total if name in sums else total
    per_token = counts.clamp(min=1)[:, None]
    return {name: (total / per_token).view(n_classes, *shapes[name]) for name, total in sums.items()}, counts
