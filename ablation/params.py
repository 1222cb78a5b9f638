"""Which weights belong to a component: the parameters a localized edit may change.

A neuron ``("neuron", l, i)`` owns the slices of the MLP input projection(s) that compute its
pre-activation (``W_in``, plus ``W_gate`` for Llama, and their biases, including Llama biases
switched on by ``bake(..., missing_bias="add")``) and the slice of the MLP
output projection it writes through (``W_out``). A head ``("head", l, h)`` owns its
``d_head``-wide blocks of the query, key and value projections (and biases) and of the attention
output projection (``W_O``). Output biases are shared by every component of a layer and belong
to none.

Every slice comes from :mod:`loka.models` (:mod:`loka.models.weights`), which knows each
architecture's layout, the query/key/value layout included. With grouped-query attention (Llama)
a key/value head is shared by ``n_heads / n_kv_heads`` query heads; its ``k_proj`` / ``v_proj``
rows belong to a masked head only when *every* head of its group is masked, so that an edit never
changes what an unmasked head computes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from loka.base.components import Component
from loka.models import (
    WeightSlice,
    attention_layout,
    head_input_weights,
    head_output_weights,
    hf_state_dict,
    neuron_input_weights,
    neuron_output_weights,
)

__all__ = ["component_weights", "parameter_masks"]


def component_weights(
    model: Any, component: Component, *, masked_heads: Iterable[int] | None = None
) -> tuple[WeightSlice, ...]:
    """Every weight slice that ``component`` owns (see the module docstring)."""
    kind, layer, index = component
    if kind == "neuron":
        return (*neuron_input_weights(model, layer, index), neuron_output_weights(model, layer, index))
    inputs = head_input_weights(model, layer, index, masked_heads=masked_heads)
    return (*inputs, head_output_weights(model, layer, index))


def parameter_masks(
    model: Any,
    neurons: Bool[Tensor, "n_layers d_mlp"] | None,
    heads: Bool[Tensor, "n_layers n_heads"] | None,
) -> dict[str, Bool[Tensor, "*shape"]]:
    """HF parameter name -> bool tensor (the parameter's shape) True where a masked component owns it."""
    state = hf_state_dict(model)
    out: dict[str, Tensor] = {}

    def mark(piece: WeightSlice) -> None:
        if piece.name not in out:
            weight = state[piece.name]  # an offloaded weight (meta) gets its mask on the CPU
            where = "cpu" if weight.is_meta else weight.device
            out[piece.name] = torch.zeros(weight.shape, dtype=torch.bool, device=where)
        out[piece.name].narrow(piece.dim, piece.start, piece.stop - piece.start).fill_(True)

    if neurons is not None:
        for layer, index in neurons.nonzero().tolist():
            pieces = component_weights(model, Component("neuron", layer, index))
            for piece in pieces:
                mark(piece)
            for piece in pieces[:-1]:  # input weights: their biases too, where switched on (Llama mlp_bias)
                bias = piece.name.removesuffix(".weight") + ".bias"
                if piece.name.endswith(".weight") and bias in state and bias not in {p.name for p in pieces}:
                    mark(WeightSlice(bias, 0, index, index + 1))
    if heads is not None:
        names, layout = set(state), attention_layout(model)
        for layer, index in heads.nonzero().tolist():
            masked = heads[layer].nonzero().flatten().tolist()
            for piece in head_input_weights(model, layer, index, masked_heads=masked, names=names, layout=layout):
                mark(piece)
            mark(head_output_weights(model, layer, index))
    return out
