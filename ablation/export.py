"""Export: write an edited model as an ordinary Hugging Face checkpoint, plus a record of the edit.

``export_checkpoint(model, out_dir, ...)`` writes what ``transformers.AutoModelForCausalLM
.from_pretrained(out_dir)`` needs and nothing loka-specific is required to use it:

* ``config.json``, ``model.safetensors`` (safetensors only: no pickle anywhere), and
  ``generation_config.json`` when the model has one;
* the tokenizer files, copied from the source checkpoint's directory when it is known (so the
  exported tokenizer behaves exactly like the source's), else saved from ``tokenizer`` or the
  bridge's own tokenizer;
* ``loka_edit.json``: what was done and to what: the method and its settings, the source
  checkpoint's path and fingerprint, the exported model's fingerprint, the sha256 of every weight
  file, the mask (its file ``loka_mask.json``, values beside it in safetensors), an evaluation
  summary and notes when given;
* any further JSON ``documents`` the caller names (``loka unlearn`` writes ``loka_seen.json``,
  what the method saw: :class:`loka.protocol.Seen`), listed in ``loka_edit.json``.

A bridge's HF model is saved under its plain HF names (``loka.models.hf_state_dict``), tied input
and output embeddings stay tied (GPT-2), and the ``output_attentions`` flag that TransformerLens
sets on the config is dropped. Weights that a ``device_map`` offloads are read from their
accelerate hooks (``loka.models.weights.weight_values``), one tensor at a time.

The write is atomic: everything goes into a temporary directory beside ``out_dir``, which is
renamed into place only when complete; on any error it is removed, so nothing half-written is
left behind. An existing ``out_dir`` that is not an empty directory is refused unless
``overwrite=True`` (and even then only a previous export, a directory holding ``loka_edit.json``,
is replaced: :func:`loka.base.files.check_output`); the
source checkpoint's own directory (or any directory containing it) is always refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, PreTrainedModel

from ablation.mask import AblationMask
from ablation.mask_file import file_sha256
from loka.base.errors import UsageError
from loka.base.files import check_output
from loka.models import TOKENIZER_PATTERNS, ModelFingerprint, fingerprint, hf_model, quiet_transformers
from loka.models.weights import weight_values

__all__ = ["EDIT_FILE", "MASK_FILE", "export_checkpoint"]

logger = logging.getLogger(__name__)

EDIT_FILE = "loka_edit.json"
MASK_FILE = "loka_mask.json"
EDIT_SCHEMA_VERSION = 1
GENERATION_FILE = "generation_config.json"
_HOOK_FLAGS = ("output_attentions", "output_hidden_states", "return_dict_in_generate")
_UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def _as_json(name: str, value: Any) -> Any:
    """``value`` as JSON data (dataclasses and objects with ``to_dict`` allowed), or a ValueError."""
    if value is None:
        return None
    if hasattr(value, "to_dict") and callable(value.to_dict):
        value = value.to_dict()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise UsageError(f"{name} must be JSON-serialisable (numbers, strings, lists, dicts): {err}") from err


def _documents(documents: Mapping[str, Any] | None) -> dict[str, Any]:
    """``documents`` as JSON data by file name; a UsageError for a name export may not write."""
    if documents is None:
        return {}
    if not isinstance(documents, Mapping):
        raise UsageError(f"documents must be a mapping of file name -> JSON data, got {type(documents).__name__}")
    out = {}
    for name, data in documents.items():
        plain = isinstance(name, str) and Path(name).name == name and name.startswith("loka_")
        if not plain or not name.endswith(".json") or name in (EDIT_FILE, MASK_FILE):
            raise UsageError(
                f"document name {name!r} is not allowed: a plain file name loka_*.json other than {EDIT_FILE} "
                f"and {MASK_FILE}"
            )
        out[name] = _as_json(f"document {name}", data)
    return out


def _source_dirs(model: Any, source: Any) -> list[Path]:
    """Directories that hold the checkpoint the model came from (to refuse, and to copy the tokenizer from)."""
    found: list[Path] = []
    candidates: list[Any] = []
    if isinstance(source, str | os.PathLike):
        candidates.append(source)
    for m in (source, model):
        if isinstance(m, TransformerBridge | PreTrainedModel):
            candidates.append(getattr(hf_model(m).config, "_name_or_path", "") or "")
    for c in candidates:
        path = Path(c).expanduser()
        if str(c) and path.is_dir() and (path / "config.json").is_file():
            resolved = path.resolve()
            if resolved not in found:
                found.append(resolved)
    return found


def _fingerprint_dir(path: Path) -> ModelFingerprint:
    with quiet_transformers():
        return fingerprint(AutoModelForCausalLM.from_pretrained(path))


def _source_record(source: Any, mask: AblationMask | None, dirs: list[Path]) -> dict[str, Any]:
    """``{"path", "fingerprint"}`` of the source checkpoint, as far as it is known."""
    if isinstance(source, TransformerBridge | PreTrainedModel):
        return {"path": str(dirs[0]) if dirs else None, "fingerprint": fingerprint(source).to_dict()}
    if isinstance(source, str | os.PathLike):
        path = Path(source).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise UsageError(f"source {os.fspath(source)!r} is not a Hugging Face model directory (no config.json)")
        return {"path": str(path), "fingerprint": _fingerprint_dir(path).to_dict()}
    if source is not None:
        raise UsageError(
            f"source must be the source checkpoint's directory or the source model, got {type(source).__name__}"
        )
    if dirs:
        return {"path": str(dirs[0]), "fingerprint": _fingerprint_dir(dirs[0]).to_dict()}
    fp = None if mask is None else mask.fingerprint  # the model the mask was made for
    return {"path": None, "fingerprint": None if fp is None else fp.to_dict()}


def _check_target(out_dir: Path, dirs: list[Path], overwrite: bool) -> None:
    resolved = out_dir.expanduser().resolve()
    for src in dirs:
        if resolved == src or resolved in src.parents:
            what = (
                "the source checkpoint's own directory"
                if resolved == src
                else f"a directory that contains the source checkpoint {src}"
            )
            raise UsageError(f"refusing to export onto {out_dir}: it is {what}; choose a new directory")
    check_output(
        out_dir,
        overwrite=overwrite,
        marker=EDIT_FILE,
        what="export",
        how_to_overwrite="pass overwrite=True to replace a previous export",
    )


def _make_parents(out_dir: Path) -> list[Path]:
    """Create ``out_dir``'s missing parent directories (as ``save_pretrained`` does); return them, deepest first."""
    missing = [p for p in (out_dir.parent, *out_dir.parent.parents) if not p.exists()]
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _remove_empty(missing)
        raise PermissionError(
            f"cannot export to {out_dir}: cannot create {out_dir.parent} ({err.strerror or err})"
        ) from err
    return missing


def _remove_empty(directories: list[Path]) -> None:
    """Undo ``_make_parents`` after a failure: remove the directories it created, if still empty."""
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()


def _temp_dir_beside(out_dir: Path, what: str) -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{what}-", dir=out_dir.parent))
    except OSError as err:
        raise PermissionError(
            f"cannot export to {out_dir}: cannot write in {out_dir.parent} ({err.strerror or err})"
        ) from err


def _write_weights(model: Any, tmp: Path, dirs: list[Path]) -> None:
    hf = hf_model(model)
    with quiet_transformers():
        hf.save_pretrained(tmp, state_dict=weight_values(model))  # offloaded weights read from their hooks
    config_path = tmp / "config.json"
    config = json.loads(config_path.read_text())
    source_config: dict[str, Any] = {}
    if dirs:
        source_config = json.loads((dirs[0] / "config.json").read_text())
    if "output_attentions" not in source_config:
        config.pop("output_attentions", None)  # set by TransformerLens for its hooks, not part of the model
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    _fix_generation_config(tmp / GENERATION_FILE, dirs)
    unsafe = [p.name for p in tmp.iterdir() if p.suffix in _UNSAFE_SUFFIXES]
    if unsafe:
        raise RuntimeError(f"refusing to export pickle-based weight files {unsafe}; loka writes safetensors only")


def _fix_generation_config(path: Path, dirs: list[Path]) -> None:
    """The source's generation config when it has one; else the written one without the flags
    TransformerLens switches on for its hooks (with them, ``generate()`` returns an output object
    with attentions instead of token ids)."""
    source = next((d / GENERATION_FILE for d in dirs if (d / GENERATION_FILE).is_file()), None)
    if source is not None:
        shutil.copyfile(source, path)
    elif path.is_file():
        config = json.loads(path.read_text())
        for key in _HOOK_FLAGS:
            config.pop(key, None)
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_tokenizer(model: Any, tokenizer: Any, tmp: Path, dirs: list[Path]) -> str:
    """Write the tokenizer files; return where they came from."""
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
        return "tokenizer argument"
    for src in dirs:
        files = sorted({p for pattern in TOKENIZER_PATTERNS for p in src.glob(pattern) if p.is_file()})
        if files:
            for f in files:
                shutil.copy2(f, tmp / f.name)
            return f"copied from {src}"
    own = getattr(model, "tokenizer", None)
    if own is None:
        raise UsageError(
            "no tokenizer to export: the source directory is unknown and the model has none; pass tokenizer=..."
        )
    logger.warning("exporting the bridge's tokenizer; it may add a BOS token that the source tokenizer did not")
    own.save_pretrained(tmp)
    return "saved from the model's tokenizer"


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move ``tmp`` to ``out_dir``; an existing ``out_dir`` is swapped out first and removed after."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    backup = _temp_dir_beside(out_dir, "old")
    os.rmdir(backup)
    os.rename(out_dir, backup)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(backup, out_dir)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def export_checkpoint(
    model: Any,
    out_dir: str | os.PathLike[str],
    *,
    mask: AblationMask | None = None,
    source: str | os.PathLike[str] | TransformerBridge | PreTrainedModel | None = None,
    notes: str | None = None,
    overwrite: bool = False,
    method: str | None = None,
    settings: Mapping[str, Any] | None = None,
    evaluation: Any = None,
    tokenizer: Any = None,
    documents: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a bridge or plain HF model) to ``out_dir`` as a HF checkpoint + ``loka_edit.json``.

    Args:
        model: the edited model (from ``bake`` or ``edit``, or any bridge / HF model).
        out_dir: a new directory (missing parents are created, and removed again if the export fails).
        mask: the mask that was applied; saved as ``loka_mask.json`` (+ values) and summarised.
        source: the source checkpoint's directory or model (default: the directory ``model``
            was loaded from, when known); its fingerprint is recorded (else the mask's).
        notes: free text recorded in ``loka_edit.json``.
        overwrite: replace an existing previous export at ``out_dir``.
        method: the name of what produced the model (e.g. ``"bake"``, ``"loka"``).
        settings: the method's settings (JSON-serialisable).
        evaluation: an evaluation summary (a mapping, a dataclass, or an object with ``to_dict``).
        tokenizer: the tokenizer to save (default: copy the source directory's tokenizer files).
        documents: more JSON files to write into the directory, by file name (``"loka_*.json"``,
            not one export writes itself) -> JSON data (or an object with ``to_dict``).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        FileExistsError: ``out_dir`` exists (without ``overwrite``, or is not a previous export).
        ValueError: ``out_dir`` is (or contains) the source directory; a bad argument.
        PermissionError: ``out_dir``'s parent cannot be created or written.
    """
    hf_model(model)  # TypeError for anything that is not a model
    out_dir = Path(out_dir).expanduser()
    if mask is not None and not isinstance(mask, AblationMask):
        raise UsageError(f"mask must be an ablation.AblationMask or None, got {type(mask).__name__}")
    if notes is not None and not isinstance(notes, str):
        raise UsageError(f"notes must be a string, got {type(notes).__name__}")
    if method is not None and not isinstance(method, str):
        raise UsageError(f"method must be a string, got {type(method).__name__}")
    settings_json = _as_json("settings", None if settings is None else dict(settings))
    evaluation_json = _as_json("evaluation", evaluation)
    documents_json = _documents(documents)
    dirs = _source_dirs(model, source)
    _check_target(out_dir, dirs, overwrite)
    source_json = _source_record(source, mask, dirs)

    created = _make_parents(out_dir)
    try:
        tmp = _temp_dir_beside(out_dir, "tmp")
    except BaseException:
        _remove_empty(created)
        raise
    try:
        _write_weights(model, tmp, dirs)
        tokenizer_origin = _write_tokenizer(model, tokenizer, tmp, dirs)
        mask_json = None
        if mask is not None:
            mask.save(tmp / MASK_FILE)
            mask_json = {"file": MASK_FILE, **mask.summary()}
        weight_files = sorted(p for p in tmp.iterdir() if p.name.endswith((".safetensors", ".safetensors.index.json")))
        weight_files = [p for p in weight_files if not p.name.startswith("loka_")]
        record = {
            "format": "loka-edit",
            "schema_version": EDIT_SCHEMA_VERSION,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "method": method,
            "settings": settings_json,
            "source": source_json,
            "fingerprint": fingerprint(model).to_dict(),
            "weights_sha256": {p.name: file_sha256(p) for p in weight_files},
            "tokenizer": tokenizer_origin,
            "mask": mask_json,
            "evaluation": evaluation_json,
            "notes": notes,
            "documents": sorted(documents_json) or None,
        }
        for name, data in documents_json.items():
            (tmp / name).write_text(json.dumps(data, indent=1) + "\n")
        (tmp / EDIT_FILE).write_text(json.dumps(record, indent=2) + "\n")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise
    logger.info("exported %s (%s)", out_dir, ", ".join(sorted(p.name for p in out_dir.iterdir())))
    return out_dir
