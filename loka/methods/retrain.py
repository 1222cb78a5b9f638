"""``"retrain"``: the exact-retrain oracle (a model directory trained without the forget facts, e.g.
the testbed's ``oracle_dir``), so that the gold standard sits in every comparison table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from loka.base.errors import UsageError
from loka.methods.config import MethodConfig, set_field

__all__ = ["RetrainConfig"]


@dataclass(frozen=True)
class RetrainConfig(MethodConfig):
    """``"retrain"``: the exact-retrain oracle, loaded from ``oracle`` (a model directory trained
    without the forget facts, e.g. the testbed's ``oracle_dir``)."""

    method: ClassVar[str] = "retrain"
    oracle: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.oracle, str | Path):
            raise UsageError("method 'retrain' needs oracle= the directory of the model trained without the forget set")
        set_field(self, "oracle", str(self.oracle))
