"""Load causal LMs for hooking, and name the weights that each component writes through.

loka reads a model through TransformerLens hooks and edits it through its Hugging Face weights.
This package is the one place that knows how those two views line up; one module per job:

* :mod:`loka.models.architectures`: ``SUPPORTED_ARCHITECTURES``, the per-architecture HF
  parameter names (MLP input/output projections, attention output projection, the query/key/value
  layout) as :class:`ArchitectureSpec`; ``architecture(model)`` and ``hf_model(model)``.
* :mod:`loka.models.weights`: :class:`WeightSlice`, the slice of one HF weight a component reads
  or writes through (``neuron_output_weights``, ``head_output_weights``, ``neuron_input_weights``,
  ``head_input_weights``); zeroing an output slice is exactly zero-ablating the hook activation,
  permanently and in the weights. ``hf_state_dict`` gives any model's weights under plain HF names.
* :mod:`loka.models.loading`: ``load_model`` boots a Hugging Face checkpoint (a local directory,
  or a hub id) as a TransformerLens 4 ``TransformerBridge`` on a device or a ``device_map``, in a
  dtype of ``DTYPES`` (``resolve_dtype``); ``quiet_transformers``.
* :mod:`loka.models.forward`: ``logits``, the same forward for a bridge and a plain HF model;
  ``input_device``, the device a model's input ids belong on (its input embedding's).
* :mod:`loka.models.fingerprints`: ``fingerprint`` hashes the weights, so that a result can name
  the exact model it came from.
* :mod:`loka.models.copies`: ``plain_copy`` and ``same_kind_as``, how an edit returns a new model.
* :mod:`loka.models.activations`: ``fuse_activations``, GPT-2's ``gelu_new`` as one fused kernel in
  float32 (loading and every copy apply it).

Example::

    model = load_model("path/to/checkpoint")
    w = neuron_output_weights(model, layer=1, index=7)
    with torch.no_grad():
        w.of(model).zero_()          # neuron L1N7 now writes nothing
"""

from __future__ import annotations

from loka.models.architectures import SUPPORTED_ARCHITECTURES, ArchitectureSpec, Model, architecture, hf_model
from loka.models.copies import plain_copy, same_kind_as
from loka.models.fingerprints import ModelFingerprint, fingerprint
from loka.models.forward import input_device, logits
from loka.models.loading import DTYPES, TOKENIZER_PATTERNS, load_model, quiet_transformers, resolve_dtype
from loka.models.weights import (
    AttentionLayout,
    WeightSlice,
    attention_layout,
    head_input_weights,
    head_output_weights,
    hf_state_dict,
    neuron_input_weights,
    neuron_output_weights,
)

__all__ = [
    "DTYPES",
    "SUPPORTED_ARCHITECTURES",
    "TOKENIZER_PATTERNS",
    "ArchitectureSpec",
    "AttentionLayout",
    "Model",
    "ModelFingerprint",
    "WeightSlice",
    "architecture",
    "attention_layout",
    "fingerprint",
    "head_input_weights",
    "head_output_weights",
    "hf_model",
    "hf_state_dict",
    "input_device",
    "load_model",
    "logits",
    "neuron_input_weights",
    "neuron_output_weights",
    "plain_copy",
    "quiet_transformers",
    "resolve_dtype",
    "same_kind_as",
]
