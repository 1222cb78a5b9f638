"""Benchmarks from the unlearning literature, run with loka's methods and scaled to a CPU.

- :mod:`loka.benchmarks.tofu`: TOFU (Maini et al. 2024), fictitious authors' QA; ``tofu.run(...)``
  trains the original and the retain model from scratch and returns TOFU's table
  (:mod:`loka.benchmarks.tofu.metrics` holds its metrics as plain arithmetic).

This package sits in the orchestration layer: it may import ``loka.methods``, ``loka.evaluation``,
``attribution``, ``ablation`` and the layer-1 modules. Submodules are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["tofu"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return importlib.import_module(f"loka.benchmarks.{name}")
    raise AttributeError(f"module 'loka.benchmarks' has no attribute {name!r}")
