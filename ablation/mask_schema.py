"""The names that masks and mask files share: the ablation modes, their value tensors, the file schema.

:mod:`ablation.mask` (the :class:`~ablation.mask.AblationMask` class) and :mod:`ablation.mask_file`
(reading and writing the file) both import this module and not each other's internals: a mode,
the value tensors it needs and the keys of the JSON file are defined here once.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from loka.base.errors import UsageError

__all__ = [
    "BAKEABLE_MODES",
    "FORMAT",
    "KEYS",
    "MODES",
    "MODE_VALUES",
    "SCHEMA_VERSION",
    "VALUE_FIELDS",
    "WIDTHS",
    "Mode",
    "check_mode",
]

Mode = Literal["zero", "mean", "scale", "resample"]
MODES: tuple[Mode, ...] = get_args(Mode)
BAKEABLE_MODES: tuple[Mode, ...] = ("zero", "mean", "scale")

VALUE_FIELDS = ("neuron_means", "head_means", "neuron_scales", "head_scales")
"""The per-component value tensors a mask may carry (saved in the safetensors file beside it)."""
MODE_VALUES: dict[str, tuple[str, ...]] = {
    "zero": (),
    "mean": ("neuron_means", "head_means"),
    "scale": ("neuron_scales", "head_scales"),
    "resample": (),
}
"""The value tensors each mode uses."""

FORMAT = "loka-ablation-mask"
SCHEMA_VERSION = 1
KEYS = ("format", "schema_version", "mode", "n_layers", "d_mlp", "n_heads", "fingerprint", "neurons", "heads", "values")
"""The keys of a mask file's JSON object, all required."""
WIDTHS = {"neurons": "d_mlp", "heads": "n_heads"}
"""The key that gives the width of each component list."""


def check_mode(mode: Any, allowed: tuple[str, ...] = MODES) -> None:
    """ValueError unless ``mode`` is one of ``allowed``."""
    if mode not in allowed:
        raise UsageError(f"unknown ablation mode {mode!r}; use one of {allowed}")
