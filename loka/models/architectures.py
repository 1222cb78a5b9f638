"""Architectures: the Hugging Face parameter names of each supported model type.

An :class:`ArchitectureSpec` names, per layer, the weights that MLP neurons and attention heads
read and write through, and the axis of each that a neuron or a head indexes. GPT-2's projections
are ``Conv1D``, stored ``[in, out]``; NeoX and Llama use ``nn.Linear``, stored ``[out, in]``.

The query/key/value layout (``attn_in_layout``), which says where head ``h``'s input weights sit:

* ``"fused"`` (GPT-2): ``attn.c_attn`` is a ``Conv1D`` ``[d_model, 3 * d_model]``; head ``h``'s
  query is columns ``h*d_head : (h+1)*d_head``, key and value the same columns offset by
  ``d_model`` and ``2 * d_model``.
* ``"interleaved"`` (GPT-NeoX): ``attention.query_key_value`` is an ``nn.Linear`` whose
  ``3 * d_model`` outputs are interleaved per head, ``[q_0, k_0, v_0, q_1, k_1, v_1, ...]``: head
  ``h`` owns rows ``h*3*d_head : (h+1)*3*d_head``.
* ``"separate"`` (Llama): ``q_proj`` rows ``h*d_head : (h+1)*d_head``. With grouped-query
  attention a key/value head is shared by ``n_heads / n_kv_heads`` query heads (rows
  ``g*d_head : (g+1)*d_head`` of ``k_proj`` / ``v_proj`` for group ``g``).

:func:`loka.models.weights.head_input_weights` turns this layout into weight slices. Adding an
architecture means adding one entry to :data:`SUPPORTED_ARCHITECTURES` (and a tiny checkpoint
of it to ``tests/checkpoints.py``); see ``docs/architecture.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedModel

from loka.base.errors import UsageError

__all__ = ["SUPPORTED_ARCHITECTURES", "ArchitectureSpec", "Model", "QKVLayout", "architecture", "hf_model", "spec_for"]

Model = TransformerBridge | PreTrainedModel
QKVLayout = Literal["fused", "interleaved", "separate"]


@dataclass(frozen=True)
class ArchitectureSpec:
    """HF state-dict names of the weights that MLP neurons and attention heads read and write.

    Names are templates with a ``{layer}`` field. A ``*_dim`` field is the axis of that tensor
    indexed by the neuron (MLP weights) or by the head-concatenated ``n_heads * d_head`` input
    (attention output weight); the other axis is ``d_model``.
    """

    model_type: str
    mlp_out_weight: str
    """MLP output projection (TL ``W_out``): neuron ``i`` writes through slice ``i``."""
    mlp_out_neuron_dim: int
    mlp_out_bias: str | None
    """Bias added after the MLP output projection (``[d_model]``; no neuron owns it)."""
    mlp_in_weights: tuple[str, ...]
    """MLP input projection(s) (TL ``W_in``, ``W_gate``): neuron ``i`` reads through slice ``i``."""
    mlp_in_neuron_dim: int
    mlp_in_biases: tuple[str, ...]
    """Biases of the MLP input projection(s), ``[d_mlp]``, indexed by neuron."""
    attn_out_weight: str
    """Attention output projection (TL ``W_O``); head ``h`` writes through input block ``h``."""
    attn_out_head_dim: int
    attn_out_bias: str | None
    attn_in_weights: tuple[str, ...]
    """Query/key/value projection(s): one fused weight (GPT-2 ``c_attn``, NeoX ``query_key_value``)
    or three (Llama ``q_proj``, ``k_proj``, ``v_proj``); their biases, where the model has them, are
    the same names ending in ``.bias``."""
    attn_in_head_dim: int
    """The axis of the ``attn_in_weights`` that is indexed by head (the other is ``d_model``)."""
    attn_in_layout: QKVLayout
    """Where head ``h``'s query, key and value sit along ``attn_in_head_dim`` (module docstring)."""

    def name(self, template: str, layer: int) -> str:
        """The parameter name of ``template`` (one of this spec's fields) at ``layer``."""
        return template.format(layer=layer)


SUPPORTED_ARCHITECTURES: Mapping[str, ArchitectureSpec] = MappingProxyType(
    {
        # GPT-2 uses Conv1D, which stores its weight as [in_features, out_features].
        "gpt2": ArchitectureSpec(
            model_type="gpt2",
            mlp_out_weight="transformer.h.{layer}.mlp.c_proj.weight",  # [d_mlp, d_model]
            mlp_out_neuron_dim=0,
            mlp_out_bias="transformer.h.{layer}.mlp.c_proj.bias",
            mlp_in_weights=("transformer.h.{layer}.mlp.c_fc.weight",),  # [d_model, d_mlp]
            mlp_in_neuron_dim=1,
            mlp_in_biases=("transformer.h.{layer}.mlp.c_fc.bias",),
            attn_out_weight="transformer.h.{layer}.attn.c_proj.weight",  # [n_heads*d_head, d_model]
            attn_out_head_dim=0,
            attn_out_bias="transformer.h.{layer}.attn.c_proj.bias",
            attn_in_weights=("transformer.h.{layer}.attn.c_attn.weight",),  # [d_model, 3 * d_model]
            attn_in_head_dim=1,
            attn_in_layout="fused",
        ),
        # NeoX and Llama use nn.Linear: weight is [out_features, in_features].
        "gpt_neox": ArchitectureSpec(
            model_type="gpt_neox",
            mlp_out_weight="gpt_neox.layers.{layer}.mlp.dense_4h_to_h.weight",  # [d_model, d_mlp]
            mlp_out_neuron_dim=1,
            mlp_out_bias="gpt_neox.layers.{layer}.mlp.dense_4h_to_h.bias",
            # [d_mlp, d_model]
            mlp_in_weights=("gpt_neox.layers.{layer}.mlp.dense_h_to_4h.weight",),
            mlp_in_neuron_dim=0,
            mlp_in_biases=("gpt_neox.layers.{layer}.mlp.dense_h_to_4h.bias",),
            # [d_model, n_heads * d_head]
            attn_out_weight="gpt_neox.layers.{layer}.attention.dense.weight",
            attn_out_head_dim=1,
            attn_out_bias="gpt_neox.layers.{layer}.attention.dense.bias",
            # [3 * d_model, d_model], per head [q_h, k_h, v_h]
            attn_in_weights=("gpt_neox.layers.{layer}.attention.query_key_value.weight",),
            attn_in_head_dim=0,
            attn_in_layout="interleaved",
        ),
        "llama": ArchitectureSpec(
            model_type="llama",
            mlp_out_weight="model.layers.{layer}.mlp.down_proj.weight",  # [d_model, d_mlp]
            mlp_out_neuron_dim=1,
            mlp_out_bias=None,
            mlp_in_weights=(
                "model.layers.{layer}.mlp.gate_proj.weight",  # [d_mlp, d_model]
                "model.layers.{layer}.mlp.up_proj.weight",  # [d_mlp, d_model]
            ),
            mlp_in_neuron_dim=0,
            mlp_in_biases=(),
            # [d_model, n_heads * d_head]
            attn_out_weight="model.layers.{layer}.self_attn.o_proj.weight",
            attn_out_head_dim=1,
            attn_out_bias=None,
            attn_in_weights=(
                "model.layers.{layer}.self_attn.q_proj.weight",  # [n_heads * d_head, d_model]
                "model.layers.{layer}.self_attn.k_proj.weight",  # [n_kv_heads * d_head, d_model]
                "model.layers.{layer}.self_attn.v_proj.weight",  # [n_kv_heads * d_head, d_model]
            ),
            attn_in_head_dim=0,
            attn_in_layout="separate",
        ),
    }
)


def _supported() -> str:
    return ", ".join(repr(t) for t in SUPPORTED_ARCHITECTURES)


def spec_for(model_type: str | None, what: str) -> ArchitectureSpec:
    spec = SUPPORTED_ARCHITECTURES.get(model_type or "")
    if spec is None:
        raise UsageError(
            f"{what} has model_type {model_type!r}, which loka does not support; "
            f"supported model types are {_supported()}."
        )
    return spec


def hf_model(model: Model) -> PreTrainedModel:
    """The Hugging Face model behind ``model``: ``bridge.original_model``, or ``model`` itself.

    For a bridge this module tree is wrapped by TL components; use ``hf_state_dict`` or
    ``WeightSlice.of`` rather than its ``state_dict()`` names.
    """
    if isinstance(model, TransformerBridge):
        return model.original_model
    if isinstance(model, PreTrainedModel):
        return model
    raise UsageError(f"expected a TransformerBridge or a transformers PreTrainedModel, got {type(model).__name__}.")


def architecture(model: Model) -> ArchitectureSpec:
    """The weight-name spec for ``model``'s HF ``model_type`` (ValueError if unsupported)."""
    return spec_for(hf_model(model).config.model_type, "the model")
