"""Copies: a fresh HF model from (changed) weights, re-wrapped for TransformerLens.

Edits never touch the model they are given; they return a new one, built from the weights
rather than by deep-copying the module tree: a bridge keeps private split copies of some
weights (GPT-NeoX query/key/value), so weights changed by name inside a bridge may not be the
ones its forward uses, and a deep copy would also carry over hooks. :func:`plain_copy` builds a
plain HF model of the same class and loads ``hf_state_dict(model)`` (or changed weights) into
it; the caller edits that copy; :func:`same_kind_as` wraps it in a new bridge when the input was one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from loka.models.architectures import Model, hf_model
from loka.models.loading import quiet_transformers
from loka.models.weights import hf_state_dict

__all__ = ["plain_copy", "same_kind_as"]


def _device_and_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    param = next(hf_model(model).parameters())
    return param.device, param.dtype


def plain_copy(
    model: Any,
    *,
    config: PretrainedConfig | None = None,
    state: Mapping[str, Tensor] | None = None,
    new_zero: tuple[str, ...] = (),
) -> PreTrainedModel:
    """A plain HF model (eval mode) with ``model``'s weights (or ``state``) and config (or ``config``).

    ``new_zero`` names parameters that ``config`` adds (e.g. biases switched on) and that are
    absent from the weights: they are set to zero. Any other missing or unexpected name is an error.
    """
    source = hf_model(model)
    device, dtype = _device_and_dtype(model)
    config = copy.deepcopy(config if config is not None else source.config)
    weights = dict(hf_state_dict(model) if state is None else state)
    with quiet_transformers(), torch.device(device):
        new = AutoModelForCausalLM.from_config(config, torch_dtype=dtype, attn_implementation="eager")
    missing, unexpected = new.load_state_dict(weights, strict=False)
    if unexpected or set(missing) != set(new_zero):
        raise RuntimeError(  # a bug in loka, not a user error: the copy would not be faithful
            f"copying {type(source).__name__}: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    with torch.no_grad():
        params = dict(new.named_parameters())
        for name in new_zero:
            params[name].zero_()
    new.eval()
    return new


def same_kind_as(new: Model, original: Any) -> Any:
    """``new`` as the kind of model ``original`` is: a ``TransformerBridge`` (eval mode, a copy of
    the original's tokenizer) for a bridge, a plain HF model otherwise. A bridge is never wrapped
    in another bridge."""
    if isinstance(new, TransformerBridge):
        return new if isinstance(original, TransformerBridge) else hf_model(new)
    if not isinstance(original, TransformerBridge):
        return new
    device, dtype = _device_and_dtype(new)
    name = getattr(new.config, "_name_or_path", "") or new.config.model_type
    with quiet_transformers():
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=new, tokenizer=copy.deepcopy(original.tokenizer), device=device, dtype=dtype
        )
    bridge.eval()
    return bridge
