"""Gradient x activation and attribution patching: every component's effect from one backward pass.

Exact patching (:mod:`attribution.patching`) costs a forward pass per component (batched or
not). Its first-order Taylor expansion costs one. If the metric ``M`` is a smooth function of an
activation ``a``, patching ``a`` to a baseline ``a'`` changes it by about::

    M(a') - M(a)  ~  (a' - a) . dM/da

and ``dM/da`` for *every* neuron and head comes out of one backward pass. Per batch:

- ``baseline="zero"``: ``(0 - a) . dM/da`` on the clean run: gradient x activation
  (with the sign of an ablation). One forward, one backward.
- ``"mean"`` / ``"resample"``: ``(a_baseline - a) . dM/da``; the mean comes from a pass over the
  donor set made once, the donor activations from a second forward.
- ``"corrupt"``, ``direction="ablate"``: ``(a_corrupt - a_clean) . dM/da`` at the clean run; with
  several noise samples the corrupted activations are averaged first (the estimate is linear in
  them). Two forwards, one backward.
- ``"corrupt"``, ``direction="denoise"``: ``(a_clean - a_corrupt) . dM/da`` at the *corrupted*
  run: attribution patching (Nanda 2023; Syed et al. 2023), the linear estimate of ROME's
  indirect effect. Two forwards (clean, corrupted with gradient), one backward.

The dot product runs over a neuron's positions (the chosen ``positions``) and, for a head,
over its ``d_head`` values of ``hook_z`` at those positions; estimates follow the same sign
convention as exact patching (effect of the intervention on the metric).

Where the estimate is poor: it is exact for a metric linear in ``a`` and good for small
changes. It degrades when the patch is large compared to the curvature of the metric: zero- or
mean-ablating neurons with large activations (the GELU and the final softmax saturate, so
``dM/da`` at the clean point understates the drop), heads whose removal changes an attention
pattern downstream (patching a head's ``z`` moves every later query and key), and
log-probabilities near 0 (the metric saturates: once a fact is certain, one component's
gradient is small even if removing it would matter). Corrupt baselines, whose activations are
close to the clean ones, are where it tracks exact patching best, which is why
:func:`attribution.attribute` defaults to them. Check any estimate with
:func:`attribution.validate`: it patches the
top-k components (and k random ones) exactly in the same settings and reports the rank
correlation.
"""

from __future__ import annotations

from typing import Any

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from attribution.baselines import Setup
from attribution.runs import forward
from loka.models.recording import record

__all__ = ["grad_x_act"]


def grad_x_act(
    model: Any, setup: Setup, hooks: tuple[str, ...]
) -> tuple[dict[str, Float[Tensor, "fact unit"]], Float[Tensor, " fact"]]:
    """First-order estimates of patching every unit (neuron of ``hook_post``, head of
    ``hook_z``) at each of ``hooks``, per fact; and the unpatched metric of every fact."""
    n_facts = setup.n_facts
    run, targets, mask = setup.base, setup.targets, setup.mask
    sources = dict(setup.sources)
    samples = setup.samples
    if setup.base_repeats > 1:
        # The base rows are copies of the clean rows: one gradient serves every sample, and the
        # estimate is linear in the baseline, so average the baseline over samples instead.
        run, targets = run.first(n_facts), targets.first(n_facts)
        mask = mask[:n_facts]
        sources = {
            name: None
            if src is None
            else einops.reduce(src.float(), "(sample fact) ... -> fact ...", "mean", sample=setup.base_repeats)
            for name, src in sources.items()
        }
        samples = 1

    acts: dict[str, Tensor] = {}
    values = forward(model, run, targets, hooks=[record(acts, name, detach=False) for name in hooks], grad=True)[0]
    missing = [name for name in hooks if name not in acts or not acts[name].requires_grad]
    if missing:
        raise RuntimeError(
            f"no gradient reaches {missing[0]}; the model's activations there do not depend on its input"
        )
    grads = torch.autograd.grad(values.sum(), [acts[name] for name in hooks])

    scores: dict[str, Tensor] = {}
    for name, grad in zip(hooks, grads, strict=True):
        act = acts[name].detach().float()
        src = sources.get(name)
        delta = -act if src is None else src.float() - act
        product = delta * grad.float()
        product = product * mask.view(*mask.shape, *[1] * (product.ndim - 2))
        if product.ndim == 4:  # hook_z: [row, pos, head, d_head]
            per_row = einops.reduce(product, "row pos head d_head -> row head", "sum")
        else:  # hook_post: [row, pos, neuron]
            per_row = einops.reduce(product, "row pos neuron -> row neuron", "sum")
        scores[name] = einops.reduce(per_row, "(sample fact) unit -> fact unit", "mean", sample=samples).cpu()
    base = einops.reduce(values.detach(), "(sample fact) -> fact", "mean", sample=samples).cpu()
    return scores, base
