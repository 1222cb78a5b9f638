"""Running a model: next-token logits of a bridge or a plain Hugging Face model, the same way for both."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from loka.models.architectures import Model, hf_model

__all__ = ["logits"]


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
    """
    if position_ids is not None and attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    kwargs: dict[str, Tensor] = {}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    if isinstance(model, TransformerBridge):
        return model(input_ids, return_type="logits", **kwargs)
    return hf_model(model)(input_ids=input_ids, use_cache=False, **kwargs).logits
