"""Weight slices: the weights one component reads or writes through, in a live model.

A *component* is a neuron (index ``i`` of ``blocks.{l}.mlp.hook_post``, shape
``[batch, pos, d_mlp]``) or an attention head (index ``h`` of ``blocks.{l}.attn.hook_z``, shape
``[batch, pos, n_heads, d_head]``). Each writes into the residual stream through a slice of one
HF weight matrix: neuron ``i`` through row/column ``i`` of the MLP output projection (TL's
``W_out[l][i]``), head ``h`` through the ``d_head``-wide block ``h`` of the attention output
projection (TL's ``W_O[l][h]``). :func:`neuron_output_weights` and :func:`head_output_weights`
return that slice as a :class:`WeightSlice`; zeroing it is exactly zero-ablating the hook
activation, permanently and in the weights. :func:`neuron_input_weights` and
:func:`head_input_weights` give the slices a component reads through.

The bridge wraps HF submodules in place, so inside ``bridge.original_model`` a parameter has
aliases such as ``transformer.h.0._original_component.mlp._original_component.c_proj...``
plus bridge-only entries (a zero ``lm_head.bias``). Everything here speaks the plain HF names
of the checkpoint on disk; :func:`hf_state_dict` gives that view of either kind of model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from loka.base.errors import UsageError
from loka.models.architectures import Model, architecture, hf_model

__all__ = [
    "AttentionLayout",
    "WeightSlice",
    "attention_layout",
    "model_dims",
    "head_input_weights",
    "head_output_weights",
    "hf_state_dict",
    "neuron_input_weights",
    "offload_hook",
    "weight_values",
    "neuron_output_weights",
]


def _unwrap(module: nn.Module) -> nn.Module:
    """Descend through TL bridge wrappers to the HF module that owns the weights."""
    while isinstance(getattr(module, "original_component", None), nn.Module):
        module = module.original_component
    return module


def is_wrapped(model: PreTrainedModel) -> bool:
    """Whether TL bridge components have been swapped into ``model``'s module tree."""
    return any(_unwrap(m) is not m for m in model.modules())


def hf_submodule(model: PreTrainedModel, name: str) -> nn.Module:
    """The HF module that plain HF name ``name`` ("" for the model) refers to, bridge wrappers or not."""
    module: nn.Module = model
    for part in name.split(".") if name else ():
        module = getattr(_unwrap(module), part)
    return _unwrap(module)


def offload_hook(model: Model, module_name: str) -> Any | None:
    """The accelerate hook (``AlignDevicesHook`` with ``offload=True``) that holds the weights of
    module ``module_name`` (plain HF name) between calls, or None when its weights are in memory.

    A model loaded with a ``device_map`` that offloads a module (to ``"disk"``, or to the CPU
    beside GPUs) keeps that module's tensors on ``meta``; the hook's ``weights_map`` holds their
    values (on the CPU, or memory-mapped from disk) and loads them onto ``execution_device`` for
    each forward.
    """
    hook = getattr(hf_submodule(hf_model(model), module_name), "_hf_hook", None)
    pending = [hook]
    while pending:
        candidate = pending.pop()
        if candidate is None:
            continue
        pending.extend(getattr(candidate, "hooks", ()))  # a SequentialHook
        if getattr(candidate, "offload", False) and getattr(candidate, "weights_map", None) is not None:
            return candidate
    return None


def weight_values(model: Model, names: Iterable[str] | None = None) -> dict[str, Tensor]:
    """The values of ``model``'s weights ``names`` (default: all), under plain HF names.

    Like :func:`hf_state_dict` (live tensors, not copies), except that a weight accelerate
    offloads (``meta`` in the module between calls) is read from its hook's ``weights_map``:
    a CPU tensor, or memory-mapped from disk; never copied to the execution device here.
    """
    state = hf_state_dict(model)
    chosen = list(state) if names is None else list(names)
    unknown = [name for name in chosen if name not in state]
    if unknown:
        raise KeyError(f"{type(hf_model(model)).__name__} has no weight named {unknown[0]!r}.")
    out = {}
    for name in chosen:
        tensor = state[name]
        if tensor.is_meta:
            module_name, _, leaf = name.rpartition(".")
            hook = offload_hook(model, module_name)
            if hook is None or leaf not in hook.weights_map:
                raise UsageError(f"weight {name} is on the meta device and no offload hook holds its value")
            tensor = hook.weights_map[leaf]
        out[name] = tensor
    return out


def get_tensor(model: PreTrainedModel, name: str) -> Tensor:
    """The live parameter (or buffer) that HF name ``name`` refers to, bridge wrappers or not."""
    module: nn.Module = model
    *path, leaf = name.split(".")
    try:
        for part in path:
            module = getattr(_unwrap(module), part)
        tensor = getattr(_unwrap(module), leaf)
    except AttributeError as err:
        raise KeyError(f"{type(model).__name__} has no parameter named {name!r}.") from err
    if not isinstance(tensor, Tensor):
        raise KeyError(f"{name!r} in {type(model).__name__} is not a tensor.")
    return tensor


@dataclass(frozen=True)
class WeightSlice:
    """A contiguous block of one HF parameter: ``param.narrow(dim, start, stop - start)``.

    It names the weights a single component reads or writes through (see
    ``neuron_output_weights`` and ``head_output_weights``), so that an ablation can zero or
    edit them in place and a checkpoint can record which entries it changed. ``name`` is the
    plain HF state-dict name, valid for the model on disk and for the same model inside a
    ``TransformerBridge``.
    """

    name: str
    dim: int
    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise UsageError(f"need 0 <= start < stop, got start={self.start}, stop={self.stop}.")

    def of(self, model: Model) -> Tensor:
        """The live view of this slice in ``model`` (bridge or HF); in-place edits write it."""
        param = get_tensor(hf_model(model), self.name)
        return param.narrow(self.dim, self.start, self.stop - self.start)


@dataclass(frozen=True)
class Dims:
    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int


def model_dims(model: Model) -> Dims:
    """Layer count and widths of ``model``, read from its config and its weights."""
    hf = hf_model(model)
    spec = architecture(model)
    config = hf.config
    n_layers = int(config.num_hidden_layers)
    n_heads = int(config.num_attention_heads)
    w_out = get_tensor(hf, spec.name(spec.mlp_out_weight, 0))
    w_o = get_tensor(hf, spec.name(spec.attn_out_weight, 0))
    return Dims(
        n_layers=n_layers,
        n_heads=n_heads,
        d_head=w_o.shape[spec.attn_out_head_dim] // n_heads,
        d_mlp=w_out.shape[spec.mlp_out_neuron_dim],
        d_vocab=int(config.vocab_size),
    )


def _check_range(what: str, value: int, size: int) -> None:
    if not 0 <= value < size:
        raise UsageError(f"{what} must be in range(0, {size}) for this model, got {value}.")


def neuron_output_weights(model: Model, layer: int, index: int) -> WeightSlice:
    """The slice of the MLP output projection (``W_out[layer][index]``) that neuron ``index``
    of ``blocks.{layer}.mlp.hook_post`` writes through: zeroing it zero-ablates the neuron."""
    spec, dims = architecture(model), model_dims(model)
    _check_range("layer", layer, dims.n_layers)
    _check_range("neuron index", index, dims.d_mlp)
    return WeightSlice(spec.name(spec.mlp_out_weight, layer), spec.mlp_out_neuron_dim, index, index + 1)


def neuron_input_weights(model: Model, layer: int, index: int) -> tuple[WeightSlice, ...]:
    """The slices of the MLP input projection(s) and their biases that compute neuron ``index``'s
    pre-activation (``W_in``, plus ``W_gate`` for gated MLPs), weights first."""
    spec, dims = architecture(model), model_dims(model)
    _check_range("layer", layer, dims.n_layers)
    _check_range("neuron index", index, dims.d_mlp)
    weights = [WeightSlice(spec.name(t, layer), spec.mlp_in_neuron_dim, index, index + 1) for t in spec.mlp_in_weights]
    biases = [WeightSlice(spec.name(t, layer), 0, index, index + 1) for t in spec.mlp_in_biases]
    return (*weights, *biases)


def head_output_weights(model: Model, layer: int, head: int) -> WeightSlice:
    """The ``d_head``-wide block of the attention output projection (``W_O[layer][head]``) that
    head ``head`` of ``blocks.{layer}.attn.hook_z`` writes through: zeroing it zero-ablates
    the head."""
    spec, dims = architecture(model), model_dims(model)
    _check_range("layer", layer, dims.n_layers)
    _check_range("head", head, dims.n_heads)
    start = head * dims.d_head
    return WeightSlice(spec.name(spec.attn_out_weight, layer), spec.attn_out_head_dim, start, start + dims.d_head)


@dataclass(frozen=True)
class AttentionLayout:
    """Head geometry of a model: query heads, key/value heads and their width."""

    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int


def attention_layout(model: Model) -> AttentionLayout:
    """The head geometry of ``model`` (``n_kv_heads < n_heads`` under grouped-query attention)."""
    config = hf_model(model).config
    n_heads = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_heads)
    return AttentionLayout(
        n_heads=n_heads, n_kv_heads=n_kv, d_head=model_dims(model).d_head, d_model=int(config.hidden_size)
    )


def _with_bias(names: Iterable[str], weight: WeightSlice, dim_of_bias: int = 0) -> list[WeightSlice]:
    """``weight`` and, if the model has it, the matching slice of the bias next to it."""
    out = [weight]
    bias = weight.name.removesuffix(".weight") + ".bias"
    if bias in names:
        out.append(WeightSlice(bias, dim_of_bias, weight.start, weight.stop))
    return out


def head_input_weights(
    model: Model,
    layer: int,
    head: int,
    *,
    masked_heads: Iterable[int] | None = None,
    names: set[str] | None = None,
    layout: AttentionLayout | None = None,
) -> tuple[WeightSlice, ...]:
    """The query/key/value slices (weights and biases) that head ``head`` of ``layer`` reads through
    (the layouts are in :mod:`loka.models.architectures`).

    For grouped-query attention, the shared key/value rows are included only when every query
    head of the group is in ``masked_heads`` (default: just ``head``), so that an edit of these
    slices never changes what another head computes. ``names`` (the model's HF parameter names)
    and ``layout`` may be passed by a caller that asks for many heads, to compute them once.
    """
    spec = architecture(model)
    names = set(hf_state_dict(model)) if names is None else names
    geo = attention_layout(model) if layout is None else layout
    _check_range("layer", layer, int(hf_model(model).config.num_hidden_layers))
    _check_range("head", head, geo.n_heads)
    d, dim = geo.d_head, spec.attn_in_head_dim
    weights = [spec.name(template, layer) for template in spec.attn_in_weights]
    if spec.attn_in_layout == "fused":  # [q | k | v], each d_model wide, head h at h * d_head in each
        slices: list[WeightSlice] = []
        for part in range(3):
            start = part * geo.d_model + head * d
            slices += _with_bias(names, WeightSlice(weights[0], dim, start, start + d))
        return tuple(slices)
    if spec.attn_in_layout == "interleaved":  # per head [q_h, k_h, v_h]
        return tuple(_with_bias(names, WeightSlice(weights[0], dim, head * 3 * d, (head + 1) * 3 * d)))
    query, key, value = weights  # "separate"
    slices = _with_bias(names, WeightSlice(query, dim, head * d, (head + 1) * d))
    group_size = geo.n_heads // geo.n_kv_heads
    group = head // group_size
    masked = {head} if masked_heads is None else set(masked_heads) | {head}
    if all(h in masked for h in range(group * group_size, (group + 1) * group_size)):
        for name in (key, value):
            slices += _with_bias(names, WeightSlice(name, dim, group * d, (group + 1) * d))
    return tuple(slices)


_HF_NAMES_CACHE: dict[tuple[type, str], tuple[str, ...]] = {}


def _hf_names(model: PreTrainedModel) -> tuple[str, ...]:
    """The state-dict names an unwrapped instance of ``model``'s class would have."""
    if not is_wrapped(model):
        return tuple(model.state_dict().keys())
    key = (type(model), model.config.to_json_string())
    if key not in _HF_NAMES_CACHE:
        # A bridge adds aliases and parameters of its own; a weightless twin names the real ones.
        with torch.device("meta"):
            twin = type(model)(model.config)
        _HF_NAMES_CACHE[key] = tuple(twin.state_dict().keys())
    return _HF_NAMES_CACHE[key]


def hf_state_dict(model: Model) -> dict[str, Tensor]:
    """``model``'s weights under their plain HF names (as ``save_pretrained`` would write them).

    For a plain HF model this is ``model.state_dict()``; for a bridge it drops TL's aliases and
    bridge-only entries. Tensors are live (not copies); tied weights appear under each name.
    """
    hf = hf_model(model)
    if not is_wrapped(hf):
        return hf.state_dict()
    return {name: get_tensor(hf, name).detach() for name in _hf_names(hf)}
