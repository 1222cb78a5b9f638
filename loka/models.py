"""Load causal LMs for hooking, and name the weights that each component writes through.

loka reads a model through TransformerLens hooks and edits it through its Hugging Face weights.
This module is the one place that knows how those two views line up:

* ``load_model`` boots a Hugging Face checkpoint (a local directory, or a hub id) as a
  TransformerLens 4 ``TransformerBridge``. The bridge wraps the real HF model
  (``bridge.original_model``) and runs it with eager attention, so its logits equal the HF
  model's while every component exposes hooks such as ``blocks.{l}.mlp.hook_post``.
* A *component* is a neuron (index ``i`` of ``blocks.{l}.mlp.hook_post``, shape
  ``[batch, pos, d_mlp]``) or an attention head (index ``h`` of ``blocks.{l}.attn.hook_z``,
  shape ``[batch, pos, n_heads, d_head]``). Each writes into the residual stream through a slice
  of one HF weight matrix: neuron ``i`` through row/column ``i`` of the MLP output projection
  (TL's ``W_out[l][i]``), head ``h`` through the ``d_head``-wide block ``h`` of the attention
  output projection (TL's ``W_O[l][h]``). ``neuron_output_weights`` and ``head_output_weights``
  return that slice as a ``WeightSlice``; zeroing it is exactly zero-ablating the hook
  activation, permanently and in the weights.
* ``SUPPORTED_ARCHITECTURES`` holds the per-architecture HF parameter names (GPT-2 ``c_proj``
  is a ``Conv1D`` stored ``[in, out]``; NeoX and Llama use ``nn.Linear``, stored ``[out, in]``).
* ``fingerprint`` hashes the weights, so that a result can name the exact model it came from.

The bridge wraps HF submodules in place, so inside ``bridge.original_model`` a parameter has
aliases such as ``transformer.h.0._original_component.mlp._original_component.c_proj...``
plus bridge-only entries (a zero ``lm_head.bias``). Everything here speaks the plain HF names
of the checkpoint on disk; ``hf_state_dict`` gives that view of either kind of model.

Example::

    model = load_model("path/to/checkpoint")
    w = neuron_output_weights(model, layer=1, index=7)
    with torch.no_grad():
        w.of(model).zero_()          # neuron L1N7 now writes nothing
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

logger = logging.getLogger(__name__)

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "ArchitectureSpec",
    "ModelFingerprint",
    "WeightSlice",
    "architecture",
    "fingerprint",
    "head_output_weights",
    "hf_model",
    "hf_state_dict",
    "load_model",
    "logits",
    "neuron_input_weights",
    "neuron_output_weights",
    "plain_copy",
    "quiet_transformers",
    "same_kind_as",
]

Model = TransformerBridge | PreTrainedModel

CONFIG_FILE = "config.json"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
HUB_TIMEOUT_S = 10.0
"""Seconds to wait for the hub to answer about a hub id (one request, no retries)."""


# --------------------------------------------------------------------------------------------
# Architectures: where each component's weights live in the HF state dict
# --------------------------------------------------------------------------------------------


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
        ),
    }
)


def _supported() -> str:
    return ", ".join(repr(t) for t in SUPPORTED_ARCHITECTURES)


def _spec_for(model_type: str | None, what: str) -> ArchitectureSpec:
    spec = SUPPORTED_ARCHITECTURES.get(model_type or "")
    if spec is None:
        raise ValueError(
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
    raise TypeError(f"expected a TransformerBridge or a transformers PreTrainedModel, got {type(model).__name__}.")


def architecture(model: Model) -> ArchitectureSpec:
    """The weight-name spec for ``model``'s HF ``model_type`` (ValueError if unsupported)."""
    return _spec_for(hf_model(model).config.model_type, "the model")


# --------------------------------------------------------------------------------------------
# Weight slices: the weights one component writes through
# --------------------------------------------------------------------------------------------


def _unwrap(module: nn.Module) -> nn.Module:
    """Descend through TL bridge wrappers to the HF module that owns the weights."""
    while isinstance(getattr(module, "original_component", None), nn.Module):
        module = module.original_component
    return module


def _is_wrapped(model: PreTrainedModel) -> bool:
    """Whether TL bridge components have been swapped into ``model``'s module tree."""
    return any(_unwrap(m) is not m for m in model.modules())


def _get_tensor(model: PreTrainedModel, name: str) -> Tensor:
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
            raise ValueError(f"need 0 <= start < stop, got start={self.start}, stop={self.stop}.")

    def of(self, model: Model) -> Tensor:
        """The live view of this slice in ``model`` (bridge or HF); in-place edits write it."""
        param = _get_tensor(hf_model(model), self.name)
        return param.narrow(self.dim, self.start, self.stop - self.start)


@dataclass(frozen=True)
class _Dims:
    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int


def _dims(model: Model) -> _Dims:
    hf = hf_model(model)
    spec = architecture(model)
    config = hf.config
    n_layers = int(config.num_hidden_layers)
    n_heads = int(config.num_attention_heads)
    w_out = _get_tensor(hf, spec.name(spec.mlp_out_weight, 0))
    w_o = _get_tensor(hf, spec.name(spec.attn_out_weight, 0))
    return _Dims(
        n_layers=n_layers,
        n_heads=n_heads,
        d_head=w_o.shape[spec.attn_out_head_dim] // n_heads,
        d_mlp=w_out.shape[spec.mlp_out_neuron_dim],
        d_vocab=int(config.vocab_size),
    )


def _check_range(what: str, value: int, size: int) -> None:
    if not 0 <= value < size:
        raise ValueError(f"{what} must be in range(0, {size}) for this model, got {value}.")


def neuron_output_weights(model: Model, layer: int, index: int) -> WeightSlice:
    """The slice of the MLP output projection (``W_out[layer][index]``) that neuron ``index``
    of ``blocks.{layer}.mlp.hook_post`` writes through: zeroing it zero-ablates the neuron."""
    spec, dims = architecture(model), _dims(model)
    _check_range("layer", layer, dims.n_layers)
    _check_range("neuron index", index, dims.d_mlp)
    return WeightSlice(spec.name(spec.mlp_out_weight, layer), spec.mlp_out_neuron_dim, index, index + 1)


def neuron_input_weights(model: Model, layer: int, index: int) -> tuple[WeightSlice, ...]:
    """The slices of the MLP input projection(s) and their biases that compute neuron ``index``'s
    pre-activation (``W_in``, plus ``W_gate`` for gated MLPs), weights first."""
    spec, dims = architecture(model), _dims(model)
    _check_range("layer", layer, dims.n_layers)
    _check_range("neuron index", index, dims.d_mlp)
    weights = [WeightSlice(spec.name(t, layer), spec.mlp_in_neuron_dim, index, index + 1) for t in spec.mlp_in_weights]
    biases = [WeightSlice(spec.name(t, layer), 0, index, index + 1) for t in spec.mlp_in_biases]
    return (*weights, *biases)


def head_output_weights(model: Model, layer: int, head: int) -> WeightSlice:
    """The ``d_head``-wide block of the attention output projection (``W_O[layer][head]``) that
    head ``head`` of ``blocks.{layer}.attn.hook_z`` writes through: zeroing it zero-ablates
    the head."""
    spec, dims = architecture(model), _dims(model)
    _check_range("layer", layer, dims.n_layers)
    _check_range("head", head, dims.n_heads)
    start = head * dims.d_head
    return WeightSlice(spec.name(spec.attn_out_weight, layer), spec.attn_out_head_dim, start, start + dims.d_head)


# --------------------------------------------------------------------------------------------
# State dict and fingerprint
# --------------------------------------------------------------------------------------------

_HF_NAMES_CACHE: dict[tuple[type, str], tuple[str, ...]] = {}


def _hf_names(model: PreTrainedModel) -> tuple[str, ...]:
    """The state-dict names an unwrapped instance of ``model``'s class would have."""
    if not _is_wrapped(model):
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
    if not _is_wrapped(hf):
        return hf.state_dict()
    return {name: _get_tensor(hf, name).detach() for name in _hf_names(hf)}


@dataclass(frozen=True)
class ModelFingerprint:
    """What a model is (architecture and sizes) and which exact weights it has (sha256)."""

    architecture: str
    n_layers: int
    n_heads: int
    d_mlp: int
    d_vocab: int
    weights_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelFingerprint:
        expected = {f.name for f in fields(cls)}
        missing, extra = expected - set(d), set(d) - expected
        if missing or extra:
            raise ValueError(
                f"a ModelFingerprint needs exactly the keys {sorted(expected)}; "
                f"missing {sorted(missing)}, unexpected {sorted(extra)}."
            )
        return cls(**d)


def fingerprint(model: Model) -> ModelFingerprint:
    """Architecture, sizes and a sha256 of every weight of ``model`` (bridge or HF).

    The hash runs over the HF state dict in sorted name order (name, dtype, shape, bytes), so
    equal weights give equal hashes, for a bridge and for the plain HF model alike, and any
    change to any weight changes it.
    """
    dims = _dims(model)
    digest = hashlib.sha256()
    state = hf_state_dict(model)
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        header = f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0"
        digest.update(header.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return ModelFingerprint(
        architecture=architecture(model).model_type,
        n_layers=dims.n_layers,
        n_heads=dims.n_heads,
        d_mlp=dims.d_mlp,
        d_vocab=dims.d_vocab,
        weights_sha256=digest.hexdigest(),
    )


# --------------------------------------------------------------------------------------------
# Running a model
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and warnings for the duration of a load."""
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_were_on:
            hf_logging.enable_progress_bar()


def _looks_like_path(name: str) -> bool:
    """True unless ``name`` could be a hub id (``"repo"`` or ``"owner/repo"``) and is not on disk
    (as in ``from_pretrained``, a local directory wins over a hub id of the same name)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if Path(name).expanduser().exists() or name in (".", ".."):
        return True
    if name.startswith(("/", "./", "../", "~")) or "\\" in name:
        return True
    if name.count("/") > 1 or ("/" in name and Path(name.split("/", 1)[0]).exists()):
        return True  # more than owner/repo, or its first part exists on disk
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def _local_config(path: Path, shown: str) -> Path:
    """Check that ``path`` (``shown`` as the caller wrote it) is an HF model directory.

    Returns the path of its config.json.
    """
    if not path.exists():
        raise FileNotFoundError(
            f"model path {shown!r} does not exist; pass a Hugging Face model directory "
            f"(config.json, weights, tokenizer) or a hub id such as 'EleutherAI/pythia-70m'."
        )
    if not path.is_dir():
        raise FileNotFoundError(
            f"model path {shown!r} is a file; pass the Hugging Face model directory that "
            f"holds {CONFIG_FILE}, the weights and the tokenizer."
        )
    config = path / CONFIG_FILE
    if not config.is_file():
        raise FileNotFoundError(
            f"{shown!r} has no {CONFIG_FILE}, so it is not a Hugging Face model directory; "
            f"save one with model.save_pretrained(dir) and tokenizer.save_pretrained(dir)."
        )
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise FileNotFoundError(
            f"{shown!r} has {CONFIG_FILE} but no weights; expected one of {', '.join(WEIGHT_FILES)}."
        )
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{shown!r} has no tokenizer; expected one of {', '.join(TOKENIZER_FILES)} "
            f"(save one with tokenizer.save_pretrained(dir))."
        )
    return config


def _hub_config(repo_id: str) -> Path:
    """Fetch (or find in the cache) ``repo_id``'s config.json; fail fast if the hub is unreachable.

    transformers retries an unreachable hub for ~25 s per file; one request with no retries
    tells us the same thing at once.
    """
    import huggingface_hub
    from huggingface_hub import constants

    def fail(reason: str) -> ValueError:
        return ValueError(
            f"{repo_id!r} is not a local path and could not be loaded from the Hugging Face hub "
            f"({reason}); pass a local model directory instead."
        )

    cached = huggingface_hub.try_to_load_from_cache(repo_id, CONFIG_FILE)
    if constants.is_offline_mode():
        if isinstance(cached, str):
            return Path(cached)
        raise fail("offline mode is on and it is not in the local cache")
    try:
        url = huggingface_hub.hf_hub_url(repo_id, CONFIG_FILE)
        huggingface_hub.get_hf_file_metadata(url, timeout=HUB_TIMEOUT_S)
        return Path(huggingface_hub.hf_hub_download(repo_id, CONFIG_FILE))
    except Exception as err:  # network, unknown or gated repo: all mean "cannot load this id"
        hint = "; set HF_HUB_OFFLINE=1 to use the cached copy" if isinstance(cached, str) else ""
        raise fail(f"{type(err).__name__}: {err}{hint}") from err


def _read_model_type(config_path: Path, what: str) -> ArchitectureSpec:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"could not read {config_path} as JSON: {err}") from err
    return _spec_for(config.get("model_type") if isinstance(config, dict) else None, what)


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TransformerBridge:
    """Load a GPT-2, GPT-NeoX or Llama checkpoint as a TransformerLens bridge, in eval mode.

    ``name_or_path`` is a local Hugging Face directory (config.json, weights, tokenizer), or a
    hub id such as ``"EleutherAI/pythia-70m"`` (needs network, or ``HF_HUB_OFFLINE=1`` and a
    cached copy). The bridge runs the HF model itself, so its logits equal
    ``AutoModelForCausalLM.from_pretrained(..., attn_implementation="eager")``'s, and its hooks
    (``blocks.{l}.mlp.hook_post``, ``blocks.{l}.attn.hook_z``, ...) see the real activations.
    Its tokenizer pads with eos when it has no pad token of its own.

    Raises:
        FileNotFoundError: a path that does not exist, or a directory that is not a model.
        ValueError: an unsupported architecture, or a hub id that cannot be fetched.
    """
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(str(name_or_path)):
        shown = os.fspath(name_or_path)
        path = Path(shown).expanduser()
        spec = _read_model_type(_local_config(path, shown), f"the model in {shown!r}")
        source, where = str(path), f"the model directory {shown!r}"
    else:
        repo_id = str(name_or_path)
        spec = _read_model_type(_hub_config(repo_id), f"hub model {repo_id!r}")
        source, where = repo_id, f"hub model {repo_id!r}"

    logger.info("loading %s (%s) on %s as %s", where, spec.model_type, device, dtype)
    try:
        with quiet_transformers():
            bridge = TransformerBridge.boot_transformers(source, device=device, dtype=dtype)
    except Exception as err:
        raise ValueError(f"could not load {where}: {type(err).__name__}: {err}") from err

    bridge.eval()
    tokenizer = bridge.tokenizer
    if tokenizer is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return bridge


# --------------------------------------------------------------------------------------------
# Copies: a fresh HF model from (changed) weights, re-wrapped for TransformerLens
# --------------------------------------------------------------------------------------------
# Edits never touch the model they are given; they return a new one, built from the weights
# rather than by deep-copying the module tree: a bridge keeps private split copies of some
# weights (GPT-NeoX query/key/value), so weights changed by name inside a bridge may not be the
# ones its forward uses, and a deep copy would also carry over hooks. ``plain_copy`` builds a
# plain HF model of the same class and loads ``hf_state_dict(model)`` (or changed weights) into
# it; the caller edits that copy; ``same_kind_as`` wraps it in a new bridge when the input was one.


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
