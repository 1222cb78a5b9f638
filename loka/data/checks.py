"""The one check of a knowledge set given as an argument, with one wording of its error."""

from __future__ import annotations

from typing import Any

from loka.base.errors import UsageError
from loka.data.knowledge import KnowledgeSet

__all__ = ["check_knowledge"]


def check_knowledge(value: Any, what: str) -> KnowledgeSet:
    """``value`` if it is a KnowledgeSet (never empty), else a ValueError naming ``what``."""
    if not isinstance(value, KnowledgeSet):
        raise UsageError(f"{what} must be a non-empty loka.data.KnowledgeSet, got {type(value).__name__}")
    return value
