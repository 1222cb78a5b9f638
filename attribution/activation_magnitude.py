"""Activation magnitude: how much a component writes into the residual stream on these facts.

The cheapest locator, and the weakest one in Chang et al. (2024, "Activations": Recall@0.5% of
52 on GPT-2 where learned masks reach 94), kept as the floor every other method must beat. It
asks no question about the metric: a component that writes a lot on the facts' tokens is
presumed to matter for them. No gradient, one forward per batch.

- **neuron** ``i`` of layer ``l``: neuron activation ``a`` (``blocks.{l}.mlp.hook_post``) times
  the norm of the row it writes through, TL's ``W_out[l][i]`` (a ``d_model`` vector)::

      score = mean over facts of ( mean over positions of |a| ) * ||W_out[l][i]||_2

  ``|a| * ||W_out[l][i]||`` is exactly the norm of the vector the neuron adds to the residual
  stream at that token. (Chang et al.'s ``largest_act`` takes ``|mean a|`` over the positions,
  so that positive and negative activations cancel; the mean of ``|a|`` measures what is
  written, whatever its sign.)
- **head** ``h`` of layer ``l``: ``z`` (``blocks.{l}.attn.hook_z``, a ``d_head`` vector per token)
  writes ``z @ W_O[l][h]`` (``W_O[l][h]``: ``d_head x d_model``)::

      score = mean over facts of ( mean over positions of ||z||_2 ) * ||W_O[l][h]||_spectral

  The spectral norm (the largest singular value) is the largest factor by which ``W_O[l][h]``
  can scale ``z``, so ``||z|| * ||W_O||_2`` is the tightest bound on the norm of what the head
  writes that depends on ``||z||`` alone; for ``d_head = 1`` it is the neuron formula. (The
  Frobenius norm, ``sqrt(sum of squared singular values)``, is looser by up to
  ``sqrt(d_head)`` and grows with the head's rank, not with what it can write.)

Positions are those of ``positions`` (default: every real token of ``[BOS] + prompt + target``);
each fact's positions are averaged first, then the facts, so a long fact weighs as much as a
short one, as in every other method here.

**Sign.** Magnitudes are not effects on the metric. So that the scores plug into the rest of
loka (``importance``, ``top``, ``contrast``, ablation masks) with "larger importance = carries
more", they are returned in the ``direction="ablate"`` convention (negative = needed): the
stored score is ``-magnitude`` and :meth:`~attribution.scores.AttributionScores.importance` is
the magnitude. The metadata says so (``options["score"]``).
"""

from __future__ import annotations

from typing import Any

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from attribution.baselines import Setup
from attribution.runs import forward
from loka.base.components import ComponentShapes, Kind
from loka.base.errors import UsageError
from loka.models import architecture, attention_layout
from loka.models.recording import record
from loka.models.weights import weight_values

__all__ = ["activation_sizes", "output_norms", "SCORE_DESCRIPTION"]

SCORE_DESCRIPTION = (
    "-(mean over facts of the mean over positions of |neuron activation| x ||W_out row||_2; "
    "heads: ||z_h||_2 x spectral norm of W_O[h]); importance() is the magnitude"
)


@torch.no_grad()
def activation_sizes(
    model: Any, setup: Setup, hooks: tuple[str, ...]
) -> tuple[dict[str, Float[Tensor, "fact unit"]], Float[Tensor, " fact"]]:
    """Per fact, the mean over the masked positions of ``|a|`` (neurons of ``hook_post``) or
    ``||z_h||_2`` (heads of ``hook_z``) at each of ``hooks``; and the clean metric per fact."""
    if setup.samples != 1 or setup.base_repeats != 1:
        raise UsageError("activation magnitudes are read on the clean run, one sample per fact")
    acts: dict[str, Tensor] = {}
    base = forward(model, setup.base, setup.targets, hooks=[record(acts, name) for name in hooks])[0]
    mask = setup.mask.float()
    counts = mask.sum(-1).clamp(min=1)  # [row]
    out: dict[str, Tensor] = {}
    for name in hooks:
        act = acts[name].float()
        size = act.norm(dim=-1) if act.ndim == 4 else act.abs()  # [row, pos, unit]
        total = einops.einsum(size, mask.to(size.device), "row pos unit, row pos -> row unit")
        out[name] = total.cpu() / counts.cpu()[:, None]
    return out, base.cpu()


@torch.no_grad()
def output_norms(model: Any, kind: Kind) -> Float[Tensor, "n_layers unit"]:
    """``||W_out[l][i]||_2`` for every neuron (``kind="neuron"``) or the spectral norm of
    ``W_O[l][h]`` for every head (``kind="head"``), read through :mod:`loka.models` (float64)."""
    spec = architecture(model)
    shapes = ComponentShapes.of(model)
    template, dim = (
        (spec.mlp_out_weight, spec.mlp_out_neuron_dim)
        if kind == "neuron"
        else (spec.attn_out_weight, spec.attn_out_head_dim)
    )
    names = [spec.name(template, layer) for layer in range(shapes.n_layers)]
    weights = weight_values(model, names)
    d_head = attention_layout(model).d_head
    rows = []
    for name in names:
        weight = weights[name]
        if not weight.is_floating_point():
            raise UsageError(
                f"activation_magnitude reads the output weights, and {name} is {weight.dtype} (a quantized model?); "
                "use a model with floating-point weights"
            )
        weight = weight.detach().to(torch.float64).movedim(dim, 0)  # [unit(s) along dim 0, d_model]
        if kind == "neuron":
            rows.append(weight.norm(dim=1).cpu())
        else:
            blocks = weight.reshape(shapes.n_heads, d_head, weight.shape[-1])  # [head, d_head, d_model]
            rows.append(torch.linalg.matrix_norm(blocks, ord=2).cpu())
    return torch.stack(rows)
