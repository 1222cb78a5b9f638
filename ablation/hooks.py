"""Reversible ablation: change activations through TransformerLens hooks, never the weights.

Inside ``with ablate(model, mask):`` every forward pass of ``model`` runs with the masked
components' activations replaced, at ``blocks.{l}.mlp.hook_post`` (neurons, ``[batch, pos,
d_mlp]``) and ``blocks.{l}.attn.hook_z`` (heads, ``[batch, pos, n_heads, d_head]``):

* ``zero``: by 0; ``mean``: by the mask's stored mean activation; ``scale``: multiplied by the
  mask's factor;
* ``resample``: by the activation the *same* model produces, at the same batch row and position,
  on other inputs (``resample_from``, same ``[batch, pos]`` shape as the inputs you run). This is
  the ablation that evaluation uses to ask "does the model still work if this component carries
  unrelated information?"; it has no weight equivalent, so ``bake`` refuses it.

Hooks are added with ``model.hooks(...)``, which removes exactly the hooks it added when the block
exits, normally or through an exception, and leaves hooks the caller attached alone. Nothing else
about the model changes, so its logits after the block are bit-identical to before. Hook functions
return new tensors and never write into the activation they receive.

``mean_activations`` records, in one pass over reference inputs, the mean activation of every
neuron and head (over real tokens only), for ``mode="mean"`` masks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from ablation.mask import AblationMask, MeanActivations
from loka.base.components import hook_name
from loka.base.errors import UsageError
from loka.data.encoding import FactBatch
from loka.models import input_device
from loka.models import logits as model_logits
from loka.models.recording import class_means, record

__all__ = ["ablate", "ablation_hooks", "mean_activations"]

Inputs = Int[Tensor, "batch pos"] | FactBatch
HookFn = Callable[[Tensor, Any], Tensor]


def _require_bridge(model: Any, what: str) -> TransformerBridge:
    if not isinstance(model, TransformerBridge):
        raise UsageError(
            f"{what} runs TransformerLens hooks, so it needs a TransformerBridge (loka.load_model), "
            f"got {type(model).__name__}; for a plain Hugging Face model use ablation.bake"
        )
    return model


def _device(model: TransformerBridge) -> torch.device:
    return input_device(model)


def _forward_kwargs(inputs: Inputs, attention_mask: Tensor | None, position_ids: Tensor | None) -> dict[str, Any]:
    if isinstance(inputs, FactBatch):
        return {
            "input_ids": inputs.input_ids,
            "attention_mask": inputs.attention_mask,
            "position_ids": inputs.position_ids,
        }
    if not isinstance(inputs, Tensor) or inputs.dim() != 2 or inputs.dtype.is_floating_point:
        raise UsageError("inputs must be token ids [batch, pos] (an integer tensor) or a loka.data.FactBatch")
    return {"input_ids": inputs, "attention_mask": attention_mask, "position_ids": position_ids}


def _run(model: TransformerBridge, kwargs: dict[str, Any]) -> None:
    device = _device(model)
    moved = {k: None if v is None else v.to(device) for k, v in kwargs.items()}
    with torch.no_grad():
        model_logits(model, moved.pop("input_ids"), **moved)


# ----------------------------------------------------------------------------- the hook functions


def _replacing_hook(dim: int, index: Tensor, value: Tensor | None) -> HookFn:
    """Set entries ``index`` along ``dim`` (-1: neurons, -2: heads) to ``value`` (None: zero)."""

    def hook_fn(activation: Tensor, hook: Any) -> Tensor:
        if value is None:
            return activation.index_fill(dim, index, 0.0)
        picked = activation.index_select(dim, index)
        return activation.index_copy(dim, index, value.to(activation.dtype).expand_as(picked))

    return hook_fn


def _scaling_hook(factor: Tensor) -> HookFn:
    """Multiply by ``factor``, which is exactly 1 outside the ablated entries (so they stay exact)."""

    def hook_fn(activation: Tensor, hook: Any) -> Tensor:
        return activation * factor.to(activation.dtype)

    return hook_fn


def _resampling_hook(dim: int, index: Tensor, source: Tensor, name: str) -> HookFn:
    """Copy entries ``index`` from ``source``, the activation recorded on other inputs."""

    def hook_fn(activation: Tensor, hook: Any) -> Tensor:
        if activation.shape[:2] != source.shape[:2]:
            raise UsageError(
                f"resample ablation at {name}: the model is running on [batch, pos] = "
                f"{list(activation.shape[:2])} but resample_from has {list(source.shape[:2])}; "
                "pass other inputs of the same shape"
            )
        replacement = source.index_select(dim, index).to(activation.device, activation.dtype)
        return activation.index_copy(dim, index, replacement)

    return hook_fn


def ablation_hooks(
    model: TransformerBridge,
    mask: AblationMask,
    *,
    resample_from: Inputs | None = None,
    resample_attention_mask: Tensor | None = None,
) -> list[tuple[str, HookFn]]:
    """The ``(hook name, hook function)`` pairs that implement ``mask`` on ``model`` (no checks).

    For a ``resample`` mask this runs ``model`` once on ``resample_from`` to record the
    activations that the hooks will copy in.
    """
    device = _device(model)
    sources: dict[str, Tensor] = {}
    if mask.mode == "resample":
        if resample_from is None:
            raise UsageError("mode 'resample' replaces activations with those of other inputs: pass resample_from=...")
        names = [hook_name(kind, layer) for kind in ("neuron", "head") for layer in _layers(mask, kind)]
        with model.hooks(fwd_hooks=[record(sources, name) for name in names]):
            _run(model, _forward_kwargs(resample_from, resample_attention_mask, None))

    hooks: list[tuple[str, HookFn]] = []
    for kind, dim in (("neuron", -1), ("head", -2)):
        selected = mask.tensor(kind)  # type: ignore[arg-type]
        if selected is None:
            continue
        means = mask.neuron_means if kind == "neuron" else mask.head_means
        scales = mask.neuron_scales if kind == "neuron" else mask.head_scales
        for layer in _layers(mask, kind):
            index = selected[layer].nonzero().flatten().to(device)
            name = hook_name(kind, layer)  # type: ignore[arg-type]
            if mask.mode == "resample":
                hooks.append((name, _resampling_hook(dim, index, sources[name], name)))
            elif mask.mode == "scale":
                assert scales is not None
                factor = torch.where(selected[layer], scales[layer], torch.ones((), dtype=scales.dtype)).to(device)
                hooks.append((name, _scaling_hook(factor if kind == "neuron" else factor[:, None])))
            elif mask.mode == "mean":
                assert means is not None
                hooks.append((name, _replacing_hook(dim, index, means[layer].to(device).index_select(0, index))))
            else:
                hooks.append((name, _replacing_hook(dim, index, None)))
    return hooks


def _layers(mask: AblationMask, kind: str) -> list[int]:
    selected = mask.tensor(kind)  # type: ignore[arg-type]
    return [] if selected is None else selected.any(dim=1).nonzero().flatten().tolist()


@contextlib.contextmanager
def ablate(
    model: TransformerBridge,
    mask: AblationMask,
    *,
    resample_from: Inputs | None = None,
    resample_attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> Iterator[TransformerBridge]:
    """Run ``model`` with ``mask`` applied through hooks for the duration of the block.

    ``mask`` is validated against ``model`` first (fingerprint, shapes: ValueError). For a
    ``resample`` mask, ``resample_from`` gives the other inputs (token ids ``[batch, pos]``
    with an optional ``resample_attention_mask``, or a ``FactBatch``); their activations are
    recorded once on entry and replace the masked components' activations row by row, so the
    inputs run inside the block must have the same ``[batch, pos]`` shape. Yields ``model``.

    >>> with ablate(model, mask):          # doctest: +SKIP
    ...     ablated = model(tokens)
    """
    _require_bridge(model, "ablate")
    if not isinstance(mask, AblationMask):
        raise UsageError(f"mask must be an ablation.AblationMask, got {type(mask).__name__}")
    mask.validate(model)
    if mask.mode == "resample" and resample_from is None:
        raise UsageError("mode 'resample' replaces activations with those of other inputs: pass resample_from=...")
    if mask.mode != "resample" and resample_from is not None:
        raise UsageError(f"resample_from is only used by mode='resample' masks; this mask's mode is {mask.mode!r}")
    hooks = ablation_hooks(model, mask, resample_from=resample_from, resample_attention_mask=resample_attention_mask)
    with model.hooks(fwd_hooks=hooks):
        yield model


def mean_activations(
    model: TransformerBridge,
    inputs: Inputs,
    *,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    position_ids: Int[Tensor, "batch pos"] | None = None,
    batch_size: int = 32,
) -> MeanActivations:
    """Mean of every neuron's ``hook_post`` and every head's ``hook_z`` over the real tokens of
    ``inputs`` (token ids, or a ``FactBatch``; padding excluded through the attention mask).

    Returns float32 ``[n_layers, d_mlp]`` and ``[n_layers, n_heads, d_head]`` means, for
    ``AblationMask.with_mode("mean", means=...)``.
    """
    _require_bridge(model, "mean_activations")
    kwargs = _forward_kwargs(inputs, attention_mask, position_ids)
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}")
    ids = kwargs["input_ids"]
    weights = kwargs["attention_mask"] if kwargs["attention_mask"] is not None else torch.ones_like(ids)
    if int(weights.sum()) == 0:
        raise UsageError("inputs have no real tokens (the attention mask is all zero)")
    n_layers = model.cfg.n_layers
    device = _device(model)
    names = [hook_name(kind, layer) for kind in ("neuron", "head") for layer in range(n_layers)]  # type: ignore[arg-type]
    chunks = (
        (
            {k: None if v is None else v[start : start + batch_size].to(device) for k, v in kwargs.items()},
            weights[start : start + batch_size].to(device).long() - 1,  # one class (0): every real token
        )
        for start in range(0, len(ids), batch_size)
    )
    means, counts = class_means(model, chunks, names, n_classes=1)
    neurons = torch.stack([means[hook_name("neuron", layer)][0] for layer in range(n_layers)])
    heads = torch.stack([means[hook_name("head", layer)][0] for layer in range(n_layers)])
    return MeanActivations(neurons=neurons, heads=heads, n_tokens=int(counts[0]))
