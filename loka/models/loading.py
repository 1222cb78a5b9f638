"""Loading: a Hugging Face checkpoint (a local directory, or a hub id) as a TransformerLens bridge.

:func:`load_model` boots the checkpoint as a TransformerLens 4 ``TransformerBridge``. The bridge
wraps the real HF model (``bridge.original_model``) and runs it with eager attention, so its
logits equal the HF model's (to rounding: GPT-2's activation runs as one fused kernel,
:mod:`loka.models.activations`) while every component exposes hooks such as
``blocks.{l}.mlp.hook_post``. Paths are checked before anything is loaded, so a wrong path or a
directory that is not a model fails with a message that says what is missing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import torch
from transformer_lens.model_bridge import TransformerBridge

from loka.base.errors import UsageError
from loka.models.activations import fuse_activations
from loka.models.architectures import ArchitectureSpec, spec_for

__all__ = [
    "DEVICE_MAP_STRATEGIES",
    "DTYPES",
    "DeviceMap",
    "DTypeName",
    "load_model",
    "quiet_transformers",
    "resolve_dtype",
    "TOKENIZER_PATTERNS",
]

TOKENIZER_PATTERNS = (
    "tokenizer*.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "chat_template.*",
)
"""Glob patterns of the files a Hugging Face tokenizer is saved as (what an export copies and a certificate hashes)."""

logger = logging.getLogger(__name__)


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
        raise UsageError(f"could not read {config_path} as JSON: {err}") from err
    return spec_for(config.get("model_type") if isinstance(config, dict) else None, what)


DTypeName = Literal["float32", "bfloat16", "float16"]
DTYPES: Mapping[str, torch.dtype] = MappingProxyType(
    {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
)
"""The dtypes a model can be loaded in, by name (``--dtype`` on the command line)."""
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
"""accelerate's placement strategies that ``device_map`` accepts as a string."""

DeviceMap = str | Mapping[str, str | int | torch.device]


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``dtype`` as a ``torch.dtype``: a name in :data:`DTYPES` or one of those dtypes; ``None``
    is float32. Anything else is a one-line UsageError naming what is allowed."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise UsageError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)} (or the torch dtype)")


def _check_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UsageError(f"device {device!r} is not a torch device; use e.g. 'cpu', 'cuda' or 'cuda:1'") from err


def _check_device_map(device_map: DeviceMap) -> str | dict[str, str | int]:
    """A device map accelerate accepts: a strategy name, or ``{module name: device}``."""
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise UsageError(
                f"device_map {device_map!r} is not supported; use one of {', '.join(DEVICE_MAP_STRATEGIES)} "
                "or a dict {module name: device}"
            )
        return device_map
    if not isinstance(device_map, Mapping) or not device_map:
        raise UsageError(
            f"device_map must be a strategy name or a non-empty dict {{module: device}}, got {device_map!r}"
        )
    resolved: dict[str, str | int] = {}
    for module, where in device_map.items():
        if not isinstance(module, str):
            raise UsageError(f"device_map keys are module names (str), got {module!r}")
        if isinstance(where, bool) or not isinstance(where, str | int | torch.device):
            raise UsageError(f"device_map[{module!r}] = {where!r}; use a device such as 'cpu', 'cuda:0' or 0")
        resolved[module] = str(where) if isinstance(where, torch.device) else where
    return resolved


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: DTypeName | torch.dtype | None = None,
    device_map: DeviceMap | None = None,
    max_memory: Mapping[str | int, str | int] | None = None,
) -> TransformerBridge:
    """Load a GPT-2, GPT-NeoX or Llama checkpoint as a TransformerLens bridge, in eval mode.

    ``name_or_path`` is a local Hugging Face directory (config.json, weights, tokenizer), or a
    hub id such as ``"EleutherAI/pythia-70m"`` (needs network, or ``HF_HUB_OFFLINE=1`` and a
    cached copy). The bridge runs the HF model itself, so its logits equal
    ``AutoModelForCausalLM.from_pretrained(..., attn_implementation="eager")``'s (to rounding:
    GPT-2's ``gelu_new`` runs fused, :func:`loka.models.activations.fuse_activations`), and its hooks
    (``blocks.{l}.mlp.hook_post``, ``blocks.{l}.attn.hook_z``, ...) see the real activations.
    Its tokenizer pads with eos when it has no pad token of its own.

    Placement and precision (passed through to ``TransformerBridge.boot_transformers``):

    * ``device``: one device for the whole model (``"cpu"``, ``"cuda"``, ``"cuda:1"``); the
      default is the CPU.
    * ``device_map``: accelerate's placement instead of one device: ``"auto"`` (or
      ``"balanced"``, ``"balanced_low_0"``, ``"sequential"``) spreads the blocks over the visible
      GPUs, a dict ``{module name: device}`` places them by hand; ``max_memory``
      (``{0: "20GiB", "cpu": "60GiB"}``) caps each device. Exclusive with ``device``. Inputs
      then go to :func:`loka.models.input_device` (the input embedding's device). A module that
      accelerate offloads (to ``"disk"``, or to the CPU beside GPUs) runs and hooks normally but
      holds ``meta`` weights between calls: ``hf_state_dict`` shows them as ``meta``,
      :func:`loka.models.weights.weight_values` reads their values, and copies and edits keep
      them offloaded except the modules they write (:mod:`loka.models.copies`).
    * ``dtype``: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``, or the torch dtype.
      Log-probabilities (:func:`loka.data.token_log_probs`) and attribution scores are computed
      in float32 from the model's outputs whatever its dtype.

    Raises:
        FileNotFoundError: a path that does not exist, or a directory that is not a model.
        UsageError: an unsupported architecture, dtype, device or device map, a hub id that
            cannot be fetched, or a checkpoint that fails to load.
    """
    torch_dtype = resolve_dtype(dtype)
    if device is not None and device_map is not None:
        raise UsageError("give device or device_map, not both (device_map places the model itself)")
    if max_memory is not None and device_map is None:
        raise UsageError("max_memory caps the devices of a device_map; give device_map (e.g. 'auto') with it")
    placement: dict[str, Any]
    if device_map is not None:
        placement = {"device_map": _check_device_map(device_map)}
        if max_memory is not None:
            placement["max_memory"] = dict(max_memory)
    else:
        placement = {"device": _check_device("cpu" if device is None else device)}

    if isinstance(name_or_path, os.PathLike) or _looks_like_path(str(name_or_path)):
        shown = os.fspath(name_or_path)
        path = Path(shown).expanduser()
        spec = _read_model_type(_local_config(path, shown), f"the model in {shown!r}")
        source, where = str(path), f"the model directory {shown!r}"
    else:
        repo_id = str(name_or_path)
        spec = _read_model_type(_hub_config(repo_id), f"hub model {repo_id!r}")
        source, where = repo_id, f"hub model {repo_id!r}"

    shown_placement = placement.get("device", placement.get("device_map"))
    logger.info("loading %s (%s) on %s as %s", where, spec.model_type, shown_placement, torch_dtype)
    try:
        with quiet_transformers():
            bridge = TransformerBridge.boot_transformers(source, dtype=torch_dtype, **placement)
    except Exception as err:
        raise UsageError(f"could not load {where}: {type(err).__name__}: {err}") from err

    fuse_activations(bridge.original_model)
    bridge.eval()
    tokenizer = bridge.tokenizer
    if tokenizer is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return bridge
