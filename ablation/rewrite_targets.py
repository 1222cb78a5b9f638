"""The rewrite's targets: how the residual stream at the forget keys should change.

An erasure asks the forget prompts to say what the model says about people it does not know
(:func:`loka.scoring.unknown.prompt_distributions`, their mean next-token distribution over reference facts
of the same relation and template); an update asks for a new target. :func:`optimised_change` finds, per
prompt, the vector to add to the residual stream after the last edited layer that does so (a few
Adam steps, as in ROME/MEMIT); :func:`erase_change` is the ``erase_values="mean"`` alternative.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from ablation.rewrite_keys import (
    BATCH_SIZE,
    Positions,
    gather_positions,
    key_positions,
    read_keys,
    run_edited,
    w_out,
)
from loka.data.encoding import FactBatch
from loka.data.knowledge import KnowledgeSet, Prompts

__all__ = ["Loss", "erase_change", "nll_loss", "optimised_change"]


def erase_change(
    model: TransformerBridge,
    forget: Prompts,
    reference: KnowledgeSet,
    layers: Sequence[int],
    positions: Positions,
    forget_keys: Mapping[int, Tensor],
) -> Float[Tensor, "n cls d_model"]:
    """``sum_l (V*_l - V_l)``: each layer's value moved to the reference mean of its group."""
    ref = Prompts.of(reference)
    ref_keys, _ = read_keys(model, ref, layers, positions)
    change = torch.zeros(0)
    for layer in layers:
        means: dict[Any, Tensor] = {}
        for key in set(ref.groups) | {(g[0], None) for g in ref.groups} | {(None, None)}:
            rows = [i for i, g in enumerate(ref.groups) if key[0] in (None, g[0]) and key[1] in (None, g[1])]
            means[key] = ref_keys[layer][rows].mean(0)
        targets = torch.stack([
            means.get(g, means.get((g[0], None), means[(None, None)])) for g in forget.groups
        ])  # fmt: skip
        w = w_out(model, layer).double().to(targets.device)
        step = (targets - forget_keys[layer]) @ w
        change = step if change.numel() == 0 else change + step
    return change


Loss = Callable[[Tensor, FactBatch, slice], Tensor]


def nll_loss(logits_: Tensor, batch: FactBatch, rows: slice) -> Tensor:
    """Mean per-token ``-log p(target)`` (the update objective)."""
    return -(batch.target_log_probs(logits_).sum(-1) / batch.target_mask.sum(-1)).mean()


def optimised_change(
    model: TransformerBridge,
    prompts: Prompts,
    layer: int,
    positions: Positions,
    loss: Loss,
    *,
    steps: int,
    lr: float,
    norm_penalty: float,
) -> Float[Tensor, "n cls d_model"]:
    """Per prompt, a vector added after ``layer`` at the key positions, optimised as in ROME/MEMIT:
    a few Adam steps on ``loss + norm_penalty * |delta|^2 / |z|^2`` (``z`` the residual there)."""
    out = []
    for rows, batch in prompts.batches(model, BATCH_SIZE):
        index = key_positions(batch, positions)
        with torch.no_grad():
            _, store = run_edited(model, batch, resid_layer=layer)
            z_norm = gather_positions(store["resid"], index).norm(dim=-1).mean()
        delta = torch.zeros(*index.shape, store["resid"].shape[-1], device=index.device, requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=lr)

        def add(act: Tensor, index: Tensor = index, delta: Tensor = delta) -> Tensor:
            spread = torch.zeros_like(act).scatter_add(1, index.unsqueeze(-1).expand_as(delta), delta.to(act.dtype))
            return act + spread

        for _ in range(steps):
            optimizer.zero_grad()
            logits_, _ = run_edited(model, batch, resid_layer=layer, resid_add=add)
            penalty = norm_penalty * (delta.pow(2).sum(-1) / z_norm**2).mean()
            (loss(logits_, batch, rows) + penalty).backward()
            optimizer.step()
        out.append(delta.detach().double())
    return torch.cat(out)
