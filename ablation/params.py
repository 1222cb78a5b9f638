"""Which weights belong to a component: the parameters a localized edit may change.

A neuron ``("neuron", l, i)`` owns the slices of the MLP input projection(s) that compute its
pre-activation (``W_in``, plus ``W_gate`` for Llama, and their biases, including Llama biases
switched on by ``bake(..., missing_bias="add")``) and the slice of the MLP
output projection it writes through (``W_out``). A head ``("head", l, h)`` owns its
``d_head``-wide blocks of the query, key and value projections (and biases) and of the attention
output projection (``W_O``). Output biases are shared by every component of a layer and belong
to none.

The neuron slices and ``W_O`` come from :mod:`loka.models`. The query/key/value layout is not
there yet, so it lives here, per architecture (it should move to ``loka.models`` next to
``ArchitectureSpec``):

* GPT-2: ``attn.c_attn`` is a ``Conv1D`` ``[d_model, 3 * d_model]``; head ``h``'s query is
  columns ``h*d_head : (h+1)*d_head``, key and value the same columns offset by ``d_model`` and
  ``2 * d_model``.
* GPT-NeoX: ``attention.query_key_value`` is an ``nn.Linear`` whose ``3 * d_model`` outputs are
  interleaved per head, ``[q_0, k_0, v_0, q_1, k_1, v_1, ...]``: head ``h`` owns rows
  ``h*3*d_head : (h+1)*3*d_head``.
* Llama: ``q_proj`` rows ``h*d_head : (h+1)*d_head``. With grouped-query attention a key/value
  head is shared by ``n_heads / n_kv_heads`` query heads; its ``k_proj`` / ``v_proj`` rows belong
  to a masked head only when *every* head of its group is masked, so that an edit never changes
  what an unmasked head computes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor

from loka.components import Component
from loka.models import (
    WeightSlice,
    architecture,
    head_output_weights,
    hf_model,
    hf_state_dict,
    neuron_input_weights,
    neuron_output_weights,
)

__all__ = ["AttentionLayout", "attention_layout", "component_weights", "head_input_weights", "parameter_masks"]


@dataclass(frozen=True)
class AttentionLayout:
    """Head geometry of a model: query heads, key/value heads and their width."""

    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int


def attention_layout(model: Any) -> AttentionLayout:
    config = hf_model(model).config
    n_heads = int(config.num_attention_heads)
    o = head_output_weights(model, 0, 0)
    d_head = o.stop - o.start
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_heads)
    return AttentionLayout(n_heads=n_heads, n_kv_heads=n_kv, d_head=d_head, d_model=int(config.hidden_size))


def _with_bias(names: set[str] | dict[str, Tensor], weight: WeightSlice, dim_of_bias: int = 0) -> list[WeightSlice]:
    """``weight`` and, if the model has it, the matching slice of the bias next to it."""
    out = [weight]
    bias = weight.name.removesuffix(".weight") + ".bias"
    if bias in names:
        out.append(WeightSlice(bias, dim_of_bias, weight.start, weight.stop))
    return out


def head_input_weights(
    model: Any, layer: int, head: int, *, masked_heads: Iterable[int] | None = None
) -> tuple[WeightSlice, ...]:
    """The query/key/value slices (weights and biases) that head ``head`` of ``layer`` reads through.

    For grouped-query attention, the shared key/value rows are included only when every query
    head of the group is in ``masked_heads`` (default: just ``head``).
    """
    return _head_input_weights(model, layer, head, masked_heads, set(hf_state_dict(model)), attention_layout(model))


def _head_input_weights(
    model: Any,
    layer: int,
    head: int,
    masked_heads: Iterable[int] | None,
    state: set[str],
    geo: AttentionLayout,
) -> tuple[WeightSlice, ...]:
    spec = architecture(model)
    if not 0 <= layer < int(hf_model(model).config.num_hidden_layers):
        raise ValueError(f"layer must be in range(0, {hf_model(model).config.num_hidden_layers}), got {layer}")
    if not 0 <= head < geo.n_heads:
        raise ValueError(f"head must be in range(0, {geo.n_heads}), got {head}")
    d = geo.d_head
    if spec.model_type == "gpt2":
        name = f"transformer.h.{layer}.attn.c_attn.weight"  # Conv1D [d_model, 3 * d_model]
        slices: list[WeightSlice] = []
        for part in range(3):
            start = part * geo.d_model + head * d
            slices += _with_bias(state, WeightSlice(name, 1, start, start + d))
        return tuple(slices)
    if spec.model_type == "gpt_neox":
        name = f"gpt_neox.layers.{layer}.attention.query_key_value.weight"  # Linear, per-head [q, k, v]
        return tuple(_with_bias(state, WeightSlice(name, 0, head * 3 * d, (head + 1) * 3 * d)))
    if spec.model_type == "llama":
        prefix = f"model.layers.{layer}.self_attn"
        slices = _with_bias(state, WeightSlice(f"{prefix}.q_proj.weight", 0, head * d, (head + 1) * d))
        group_size = geo.n_heads // geo.n_kv_heads
        group = head // group_size
        masked = {head} if masked_heads is None else set(masked_heads) | {head}
        if all(h in masked for h in range(group * group_size, (group + 1) * group_size)):
            for proj in ("k_proj", "v_proj"):
                slices += _with_bias(state, WeightSlice(f"{prefix}.{proj}.weight", 0, group * d, (group + 1) * d))
        return tuple(slices)
    raise ValueError(f"no query/key/value layout for model_type {spec.model_type!r}")  # pragma: no cover


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
            out[piece.name] = torch.zeros(state[piece.name].shape, dtype=torch.bool, device=state[piece.name].device)
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
        names, geo = set(state), attention_layout(model)
        for layer, index in heads.nonzero().tolist():
            masked = heads[layer].nonzero().flatten().tolist()
            for piece in _head_input_weights(model, layer, index, masked, names, geo):
                mark(piece)
            mark(head_output_weights(model, layer, index))
    return out
