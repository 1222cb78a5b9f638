"""Baking: make a mask permanent by writing it into the weights of a copy of the model.

A component writes into the residual stream only through its slice of an output projection
(``loka.models.neuron_output_weights`` / ``head_output_weights``): neuron ``i`` adds
``a_i * W_out[i]``, head ``h`` adds ``z_h @ W_O[h]``. So each hook ablation has an exact weight
equivalent:

=========  ====================================  =================================================
mode       hook (``ablation.ablate``)              weights (``bake``)
=========  ====================================  =================================================
zero       ``a_i = 0``                           ``W_out[i] = 0``
scale s    ``a_i = s * a_i``                     ``W_out[i] *= s``
mean m     ``a_i = m_i``                         ``b_out += m_i * W_out[i]``, then ``W_out[i] = 0``
=========  ====================================  =================================================

and the same for heads with ``W_O[h]``, the mean ``z`` vector of the head and the attention
output bias. GPT-2 stores these projections as ``Conv1D`` (``[in, out]``), NeoX and Llama as
``nn.Linear`` (``[out, in]``); ``WeightSlice`` hides the difference.

Mean mode needs an output bias to fold the constant into. GPT-2 and NeoX have one. Llama has
none, and a constant added to the residual stream cannot be folded into anything else (the next
RMSNorm is not linear), so by default ``bake`` refuses a mean mask on Llama with a ValueError.
``missing_bias="add"`` instead switches on Llama's own optional biases (``config.mlp_bias`` for
neurons, ``config.attention_bias`` for heads; standard ``LlamaConfig`` options that plain
transformers loads), with every new bias zero except the output projection's, which holds the
folded means. The result is exact, but its config and parameter list differ from the original's.

``resample`` depends on other inputs at run time and has no weight equivalent: refused.
The input model is never modified; the edited copy is a new bridge (or plain HF model).
By default the copy is a full one (:func:`loka.models.plain_copy`); ``share=True`` clones only the
output weights (and biases) that the mask writes and shares every other parameter with the input
(:func:`loka.models.copies.shared_copy`, frozen): a bake of one layer then costs one layer's
output projection, not a second model. Writing a shared parameter of such a copy in place would
write the input too; use ``share=True`` for a copy that is read, not edited further in place.
"""

from __future__ import annotations

import copy as _copy
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from ablation.mask import BAKEABLE_MODES, AblationMask
from loka.base.errors import UsageError
from loka.models import (
    WeightSlice,
    architecture,
    head_output_weights,
    hf_model,
    hf_state_dict,
    neuron_output_weights,
    plain_copy,
    same_kind_as,
)
from loka.models.copies import shared_copy

__all__ = ["MissingBias", "bake"]

MissingBias = Literal["refuse", "add"]
MISSING_BIAS: tuple[MissingBias, ...] = get_args(MissingBias)

# Config switches that give an architecture's projections a bias (all of them in that family).
_BIAS_SWITCHES: dict[str, dict[str, str]] = {"llama": {"neuron": "mlp_bias", "head": "attention_bias"}}


def _output_bias_name(model: Any, kind: str, layer: int) -> str | None:
    spec = architecture(model)
    template = spec.mlp_out_bias if kind == "neuron" else spec.attn_out_bias
    return None if template is None else spec.name(template, layer)


def _missing_biases(model: Any, mask: AblationMask) -> dict[str, list[int]]:
    """kind -> layers where mean mode needs an output bias that the model does not have."""
    names = set(hf_state_dict(model))
    out: dict[str, list[int]] = {}
    for kind in ("neuron", "head"):
        selected = mask.tensor(kind)  # type: ignore[arg-type]
        if selected is None:
            continue
        for layer in selected.any(dim=1).nonzero().flatten().tolist():
            bias = _output_bias_name(model, kind, layer)
            if bias is None or bias not in names:
                out.setdefault(kind, []).append(layer)
    return out


def _config_with_biases(model: Any, kinds: list[str]) -> Any:
    """A copy of ``model``'s config with the architecture's bias switch on for each of ``kinds``."""
    model_type = architecture(model).model_type
    switches = _BIAS_SWITCHES.get(model_type, {})
    config = _copy.deepcopy(hf_model(model).config)
    for kind in kinds:
        setattr(config, switches[kind], True)
    return config


def _parameter_names(model: Any, config: Any) -> set[str]:
    """The parameter names a model of ``model``'s class has with ``config`` (built on ``meta``)."""
    with torch.device("meta"):
        twin = type(hf_model(model))(config)
    return set(twin.state_dict())


def _fold(weight: Tensor, dim: int, value: Tensor) -> Tensor:
    """The constant a slice writes when its input is ``value``: ``value @ slice`` along ``dim``."""
    return torch.tensordot(value.to(weight.dtype), weight, dims=([0], [dim]))


def bake(model: Any, mask: AblationMask, *, missing_bias: MissingBias = "refuse", share: bool = False) -> Any:
    """An edited copy of ``model`` whose weights implement ``mask`` (``model`` is not touched).

    ``model`` is a ``TransformerBridge`` (the copy is a new bridge) or a plain HF model (the
    copy is one too). Its logits equal those of ``with ablate(model, mask)`` up to float
    rounding. ``missing_bias`` says what mean mode does on a layer without an output bias
    (Llama): ``"refuse"`` (ValueError) or ``"add"`` (switch the architecture's optional biases
    on; see the module docstring). ``share=True`` copies only the weights the mask writes and
    shares the others with ``model`` (see the module docstring); the weights are the same either way.
    """
    if not isinstance(mask, AblationMask):
        raise UsageError(f"mask must be an ablation.AblationMask, got {type(mask).__name__}")
    if missing_bias not in MISSING_BIAS:
        raise UsageError(f"unknown missing_bias {missing_bias!r}; use one of {MISSING_BIAS}")
    if mask.mode not in BAKEABLE_MODES:
        raise UsageError(
            f"mode {mask.mode!r} replaces activations with those of other inputs at run time, so it has "
            f"no weight equivalent and cannot be baked; bake supports {BAKEABLE_MODES} (use ablation.ablate "
            "for resample ablation)"
        )
    if not isinstance(share, bool):
        raise UsageError(f"share must be True or False, got {share!r}")
    mask.validate(model)

    config, new_zero = None, ()
    if mask.mode == "mean":
        missing = _missing_biases(model, mask)
        if missing:
            model_type = architecture(model).model_type
            where = "; ".join(f"{kind}s in layers {layers}" for kind, layers in missing.items())
            if missing_bias == "refuse" or model_type not in _BIAS_SWITCHES:
                raise UsageError(
                    f"mean mode folds each mean into the output bias, but this {model_type} model has no "
                    f"output bias for the ablated {where}. Bake with mode 'zero' or 'scale', use "
                    "ablation.ablate for mean ablation, or pass missing_bias='add' to switch on the "
                    "architecture's optional biases (zero except the folded means)"
                )
            config = _config_with_biases(model, list(missing))
            new_zero = tuple(sorted(_parameter_names(model, config) - set(hf_state_dict(model))))

    written = _written_names(model, mask)
    if share:
        copy = shared_copy(model, written, config=config, new_zero=new_zero)
    else:
        copy = plain_copy(model, config=config, new_zero=new_zero, onload=written)
    with torch.no_grad():
        _write_mask(copy, mask)
    return same_kind_as(copy, model)


def _written_names(model: Any, mask: AblationMask) -> set[str]:
    """The HF names of the existing weights that :func:`_write_mask` writes: the output projection
    of every layer with a masked component, and in mean mode its output bias."""
    names: set[str] = set()
    for kind in ("neuron", "head"):
        selected = mask.tensor(kind)  # type: ignore[arg-type]
        if selected is None:
            continue
        for layer in selected.any(dim=1).nonzero().flatten().tolist():
            index = int(selected[layer].nonzero()[0])
            piece = (neuron_output_weights if kind == "neuron" else head_output_weights)(model, layer, index)
            names.add(piece.name)
            if mask.mode == "mean":
                names.add(_output_bias_name(model, kind, layer) or _added_bias_name(piece))
    return names & set(hf_state_dict(model))  # an added bias is new, not a copy


def _write_mask(model: Any, mask: AblationMask) -> None:
    """Write ``mask`` into ``model``'s weights in place (a plain HF copy made by ``bake``)."""
    for kind in ("neuron", "head"):
        selected = mask.tensor(kind)  # type: ignore[arg-type]
        if selected is None:
            continue
        for layer, index in selected.nonzero().tolist():
            piece: WeightSlice = (
                neuron_output_weights(model, layer, index)
                if kind == "neuron"
                else head_output_weights(model, layer, index)
            )
            weight = piece.of(model)
            if mask.mode == "zero":
                weight.zero_()
            elif mask.mode == "scale":
                scales = mask.neuron_scales if kind == "neuron" else mask.head_scales
                assert scales is not None
                weight.mul_(scales[layer, index].to(weight.dtype))
            else:  # mean
                means = mask.neuron_means if kind == "neuron" else mask.head_means
                assert means is not None
                value = means[layer, index].reshape(-1).to(weight.device)  # [1] or [d_head]
                bias_name = _output_bias_name(model, kind, layer) or _added_bias_name(piece)
                bias = WeightSlice(bias_name, 0, 0, weight.shape[1 - piece.dim]).of(model)
                bias.add_(_fold(weight, piece.dim, value))
                weight.zero_()


def _added_bias_name(piece: WeightSlice) -> str:
    return piece.name.removesuffix(".weight") + ".bias"
