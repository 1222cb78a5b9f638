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

The class lives in :mod:`ablation.mask`; this module reads and writes the file's contents
(:class:`MaskFile`) and knows nothing of the class, so neither imports the other's internals
(the names both need are in :mod:`ablation.mask_schema`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ablation.mask_schema import FORMAT, KEYS, MODES, SCHEMA_VERSION, VALUE_FIELDS, WIDTHS, Mode
from loka.base.errors import UsageError
from loka.base.files import file_sha256
from loka.models import ModelFingerprint

__all__ = ["MaskFile", "file_sha256", "mask_file_error", "mask_to_json", "read_mask", "values_path", "write_mask"]


@dataclass(frozen=True, eq=False)
class MaskFile:
    """What a mask file holds: the component masks, the mode, the fingerprint and the value tensors
    (a subset of :data:`ablation.mask_schema.VALUE_FIELDS`). :class:`ablation.AblationMask` is
    built from it and checks it; this module only reads and writes it."""

    neurons: torch.Tensor | None
    heads: torch.Tensor | None
    mode: Mode
    fingerprint: ModelFingerprint | None
    values: Mapping[str, torch.Tensor]

    @property
    def n_layers(self) -> int:
        return len(self.neurons if self.neurons is not None else self.heads)  # type: ignore[arg-type]


def values_path(path: str | os.PathLike[str]) -> Path:
    """Where the values of the mask saved at ``path`` go: the same name with ``.safetensors``."""
    return Path(path).with_suffix(".safetensors")


def _compact_int_lists(text: str) -> str:
    """Put every innermost list of integers on one line (indices per layer stay readable)."""
    return re.sub(
        r"\[\s*(-?\d+(?:,\s*-?\d+)*)?\s*\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1) or "") + "]", text
    )


def mask_to_json(mask: MaskFile, values_file: str | None = None, values_sha256: str | None = None) -> dict[str, Any]:
    """The JSON object for ``mask`` (``values_file`` / ``values_sha256`` name its values, if any)."""
    value_names = [name for name in VALUE_FIELDS if mask.values.get(name) is not None]
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "mode": mask.mode,
        "n_layers": mask.n_layers,
        "d_mlp": None if mask.neurons is None else mask.neurons.shape[1],
        "n_heads": None if mask.heads is None else mask.heads.shape[1],
        "fingerprint": None if mask.fingerprint is None else mask.fingerprint.to_dict(),
        "neurons": None if mask.neurons is None else [row.nonzero().flatten().tolist() for row in mask.neurons],
        "heads": None if mask.heads is None else [row.nonzero().flatten().tolist() for row in mask.heads],
        "values": None if not value_names else {"file": values_file, "sha256": values_sha256, "tensors": value_names},
    }


def write_mask(mask: MaskFile, path: str | os.PathLike[str]) -> Path:
    """Write ``mask`` to ``path`` (JSON) and its values, if any, beside it; return ``path``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        raise UsageError(f"{path}: name the JSON file (e.g. mask.json); the values go beside it as .safetensors")
    tensors = {name: mask.values[name].contiguous() for name in VALUE_FIELDS if mask.values.get(name) is not None}
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


def mask_file_error(path: Path, message: str) -> UsageError:
    """The error for a problem in the mask file at ``path``: ``mask file {path}: {message}``."""
    return UsageError(f"mask file {path}: {message}")


def _int(path: Path, key: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise mask_file_error(path, f"{key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _indices(path: Path, key: str, value: Any, n_layers: int, width: int | None) -> torch.Tensor | None:
    if value is None:
        if width is not None:
            raise mask_file_error(path, f"{key!r} is null but {WIDTHS[key]!r} is {width}")
        return None
    if width is None:
        raise mask_file_error(path, f"{key!r} lists components but {WIDTHS[key]!r} is null")
    if not isinstance(value, list) or len(value) != n_layers:
        raise mask_file_error(path, f"{key!r} must be a list with one list of indices per layer ({n_layers} layers)")
    mask = torch.zeros(n_layers, width, dtype=torch.bool)
    letter = "N" if key == "neurons" else "H"
    for layer, row in enumerate(value):
        if not isinstance(row, list):
            raise mask_file_error(path, f"{key}[{layer}] must be a list of indices, got {row!r}")
        for index in row:
            if isinstance(index, bool) or not isinstance(index, int):
                raise mask_file_error(path, f"{key}[{layer}] holds {index!r}, which is not an integer index")
            if not 0 <= index < width:
                raise mask_file_error(
                    path, f"{key}[{layer}]: L{layer}{letter}{index} is out of range ({WIDTHS[key]} = {width})"
                )
            if mask[layer, index]:
                raise mask_file_error(path, f"{key}[{layer}]: L{layer}{letter}{index} is listed twice")
            mask[layer, index] = True
    return mask


def _values(path: Path, spec: Any) -> dict[str, torch.Tensor]:
    if spec is None:
        return {}
    if not isinstance(spec, dict) or set(spec) != {"file", "sha256", "tensors"}:
        raise mask_file_error(path, "'values' must be null or an object with keys 'file', 'sha256', 'tensors'")
    name, tensors = spec["file"], spec["tensors"]
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
        raise mask_file_error(path, f"values file must be a .safetensors file name beside the mask, got {name!r}")
    if not isinstance(tensors, list) or not set(tensors) <= set(VALUE_FIELDS):
        raise mask_file_error(path, f"values 'tensors' must list some of {list(VALUE_FIELDS)}, got {tensors!r}")
    target = path.parent / name
    if not target.is_file():
        raise mask_file_error(path, f"its values file {target} does not exist (a mean or scale mask needs it)")
    if file_sha256(target) != spec["sha256"]:
        raise mask_file_error(
            path, f"{target} does not match the sha256 recorded in the mask (it was changed or replaced)"
        )
    try:
        loaded = load_file(str(target))
    except (SafetensorError, OSError) as err:
        raise mask_file_error(path, f"could not read {target}: {err}") from err
    if sorted(loaded) != sorted(tensors):
        raise mask_file_error(path, f"{target} holds {sorted(loaded)} but the mask lists {sorted(tensors)}")
    return loaded


def read_mask(path: str | os.PathLike[str]) -> MaskFile:
    """Read a mask written by :func:`write_mask` (ValueError naming the file and its first problem;
    whether the contents make a valid mask is :class:`ablation.AblationMask`'s to check)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise UsageError(f"cannot read mask file {path}: {err}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise mask_file_error(path, f"not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise mask_file_error(path, f'not a loka ablation mask (expected an object with "format": {FORMAT!r})')
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise mask_file_error(
            path, f"unknown schema version {version!r}; this version of loka reads schema version {SCHEMA_VERSION}"
        )
    missing, extra = sorted(set(KEYS) - set(data)), sorted(set(data) - set(KEYS))
    if missing or extra:
        raise mask_file_error(path, f"missing keys {missing}, unexpected keys {extra}")
    mode = data["mode"]
    if mode not in MODES:
        raise mask_file_error(path, f"unknown ablation mode {mode!r}; use one of {MODES}")
    n_layers = _int(path, "n_layers", data["n_layers"], minimum=1)
    widths = {
        key: None if data[width] is None else _int(path, width, data[width], minimum=1) for key, width in WIDTHS.items()
    }
    masks = {key: _indices(path, key, data[key], n_layers, widths[key]) for key in WIDTHS}
    fp = data["fingerprint"]
    if fp is not None:
        if not isinstance(fp, dict):
            raise mask_file_error(path, f"'fingerprint' must be an object or null, got {fp!r}")
        try:
            fp = ModelFingerprint.from_dict(fp)
        except (TypeError, ValueError) as err:
            raise mask_file_error(path, f"bad fingerprint: {err}") from err
    return MaskFile(masks["neurons"], masks["heads"], mode, fp, _values(path, data["values"]))
