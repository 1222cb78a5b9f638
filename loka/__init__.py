"""loka: localized knowledge ablation.

Locate the MLP neurons and attention heads that carry a piece of knowledge in a causal language
model (``attribution``), turn them off or edit them (``ablation``), and prove the knowledge is gone
against the exact-retrain oracle (``loka``).

Names are imported on first use (PEP 562), so ``import loka`` and ``loka --help`` stay fast and
``attribution`` / ``ablation`` can import ``loka``'s layer-1 modules without import cycles.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # names for type checkers and IDEs; at run time __getattr__ imports them
    from loka import testbed  # noqa: F401
    from loka.base.components import Component  # noqa: F401
    from loka.base.errors import UsageError  # noqa: F401
    from loka.benchmarks.tofu.loading import load_tofu  # noqa: F401
    from loka.certify import Certificate, certify  # noqa: F401
    from loka.comparison import Comparison, compare  # noqa: F401
    from loka.data import Fact, FactBatch, KnowledgeSet  # noqa: F401
    from loka.evaluation import UnlearningEvaluation, evaluate  # noqa: F401
    from loka.methods import UnlearningResult, unlearn  # noqa: F401
    from loka.models import ModelFingerprint, fingerprint, load_model  # noqa: F401

__version__ = "0.1.0"
_EXPORTS = {
    "UsageError": "loka.base.errors",
    "Component": "loka.base.components",
    "Fact": "loka.data",
    "FactBatch": "loka.data",
    "KnowledgeSet": "loka.data",
    "load_tofu": "loka.benchmarks.tofu.loading",
    "ModelFingerprint": "loka.models",
    "fingerprint": "loka.models",
    "load_model": "loka.models",
    "unlearn": "loka.methods",
    "UnlearningResult": "loka.methods",
    "evaluate": "loka.evaluation",
    "UnlearningEvaluation": "loka.evaluation",
    "compare": "loka.comparison",
    "Comparison": "loka.comparison",
    "certify": "loka.certify",
    "Certificate": "loka.certify",
}
__all__ = [*_EXPORTS, "testbed"]


def __getattr__(name: str) -> Any:
    if name == "testbed":
        return importlib.import_module("loka.testbed")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'loka' has no attribute {name!r}")
