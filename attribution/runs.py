"""Forward passes with hooks: the one place attribution runs a model.

A :class:`Run` is a batch of rows to feed the model: token ids, their attention mask, and
optionally noise to add to the token embeddings (ROME's corruption). :func:`forward` runs it,
possibly as ``copies`` stacked copies (the batch dimension then carries the patch index, row
``c * rows + r`` being copy ``c`` of row ``r``), with extra hooks, and returns the metric of every
row of every copy. Activations are recorded with :func:`loka.models.recording.record`, the hook both
tools share.

All hooks are added through ``model.hooks(...)``, a context manager that removes them on exit,
also when the forward raises: attribution never leaves anything behind on the model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from attribution.metric import Targets, gather_hook
from loka.models.recording import Hook

__all__ = ["Run", "forward", "EMBED_HOOK"]

EMBED_HOOK = "hook_embed"
"""The token embeddings, before position embeddings are added (where ROME adds its noise)."""


@dataclass(frozen=True, eq=False)  # holds tensors: compare fields, not objects
class Run:
    """Rows to feed the model: ``[BOS] + prompt + target`` ids, right-padded, and optional noise
    to add to the token embeddings (zero where there is none)."""

    input_ids: Int[Tensor, "row pos"]
    attention_mask: Int[Tensor, "row pos"]
    embed_noise: Float[Tensor, "row pos d_model"] | None = None

    @property
    def rows(self) -> int:
        return self.input_ids.shape[0]

    def first(self, n: int) -> Run:
        """The first ``n`` rows."""
        noise = None if self.embed_noise is None else self.embed_noise[:n]
        return Run(self.input_ids[:n], self.attention_mask[:n], noise)

    def repeat(self, n: int) -> Run:
        """``n`` stacked copies of these rows (copy-major)."""
        if n == 1:
            return self
        noise = None if self.embed_noise is None else self.embed_noise.repeat(n, 1, 1)
        return Run(self.input_ids.repeat(n, 1), self.attention_mask.repeat(n, 1), noise)


def _noise_hook(noise: Tensor, copies: int) -> Hook:
    def add_noise(embed: Float[Tensor, "copy_row pos d_model"], hook: Any) -> Tensor:
        stacked = einops.repeat(noise, "row pos d -> (copy row) pos d", copy=copies)
        return embed + stacked.to(embed.dtype)

    return EMBED_HOOK, add_noise


def _leaf_embed_hook() -> Hook:
    """Make the embeddings require grad when the weights do not (a frozen model), so that
    gradients reach the activations; the weights' own ``requires_grad`` is never touched."""

    def leaf(embed: Tensor, hook: Any) -> Tensor:
        return embed if embed.requires_grad else embed.detach().requires_grad_(True)

    return EMBED_HOOK, leaf


def forward(
    model: Any,
    run: Run,
    targets: Targets,
    *,
    copies: int = 1,
    hooks: Iterable[Hook] = (),
    grad: bool = False,
) -> Float[Tensor, "copy row"]:
    """The metric of every row of ``copies`` stacked copies of ``run``, with ``hooks`` in place.

    With ``grad=True`` the result carries the autograd graph (for gradients with respect to
    activations recorded by ``hooks``); otherwise the pass runs under ``torch.no_grad``.
    """
    stacked = run.repeat(copies)
    all_hooks: list[Hook] = []
    if run.embed_noise is not None:
        all_hooks.append(_noise_hook(run.embed_noise, copies))
    if grad:
        all_hooks.append(_leaf_embed_hook())
    all_hooks += [*hooks, gather_hook(targets)]
    with torch.set_grad_enabled(grad), model.hooks(fwd_hooks=all_hooks):
        target_logits = model(stacked.input_ids, attention_mask=stacked.attention_mask)
        values = targets(target_logits)
    return einops.rearrange(values, "(copy row) -> copy row", copy=copies)
