"""Integrated gradients: the knowledge-neuron attribution (Dai et al. 2022), for neurons and heads.

Gradient x activation (:mod:`attribution.gradients`) reads the slope of the metric ``M`` at the
clean run only. Where ``M`` is saturated there (a fact the model is sure of: log-probability near
0), that slope says little about what removing a component does. Integrated gradients
(Sundararajan et al. 2017) walk the whole straight path from the zero baseline to the clean
activation ``a`` and average the slope along it::

    IG(a) = a * integral_0^1 dM/da'(alpha * a) d alpha
          ~ a * (1/m) * sum_{j=1..m} dM/da'  evaluated at  a' = (j/m) * a      (m = ``steps``)

the right Riemann sum that knowledge neurons use (Dai et al. 2022, eq. 5; Chang et al. 2024's
``knowledge_neuron.py`` with ``ig_steps=20``). By the fundamental theorem of calculus the exact
integral is *complete*: summed over the units of one hook it equals ``M(a) - M(0)``, the effect
of zero-ablating the whole hook (for a single unit this does not hold: only its path is
integrated while the others stay at their clean values; the sum over a hook is the one
completeness covers). The Riemann sum approaches it as ``steps`` grows.

**Which activations are scaled together.** The path scales every unit of one hook at once (all
neurons of ``blocks.{l}.mlp.hook_post``, or all heads of ``blocks.{l}.attn.hook_z``), at the
positions of the position mask, while every other hook is computed as usual (downstream layers
see the scaled activation). This is Dai et al.'s choice (their baseline scales one layer's
intermediate activations), and it is what makes one gradient serve every unit of the layer:
``steps`` forwards per hook instead of ``steps`` per unit. Scaling one unit at a time would cost
``d_mlp`` times more; scaling every layer at once would make a unit's path depend on the paths of
all other layers, which is no longer "this layer's contribution". With ``positions="last"`` the
path is Dai et al.'s exactly (they scale the activation at the answer position); the default
``positions="all"`` scales every token's activation of the layer together. (Chang et al. scale
one position at a time and average over positions; with log-probability sums and many positions
that costs a forward per position and step.)

The metric is the per-fact metric of :func:`attribution.attribute` (the target's log-probability,
:mod:`attribution.metric`), not Dai et al.'s probability: the log-probability is what every other
method here moves, and it is far less saturated for facts the model is sure of.

**Sign and relation to gradient x activation.** :func:`integrated_gradients` returns ``-IG``:
the estimate, by completeness, of ``M(ablated) - M(clean)`` under zero ablation, so the scores
follow the ``direction="ablate"`` convention of :mod:`attribution.scores` (negative = the fact
needs it; :meth:`~attribution.scores.AttributionScores.importance` is ``IG``). With ``steps=1``
the only point on the path is ``alpha = 1``, the clean run itself, so the score is
``-a * dM/da`` at the clean run: exactly ``method="grad_x_act", baseline="zero"``.

Cost: per batch of facts, one forward to record the clean activations, then for each hook
``steps`` forwards and backwards, batched as stacked copies (``chunk_size`` copies per forward,
the default as in exact patching: :func:`attribution.patching.default_chunk_size`).
"""

from __future__ import annotations

from typing import Any

import einops
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from attribution.baselines import Setup
from attribution.patching import default_chunk_size
from attribution.runs import forward
from loka.base.checks import check_number
from loka.base.errors import UsageError
from loka.models.recording import Hook, record

__all__ = ["integrated_gradients", "check_steps", "DEFAULT_STEPS"]

DEFAULT_STEPS = 20
"""Dai et al.'s and Chang et al.'s ``m``."""


def check_steps(steps: Any) -> int:
    """``steps`` if it is an integer >= 1, else a ValueError saying so."""
    return check_number("steps", steps, low=1, integer=True)


def _scaling_hook(
    name: str,
    alphas: Float[Tensor, " copy"],
    rows: int,
    mask: Bool[Tensor, "row pos"],
    leaves: dict[str, Tensor],
) -> Hook:
    """A hook that replaces the activation at ``name`` of ``copies * rows`` stacked rows by
    ``alphas[c] * activation`` at the masked positions of copy ``c`` (unchanged elsewhere), as a
    leaf that records the gradient with respect to the scaled activation in ``leaves[name]``."""

    def scale(activation: Tensor, hook: Any) -> Tensor:
        copies = alphas.shape[0]
        factor = alphas.to(activation.device, activation.dtype).repeat_interleave(rows)  # copy-major rows
        where = mask.to(activation.device).repeat(copies, 1)
        shape = (*where.shape, *[1] * (activation.ndim - 2))
        clean = activation.detach()
        scaled = torch.where(where.view(shape), clean * factor.view(-1, *[1] * (activation.ndim - 1)), clean)
        scaled.requires_grad_(True)
        leaves[name] = scaled
        return scaled

    return name, scale


def integrated_gradients(
    model: Any,
    setup: Setup,
    hooks: tuple[str, ...],
    *,
    steps: int = DEFAULT_STEPS,
    chunk_size: int | None = None,
) -> tuple[dict[str, Float[Tensor, "fact unit"]], Float[Tensor, " fact"]]:
    """``-IG`` of every unit (neuron of ``hook_post``, head of ``hook_z``) at each of ``hooks``,
    per fact, from the zero baseline with ``steps`` right Riemann steps (see the module
    docstring); and the clean metric of every fact.

    ``setup`` must be a zero-baseline ablation setup (clean base run, one sample).
    """
    steps = check_steps(steps)
    if setup.samples != 1 or setup.base_repeats != 1 or any(src is not None for src in setup.sources.values()):
        raise UsageError("integrated gradients integrate from the zero baseline on the clean run (baseline='zero')")
    run, targets, mask = setup.base, setup.targets, setup.mask
    rows, width = run.input_ids.shape
    if chunk_size is None:
        chunk_size = default_chunk_size(model, rows * width)
    chunk_size = check_number("chunk_size", chunk_size, low=1, integer=True)

    clean: dict[str, Tensor] = {}
    base = forward(model, run, targets, hooks=[record(clean, name) for name in hooks])[0]  # [row]
    alphas = torch.arange(1, steps + 1, dtype=torch.float64) / steps

    scores: dict[str, Tensor] = {}
    for name in hooks:
        act = clean[name]
        summed = torch.zeros(act.shape, dtype=torch.float32, device=act.device)  # sum of gradients over steps
        for start in range(0, steps, chunk_size):
            chunk = alphas[start : start + chunk_size]
            leaves: dict[str, Tensor] = {}
            values = forward(
                model,
                run,
                targets,
                copies=len(chunk),
                hooks=[_scaling_hook(name, chunk, rows, mask, leaves)],
                grad=True,
            )
            if name not in leaves:
                raise RuntimeError(f"the hook {name} did not run; the model has no such activation")
            (grad,) = torch.autograd.grad(values.sum(), leaves[name])
            summed += einops.reduce(grad.float(), "(copy row) ... -> row ...", "sum", row=rows)
        product = act.float() * summed / steps
        product = product * mask.to(product.device).view(*mask.shape, *[1] * (product.ndim - 2))
        if product.ndim == 4:  # hook_z: [row, pos, head, d_head]
            per_row = einops.reduce(product, "row pos head d_head -> row head", "sum")
        else:  # hook_post: [row, pos, neuron]
            per_row = einops.reduce(product, "row pos neuron -> row neuron", "sum")
        scores[name] = (-per_row).cpu()  # the ablate convention: M(0) - M(a) ~ -IG
    return scores, base.detach().cpu()
