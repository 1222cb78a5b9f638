"""Copies: a fresh HF model from (changed) weights, re-wrapped for TransformerLens.

Edits never touch the model they are given; they return a new one, built from the weights
rather than by deep-copying the module tree: a bridge keeps private split copies of some
weights (GPT-NeoX query/key/value), so weights changed by name inside a bridge may not be the
ones its forward uses, and a deep copy would also carry over hooks. Every copy here builds a
plain HF model of the same class with empty (``meta``) parameters, then puts the weights of
``hf_state_dict(model)`` (or changed weights) in place: no random initialisation, no second
allocation. The caller edits that copy; :func:`same_kind_as` wraps it in a new bridge when the
input was one.

Three copies:

* :func:`plain_copy`: every weight cloned; the copy is fully independent of ``model``.
* :func:`shared_copy`: only the ``changed`` weights cloned; every other parameter *is* the
  original's tensor (same storage, ``requires_grad=False``). An edit of one layer then holds one
  layer's worth of new tensors instead of a second model. The price: an in-place write into a
  shared parameter of the copy (``w.of(copy).zero_()``, ``param.data.add_(...)``) also writes
  into ``model``, and the other way round. Only the changed parameters are safe to write;
  :func:`shares_storage` says which are shared, and :func:`materialize` turns such a copy into
  an independent one before anything edits it further.
* :func:`materialize`: ``plain_copy`` re-wrapped as the same kind of model.

A model spread over devices by a ``device_map`` is copied parameter by parameter onto each
parameter's own device, and the copy gets the same accelerate hooks (each module computes where
it computed before). A module whose weights accelerate offloads (to disk, or to the CPU beside
GPUs: ``meta`` in the module between calls, the values in its hook's ``weights_map``) stays
offloaded in the copy and reads the *same* offloaded values: they are loaded afresh for every
forward and never written in place, so sharing them is as safe as copying them, and a copy never
brings a whole offloaded model into memory. The weights an edit writes are the exception: the
copy functions take their names (``onload`` / ``changed``), read them (and the other tensors of
their module) into memory on the module's execution device, and that module then computes from
memory without offloading.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from loka.base.errors import UsageError
from loka.models.activations import fuse_activations
from loka.models.architectures import Model, hf_model
from loka.models.forward import input_device
from loka.models.loading import quiet_transformers
from loka.models.weights import hf_state_dict, hf_submodule, offload_hook, weight_values

__all__ = ["materialize", "plain_copy", "same_kind_as", "shared_copy", "shares_storage"]


def _device_and_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    """Where a model's inputs go (its input embedding's device) and the dtype it computes in."""
    return input_device(model), hf_model(model).dtype


def _with_values(model: Any, weights: dict[str, Tensor], names: Collection[str]) -> tuple[dict[str, Tensor], set[str]]:
    """``weights`` where, for each weight of ``names`` that ``model`` offloads, every weight of its
    module still on ``meta`` (a module held in memory needs all of its tensors) is replaced by its
    value (:func:`loka.models.weights.weight_values`); and the names so read."""
    source = hf_state_dict(model)
    modules = {name.rpartition(".")[0] for name in names if name in source and source[name].is_meta}
    wanted = [name for name, tensor in weights.items() if tensor.is_meta and name.rpartition(".")[0] in modules]
    return weights | weight_values(model, wanted), set(wanted)


def _place(model: Any, name: str, tensor: Tensor) -> torch.device:
    """Where weight ``name`` of ``model`` computes: its device, or for an offloaded one its
    hook's execution device."""
    if not tensor.is_meta:
        return tensor.device
    hook = offload_hook(model, name.rpartition(".")[0])
    where = None if hook is None else hook.execution_device
    if where is None:
        return input_device(model)
    return torch.device("cuda", where) if isinstance(where, int) else torch.device(where)


def _storage_key(tensor: Tensor) -> tuple[int, int]:
    """Tensors with the same key are views of the same memory at the same place (tied weights)."""
    return tensor.untyped_storage().data_ptr(), tensor.storage_offset()


def _assemble(
    model: Any, config: PretrainedConfig | None, weights: Mapping[str, Tensor], new_zero: Iterable[str]
) -> PreTrainedModel:
    """A plain HF model (eval mode) of ``model``'s class whose tensors *are* ``weights``.

    Built with empty parameters, then each weight is put in place as it is (``assign``): moved
    only when it is not already on the device of ``model``'s weight of the same name, cast only
    when its dtype is not the copy's. ``new_zero`` names parameters that ``config`` adds (zero).
    Tied weights (GPT-2's ``wte`` / ``lm_head``) are tied again; a model dispatched over devices
    gets its accelerate hooks again (:func:`_dispatch_like`); a ``meta`` weight stays offloaded.
    """
    from accelerate import init_empty_weights

    source = hf_model(model)
    device, dtype = _device_and_dtype(model)
    places = {name: _place(model, name, tensor) for name, tensor in hf_state_dict(model).items()}
    config = copy.deepcopy(config if config is not None else source.config)
    with quiet_transformers(), torch.device(device), init_empty_weights(include_buffers=False):
        new = AutoModelForCausalLM.from_config(config, torch_dtype=dtype, attn_implementation="eager")
    fuse_activations(new)
    empty = new.state_dict(keep_vars=True)
    new_zero = set(new_zero)
    missing, unexpected = set(empty) - set(weights), set(weights) - set(empty)
    if unexpected or missing != new_zero:
        raise RuntimeError(  # a bug in loka, not a user error: the copy would not be faithful
            f"copying {type(source).__name__}: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    state: dict[str, Tensor] = {}
    for name, slot in empty.items():
        if name in new_zero:
            sibling = places.get(name.removesuffix(".bias") + ".weight", device)
            state[name] = torch.zeros(slot.shape, dtype=slot.dtype, device=sibling)
        else:  # an offloaded weight stays on meta: the copy's hook reads it (_dispatch_like)
            tensor = weights[name].detach()
            where = tensor.device if tensor.is_meta else places.get(name, device)
            state[name] = tensor.to(device=where, dtype=slot.dtype)
    new.load_state_dict(state, strict=True, assign=True)
    new.tie_weights()
    if getattr(source, "hf_device_map", None):
        _dispatch_like(new, model)
    new.eval()
    return new


def _align_hooks(module: Any) -> list[Any]:
    """The accelerate hooks (``AlignDevicesHook``) on ``module`` (inside a ``SequentialHook`` too), in order."""
    from accelerate.hooks import AlignDevicesHook

    pending, found = [getattr(module, "_hf_hook", None)], []
    while pending:
        hook = pending.pop(0)
        if isinstance(hook, AlignDevicesHook):
            found.append(hook)
        elif hook is not None:
            pending[:0] = list(getattr(hook, "hooks", ()))
    return found


def _dispatch_like(new: PreTrainedModel, model: Any) -> None:
    """Give ``new`` (a plain HF copy of ``model``) the accelerate hooks ``model`` was dispatched with,
    module by module: the same execution devices, and for an offloaded module the same
    ``weights_map``, unless ``new`` holds that module's tensors in memory (weights an edit
    writes), in which case it computes from them on its execution device and ``new.hf_device_map``
    says so. ``dispatch_model`` cannot do this: it would write a second offload folder."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module
    from accelerate.utils import named_module_tensors

    source = hf_model(model)
    device_map = dict(source.hf_device_map)
    for name, module in new.named_modules():
        for hook in _align_hooks(hf_submodule(source, name)):
            tensors = [t for _, t in named_module_tensors(module, recurse=hook.place_submodules)]
            offload = hook.offload and any(t.is_meta for t in tensors)
            add_hook_to_module(
                module,
                AlignDevicesHook(
                    execution_device=hook.execution_device,
                    offload=offload,
                    io_same_device=hook.io_same_device,
                    weights_map=hook.weights_map if offload else None,
                    offload_buffers=hook.offload_buffers,
                    place_submodules=hook.place_submodules,
                    skip_keys=hook.skip_keys,
                ),
                append=True,
            )
            if hook.offload and not offload:
                for key in device_map:
                    if not key or name == key or name.startswith(key + "."):
                        device_map[key] = hook.execution_device
    new.hf_device_map = device_map


def plain_copy(
    model: Any,
    *,
    config: PretrainedConfig | None = None,
    state: Mapping[str, Tensor] | None = None,
    new_zero: tuple[str, ...] = (),
    onload: Collection[str] = (),
) -> PreTrainedModel:
    """A plain HF model (eval mode) with copies of ``model``'s weights (or of ``state``) and its
    config (or ``config``); nothing in it shares memory with ``model`` or ``state``, except the
    weights accelerate offloads, which stay offloaded and are read from the same place (see the
    module docstring).

    ``new_zero`` names parameters that ``config`` adds (e.g. biases switched on) and that are
    absent from the weights: they are set to zero. Any other missing or unexpected name is an
    error. Each weight lands on the device of ``model``'s weight of the same name. ``onload``
    names offloaded weights the caller will write: they are copied into memory (with the rest of
    their module) on their execution device, as is the module of every weight ``state`` gives a
    value for where ``model`` offloads it.
    """
    weights = hf_state_dict(model) if state is None else dict(state)
    given = {name for name, tensor in weights.items() if not tensor.is_meta}  # a given value is held in memory
    weights, _ = _with_values(model, weights, set(onload) | (given if state is not None else set()))
    clones: dict[tuple[int, int], Tensor] = {}
    copied = {}
    for name, tensor in weights.items():  # one clone per storage: tied weights stay tied
        if tensor.is_meta:
            copied[name] = tensor
            continue
        key = _storage_key(tensor)
        if key not in clones:
            clones[key] = tensor.detach().clone()
        copied[name] = clones[key] if clones[key].shape == tensor.shape else tensor.detach().clone()
    return _assemble(model, config, copied, new_zero)


def shared_copy(
    model: Any,
    changed: Collection[str],
    *,
    config: PretrainedConfig | None = None,
    new_zero: tuple[str, ...] = (),
) -> PreTrainedModel:
    """A plain HF model (eval mode) that clones only the weights named in ``changed`` and shares
    every other one with ``model`` (same storage, frozen: ``requires_grad=False``).

    ``changed`` are plain HF names (``hf_state_dict``); a name tied to another (GPT-2's
    ``lm_head.weight`` and ``transformer.wte.weight``) clones both. The changed weights are the
    only ones the caller may write in place: a write into a shared one changes ``model`` too
    (see the module docstring; :func:`materialize` makes an independent copy). ``config`` and
    ``new_zero`` are as in :func:`plain_copy` (the new parameters are new tensors). A changed
    weight that accelerate offloads is copied into memory with the rest of its module, as
    ``plain_copy``'s ``onload`` does.
    """
    weights = hf_state_dict(model)
    unknown = sorted(set(changed) - set(weights))
    if unknown:
        raise UsageError(f"shared_copy: {len(unknown)} changed names are not weights of the model, e.g. {unknown[0]!r}")
    weights, onloaded = _with_values(model, weights, changed)
    fresh = {_storage_key(weights[name]) for name in changed if name not in onloaded}
    clones: dict[tuple[int, int], Tensor] = {}
    tensors: dict[str, Tensor] = {}
    for name, tensor in weights.items():
        key = _storage_key(tensor) if not tensor.is_meta else (-1, -1)
        if name in onloaded:
            tensors[name] = tensor.detach().clone()
        elif key in fresh:
            if key not in clones:
                clones[key] = tensor.detach().clone()
            tensors[name] = clones[key]
        else:
            tensors[name] = tensor.detach()
    new = _assemble(model, config, tensors, new_zero)
    shared = shares_storage(new, model)
    for name, param in new.named_parameters():
        param.requires_grad_(name not in shared)
    return new


def shares_storage(copy_: Model, original: Model) -> set[str]:
    """The HF weight names of ``copy_`` whose memory overlaps a weight of ``original`` (writing one
    writes the other). Empty for a :func:`plain_copy`; everything but the changed weights for a
    :func:`shared_copy`."""
    theirs = {_storage_key(t)[0] for t in hf_state_dict(original).values() if not t.is_meta}
    return {
        name
        for name, tensor in hf_state_dict(copy_).items()
        if not tensor.is_meta and _storage_key(tensor)[0] in theirs
    }


def materialize(model: Any) -> Any:
    """An independent copy of ``model`` (every weight cloned), the same kind of model: what to
    call on a :func:`shared_copy` (or an edit made with ``share=True``) before editing it in place."""
    return same_kind_as(plain_copy(model), model)


def same_kind_as(new: Model, original: Any) -> Any:
    """``new`` as the kind of model ``original`` is: a ``TransformerBridge`` (eval mode, a copy of
    the original's tokenizer) for a bridge, a plain HF model otherwise. A bridge is never wrapped
    in another bridge. The bridge's own views of a weight (GPT-2's split query/key/value) follow
    that weight's ``requires_grad``: a frozen (e.g. shared) weight stays frozen through them."""
    if isinstance(new, TransformerBridge):
        return new if isinstance(original, TransformerBridge) else hf_model(new)
    if not isinstance(original, TransformerBridge):
        return new
    frozen = {p.untyped_storage().data_ptr() for p in new.parameters() if not p.requires_grad}
    device, dtype = _device_and_dtype(new)
    name = getattr(new.config, "_name_or_path", "") or new.config.model_type
    with quiet_transformers():
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=new, tokenizer=copy.deepcopy(original.tokenizer), device=device, dtype=dtype
        )
    for param in bridge.parameters():
        if param.untyped_storage().data_ptr() in frozen:
            param.requires_grad_(False)
    bridge.eval()
    return bridge
