"""Loading: a Hugging Face checkpoint (a local directory, or a hub id) as a TransformerLens bridge.

:func:`load_model` boots the checkpoint as a TransformerLens 4 ``TransformerBridge``. The bridge
wraps the real HF model (``bridge.original_model``) and runs it with eager attention, so its
logits equal the HF model's while every component exposes hooks such as
``blocks.{l}.mlp.hook_post``. Paths are checked before anything is loaded, so a wrong path or a
directory that is not a model fails with a message that says what is missing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge

from loka.errors import UsageError
from loka.models.architectures import ArchitectureSpec, spec_for

__all__ = ["load_model", "quiet_transformers"]

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
        raise UsageError(f"could not load {where}: {type(err).__name__}: {err}") from err

    bridge.eval()
    tokenizer = bridge.tokenizer
    if tokenizer is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return bridge
