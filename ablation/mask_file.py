"""The mask file format: readable JSON for the components, safetensors for the values.

A person should be able to open a mask and see what it ablates, so the JSON lists the ablated
indices layer by layer; the per-component values (means, scale factors), which are dense float
tensors, go into a safetensors file beside it, named in the JSON with its sha256::

    {
      "format": "loka-ablation-mask",
      "schema_version": 1,
      "mode": "mean",
      "n_layers": 2,
      "d_mlp": 64,
      "n_heads": 4,
      "fingerprint": {"architecture": "gpt2", ..., "weights_sha256": "9f2c..."},
      "neurons": [[3, 17], [5]],
      "heads": [[], [1]],
      "values": {"file": "forget_mask.safetensors", "sha256": "...", "tensors": ["neuron_means", "head_means"]}
    }

``neurons`` / ``heads`` (and ``d_mlp`` / ``n_heads``) are ``null`` when the mask says nothing
about that kind; ``values`` is ``null`` for ``zero`` and ``resample`` masks. Saving then loading
gives an equal mask (same indices, mode, fingerprint, value tensors bit for bit and dtype), and
loading rejects anything else with a ValueError that names the file and the first problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ablation.mask import _VALUE_FIELDS, MODES, AblationMask
from loka.models import ModelFingerprint

__all__ = ["FORMAT", "SCHEMA_VERSION", "load_mask", "mask_to_json", "save_mask", "values_path"]

FORMAT = "loka-ablation-mask"
SCHEMA_VERSION = 1
_KEYS = (
    "format",
    "schema_version",
    "mode",
    "n_layers",
    "d_mlp",
    "n_heads",
    "fingerprint",
    "neurons",
    "heads",
    "values",
)
_WIDTH = {"neurons": "d_mlp", "heads": "n_heads"}


def values_path(path: str | os.PathLike[str]) -> Path:
    """Where the values of the mask saved at ``path`` go: the same name with ``.safetensors``."""
    return Path(path).with_suffix(".safetensors")


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, as hex (recorded beside saved values and exported weights)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _compact_int_lists(text: str) -> str:
    """Put every innermost list of integers on one line (indices per layer stay readable)."""
    return re.sub(
        r"\[\s*(-?\d+(?:,\s*-?\d+)*)?\s*\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1) or "") + "]", text
    )


def mask_to_json(
    mask: AblationMask, values_file: str | None = None, values_sha256: str | None = None
) -> dict[str, Any]:
    """The JSON object for ``mask`` (``values_file`` / ``values_sha256`` name its values, if any)."""
    value_names = [name for name in _VALUE_FIELDS if getattr(mask, name) is not None]
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "mode": mask.mode,
        "n_layers": mask.n_layers,
        "d_mlp": mask.d_mlp,
        "n_heads": mask.n_heads,
        "fingerprint": None if mask.fingerprint is None else mask.fingerprint.to_dict(),
        "neurons": None if mask.neurons is None else [row.nonzero().flatten().tolist() for row in mask.neurons],
        "heads": None if mask.heads is None else [row.nonzero().flatten().tolist() for row in mask.heads],
        "values": None if not value_names else {"file": values_file, "sha256": values_sha256, "tensors": value_names},
    }


def save_mask(mask: AblationMask, path: str | os.PathLike[str]) -> Path:
    """Write ``mask`` to ``path`` (JSON) and its values, if any, beside it; return ``path``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        raise ValueError(f"{path}: name the JSON file (e.g. mask.json); the values go beside it as .safetensors")
    tensors = {name: getattr(mask, name).contiguous() for name in _VALUE_FIELDS if getattr(mask, name) is not None}
    values_file = sha = None
    if tensors:
        target = values_path(path)
        # one metadata key: safetensors writes metadata from a hash map, so several keys have no fixed order
        save_file(tensors, str(target), metadata={"format": f"{FORMAT}/{SCHEMA_VERSION}"})
        values_file, sha = target.name, file_sha256(target)
    text = json.dumps(mask_to_json(mask, values_file, sha), indent=2)
    path.write_text(_compact_int_lists(text) + "\n")
    return path


# ---------------------------------------------------------------------------------- loading


def _fail(path: Path, message: str) -> ValueError:
    return ValueError(f"mask file {path}: {message}")


def _int(path: Path, key: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(path, f"{key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _indices(path: Path, key: str, value: Any, n_layers: int, width: int | None) -> torch.Tensor | None:
    if value is None:
        if width is not None:
            raise _fail(path, f"{key!r} is null but {_WIDTH[key]!r} is {width}")
        return None
    if width is None:
        raise _fail(path, f"{key!r} lists components but {_WIDTH[key]!r} is null")
    if not isinstance(value, list) or len(value) != n_layers:
        raise _fail(path, f"{key!r} must be a list with one list of indices per layer ({n_layers} layers)")
    mask = torch.zeros(n_layers, width, dtype=torch.bool)
    letter = "N" if key == "neurons" else "H"
    for layer, row in enumerate(value):
        if not isinstance(row, list):
            raise _fail(path, f"{key}[{layer}] must be a list of indices, got {row!r}")
        for index in row:
            if isinstance(index, bool) or not isinstance(index, int):
                raise _fail(path, f"{key}[{layer}] holds {index!r}, which is not an integer index")
            if not 0 <= index < width:
                raise _fail(path, f"{key}[{layer}]: L{layer}{letter}{index} is out of range ({_WIDTH[key]} = {width})")
            if mask[layer, index]:
                raise _fail(path, f"{key}[{layer}]: L{layer}{letter}{index} is listed twice")
            mask[layer, index] = True
    return mask


def _values(path: Path, spec: Any) -> dict[str, torch.Tensor]:
    if spec is None:
        return {}
    if not isinstance(spec, dict) or set(spec) != {"file", "sha256", "tensors"}:
        raise _fail(path, "'values' must be null or an object with keys 'file', 'sha256', 'tensors'")
    name, tensors = spec["file"], spec["tensors"]
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
        raise _fail(path, f"values file must be a .safetensors file name beside the mask, got {name!r}")
    if not isinstance(tensors, list) or not set(tensors) <= set(_VALUE_FIELDS):
        raise _fail(path, f"values 'tensors' must list some of {list(_VALUE_FIELDS)}, got {tensors!r}")
    target = path.parent / name
    if not target.is_file():
        raise _fail(path, f"its values file {target} does not exist (a mean or scale mask needs it)")
    if file_sha256(target) != spec["sha256"]:
        raise _fail(path, f"{target} does not match the sha256 recorded in the mask (it was changed or replaced)")
    try:
        loaded = load_file(str(target))
    except (SafetensorError, OSError) as err:
        raise _fail(path, f"could not read {target}: {err}") from err
    if sorted(loaded) != sorted(tensors):
        raise _fail(path, f"{target} holds {sorted(loaded)} but the mask lists {sorted(tensors)}")
    return loaded


def load_mask(path: str | os.PathLike[str]) -> AblationMask:
    """Read a mask written by :func:`save_mask`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"cannot read mask file {path}: {err}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise _fail(path, f"not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _fail(path, f'not a loka ablation mask (expected an object with "format": {FORMAT!r})')
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise _fail(
            path, f"unknown schema version {version!r}; this version of loka reads schema version {SCHEMA_VERSION}"
        )
    missing, extra = sorted(set(_KEYS) - set(data)), sorted(set(data) - set(_KEYS))
    if missing or extra:
        raise _fail(path, f"missing keys {missing}, unexpected keys {extra}")
    mode = data["mode"]
    if mode not in MODES:
        raise _fail(path, f"unknown ablation mode {mode!r}; use one of {MODES}")
    n_layers = _int(path, "n_layers", data["n_layers"], minimum=1)
    widths = {
        key: None if data[width] is None else _int(path, width, data[width], minimum=1) for key, width in _WIDTH.items()
    }
    masks = {key: _indices(path, key, data[key], n_layers, widths[key]) for key in _WIDTH}
    fp = data["fingerprint"]
    if fp is not None:
        if not isinstance(fp, dict):
            raise _fail(path, f"'fingerprint' must be an object or null, got {fp!r}")
        try:
            fp = ModelFingerprint.from_dict(fp)
        except (TypeError, ValueError) as err:
            raise _fail(path, f"bad fingerprint: {err}") from err
    try:
        return AblationMask(
            masks["neurons"], masks["heads"], mode=mode, fingerprint=fp, **_values(path, data["values"])
        )
    except ValueError as err:
        if str(err).startswith("mask file"):
            raise
        raise _fail(path, str(err)) from err
