"""Exact activation patching, batched: one forward pass patches many components at once.

Activation patching (ROME; Meng et al. 2022; TransformerLens ``patching.py``) measures what a
component does by intervening on it: run the model, replace the component's activation with
another value, and read how the metric moves. Here a component is an MLP neuron (one index of
``blocks.{l}.mlp.hook_post``) or an attention head (one index of ``blocks.{l}.attn.hook_z``,
all of its ``d_head`` values), and the replacement comes from a baseline
(:mod:`attribution.baselines`): zero, a mean, another fact's run, or a corrupted run. Each
component's effect is::

    effect = metric(run with the component patched) - metric(run unpatched)

averaged over samples and then over facts. In the ``"ablate"`` direction the run is the clean
fact and the patch is the baseline, so effect = metric(ablated) - metric(clean); in the
``"denoise"`` direction the run is corrupted and the patch restores the clean activation (ROME's
indirect effect).

TransformerLens's ``get_act_patch_*`` functions run one forward per component. Here the batch
dimension carries the patch index instead: a chunk of ``P`` interventions becomes one forward
over ``P`` stacked copies of the batch, and a hook at each patched site writes copy ``c``'s
patch into copy ``c`` only (for neurons, a chunk holds ``chunk_size`` neurons, spread over any
layers). The results equal TL's to float precision (the validation tests check this on the
testbed). What batching buys depends on the hardware: on a GPU a forward of one small batch is
mostly overhead, and one forward over many copies costs little more; on a CPU the arithmetic is
the same as TL's (every patch still needs a full forward), and the saving is the per-call
overhead and the unembedding, computed only at the positions the metric reads
(``bench/attribution.py`` measures it).

Interventions are described by a :class:`PatchPlan` (tensors, one entry per intervention), so
that whole-layer views (:mod:`attribution.tracing`, one intervention per layer and position) use
the same machinery.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from attribution.baselines import Setup
from attribution.runs import forward
from loka.base.components import Component, ComponentShapes, Kind, hook_name
from loka.base.errors import UsageError
from loka.models import hf_model, input_device
from loka.models.recording import Hook

__all__ = ["PatchPlan", "component_plan", "all_components", "patch_effects", "default_chunk_size", "CHUNK_BYTES"]

logger = logging.getLogger(__name__)

CHUNK_BYTES = {"cpu": 8 * 2**20, "cuda": 1024 * 2**20}
"""Default size of one patched forward, as the bytes of one layer's MLP activations
(copies x rows x positions x d_mlp). On a CPU larger forwards fall out of cache and run slower
per token than one copy at a time (measured on a 12 x 768 GPT-2: 1 copy of 8 x 64 tokens beats
4 or 30), so chunks stay small; on a GPU, per-forward overhead dominates and chunks are large."""


@dataclass(frozen=True, eq=False)  # holds tensors: compare fields, not objects
class PatchPlan:
    """Interventions, one per entry: at hook ``hooks[hook_index[i]]``, overwrite unit
    ``units[i]`` (a neuron or head index; ``-1`` for the whole activation vector) at position
    ``positions[i]`` (``-1`` for every position of the setup's position mask)."""

    hooks: tuple[str, ...]
    hook_index: Int[Tensor, " item"]
    units: Int[Tensor, " item"]
    positions: Int[Tensor, " item"]

    def __len__(self) -> int:
        return self.hook_index.shape[0]


def component_plan(components: Iterable[Component]) -> PatchPlan:
    """One intervention per component (every position of the position mask)."""
    components = list(components)
    hooks = tuple(dict.fromkeys(hook_name(c.kind, c.layer) for c in components))
    where = {name: i for i, name in enumerate(hooks)}
    return PatchPlan(
        hooks=hooks,
        hook_index=torch.tensor([where[hook_name(c.kind, c.layer)] for c in components], dtype=torch.long),
        units=torch.tensor([c.index for c in components], dtype=torch.long),
        positions=torch.full((len(components),), -1, dtype=torch.long),
    )


def all_components(shapes: ComponentShapes, kinds: Sequence[Kind]) -> list[Component]:
    """Every component of ``kinds``, kind by kind, in (layer, index) order."""
    out = []
    for kind in kinds:
        n_layers, width = shapes.shape(kind)
        out += [Component(kind, layer, index) for layer in range(n_layers) for index in range(width)]
    return out


def _patch_hook(
    name: str,
    *,
    copies: int,
    rows: int,
    selected: Int[Tensor, " n"],
    units: Int[Tensor, " n"],
    positions: Int[Tensor, " n"],
    mask: Bool[Tensor, "row pos"],
    source: Tensor | None,
) -> Hook:
    """A hook that writes ``source`` into copies ``selected`` of a ``copies * rows`` batch."""
    whole = bool((units < 0).all())
    if not whole and bool((units < 0).any()):
        raise ValueError(f"a patch plan mixes whole-activation and unit patches at {name}")

    def patch(activation: Tensor, hook: Any) -> Tensor:
        patched = activation.clone(memory_format=torch.contiguous_format)
        view = patched.view(copies, rows, *activation.shape[1:])
        width = activation.shape[1]
        one_hot = torch.nn.functional.one_hot(positions.clamp(min=0), width).bool()  # [n, pos]
        where = torch.where((positions < 0)[:, None, None], mask[None], one_hot[:, None, :])  # [n, row, pos]
        if whole:
            current = view[selected]  # [n, row, pos, ...]
            values = torch.zeros_like(current) if source is None else source.to(activation.dtype)[None]
            where = where.view(*where.shape, *[1] * (current.ndim - 3))
            view[selected] = torch.where(where, values, current)
        else:
            current = view[selected, :, :, units]  # [n, row, pos, *rest]
            if source is None:
                values = torch.zeros_like(current)
            else:
                values = source.to(activation.dtype)[:, :, units].movedim(2, 0)
            where = where.view(*where.shape, *[1] * (current.ndim - 3))
            view[selected, :, :, units] = torch.where(where, values, current)
        return patched

    return name, patch


def default_chunk_size(model: Any, tokens: int) -> int:
    """Patched copies per forward for a batch of ``tokens`` tokens (see :data:`CHUNK_BYTES`).

    The budget is the one of the device the forward runs on (:func:`loka.models.input_device`,
    also for a model spread over several GPUs by a ``device_map``: each GPU holds a layer's
    activations at a time); the bytes per activation are those of the input embedding's dtype,
    the dtype the residual stream is computed in (a quantized model's int8 weights are not).
    """
    weight = next(hf_model(model).get_input_embeddings().parameters(), None)
    element = weight.element_size() if weight is not None else 4
    budget = CHUNK_BYTES["cuda" if input_device(model).type == "cuda" else "cpu"]
    return max(1, budget // (tokens * model.cfg.d_mlp * element))


def patch_effects(
    model: Any,
    setup: Setup,
    plan: PatchPlan,
    *,
    chunk_size: int | None = None,
    progress: bool = False,
) -> tuple[Float[Tensor, "item fact"], Float[Tensor, " fact"]]:
    """The effect of every intervention of ``plan`` on every fact of ``setup``, and the
    unpatched metric of every fact (both averaged over samples)."""
    rows, width = setup.base.input_ids.shape
    if chunk_size is None:
        chunk_size = default_chunk_size(model, rows * width)
    if chunk_size < 1:
        raise UsageError(f"chunk_size must be at least 1, got {chunk_size}")
    device = setup.base.input_ids.device
    logger.debug(
        "patching %d interventions on %d rows x %d positions, %d per forward", len(plan), rows, width, chunk_size
    )
    base = forward(model, setup.base, setup.targets)[0]  # [row]
    effects = torch.empty(len(plan), setup.n_facts)
    starts = range(0, len(plan), chunk_size)
    for start in tqdm(starts, disable=not progress, desc="patching", leave=False):
        stop = min(start + chunk_size, len(plan))
        hook_index = plan.hook_index[start:stop]
        hooks = []
        for h, name in enumerate(plan.hooks):
            selected = (hook_index == h).nonzero().flatten()
            if selected.numel() == 0:
                continue
            hooks.append(
                _patch_hook(
                    name,
                    copies=stop - start,
                    rows=rows,
                    selected=selected.to(device),
                    units=plan.units[start:stop][selected].to(device),
                    positions=plan.positions[start:stop][selected].to(device),
                    mask=setup.mask,
                    source=setup.sources[name],
                )
            )
        patched = forward(model, setup.base, setup.targets, copies=stop - start, hooks=hooks)  # [copy, row]
        effects[start:stop] = setup.per_fact(patched - base).cpu()
    return effects, setup.per_fact(base).cpu()
