"""What an unlearning method returns: the edited copy, how it was made, what the method saw and spent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from loka.methods.budget import Compute
from loka.protocol import Seen

__all__ = ["UnlearningResult"]


@dataclass(frozen=True)
class UnlearningResult:
    """What a method produced: the edited copy, how, what it saw, and what it spent."""

    model: Any
    method: str
    config: Mapping[str, Any]
    seconds: float
    log: tuple[Mapping[str, float], ...] = ()
    mask: Any = None
    components: tuple[Any, ...] = field(default=())
    compute: Compute | None = None
    seen: Seen = field(default_factory=Seen)  # every person, fact id and prompt the method was given
