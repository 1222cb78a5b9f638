"""Running a model: next-token logits of a bridge or a plain Hugging Face model, the same way for both.

A model may sit on one device or be spread over several (``load_model(..., device_map="auto")``);
either way its inputs belong on :func:`input_device`, the device of its input embedding, and
:func:`logits` returns on the device its inputs came from.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from loka.models.architectures import Model, hf_model

__all__ = ["input_device", "logits", "shared_forwards"]

_shared: list[tuple[Any, ...]] | None = None  # inside shared_forwards: (model, inputs..., grad mode, logits)


def input_device(model: Model) -> torch.device:
    """The device a bridge's or HF model's input ids belong on: its input embedding's device.

    For a model on one device this is that device. With a ``device_map`` the blocks may sit on
    several devices and "the first parameter" is whichever module happens to come first; the
    embedding is the module that reads the ids. An embedding that accelerate offloads (its
    weight on ``meta`` between calls) answers with the device its hook computes on.
    """
    embedding = hf_model(model).get_input_embeddings()
    hook = getattr(embedding, "_hf_hook", None)
    execution = getattr(hook, "execution_device", None)
    if execution is not None:
        return torch.device(execution)
    weight = next(embedding.parameters(), None)
    return weight.device if weight is not None else torch.device("cpu")


def logits(
    model: Model,
    input_ids: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    position_ids: Int[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Next-token logits of a bridge or a plain HF model, computed the same way for both.

    Gradients flow unless the caller disables them. Pass ``position_ids`` (with the
    ``attention_mask``) for left-padded batches. Attention is always causal within each row:
    when ``position_ids`` come without a mask, an all-ones mask is passed, because transformers
    would otherwise read a gap in ``position_ids`` as the start of a new packed sequence and
    stop attention across it (only when no KV cache is built, so HF and bridge would disagree).
    The logits come back on ``input_ids``' device, also when the model's last block and
    unembedding sit on another device (a ``device_map``).
    """
    if position_ids is not None and attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if _shared is not None:
        for seen_model, ids, mask, positions, grad, out in _shared:
            if (seen_model is model and grad == torch.is_grad_enabled() and _same(ids, input_ids)
                    and _same(mask, attention_mask) and _same(positions, position_ids)):  # fmt: skip
                return out
        out = _logits(model, input_ids, attention_mask, position_ids)
        _shared.append((model, input_ids, attention_mask, position_ids, torch.is_grad_enabled(), out))
        return out
    return _logits(model, input_ids, attention_mask, position_ids)


@contextmanager
def shared_forwards() -> Iterator[None]:
    """Within it, :func:`logits` of the same model object on equal inputs (ids, mask, positions;
    same grad mode) runs the model once and hands every caller the same logits (and graph: their
    losses back-propagate through one forward). For a training step whose loss terms read the
    same rows (LOKA's forget and subject terms; its retain and subject-retain terms). The
    weights must not change inside it."""
    global _shared
    outer, _shared = _shared, []
    try:
        yield
    finally:
        _shared = outer


def _same(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and a.device == b.device and bool(torch.equal(a, b))


def _logits(
    model: Model, input_ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None
) -> Float[Tensor, "batch pos d_vocab"]:
    kwargs: dict[str, Tensor] = {}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    if isinstance(model, TransformerBridge):
        out = model(input_ids, return_type="logits", **kwargs)
    else:
        out = hf_model(model)(input_ids=input_ids, use_cache=False, **kwargs).logits
    return out.to(input_ids.device)
