"""Checks of the arguments a user passes, shared by every package: one message per mistake.

Each raises a ``ValueError`` that names the argument, what is allowed and what was given.
"""

from __future__ import annotations

from typing import Any

from loka.base.errors import UsageError

__all__ = ["check_number"]


def check_number(
    name: str,
    value: Any,
    *,
    low: float = 0.0,
    high: float | None = None,
    integer: bool = False,
    above: bool = False,
) -> Any:
    """``value`` if it is a number (``integer``: an int; never a bool) in ``[low, high]`` (with
    ``above``: strictly greater than ``low``; ``high=None``: no upper bound), else a ValueError
    such as ``"max_steps must be an integer at least 1, got 0"``."""
    ok = isinstance(value, int if integer else int | float) and not isinstance(value, bool)
    if not ok or not (value > low if above else value >= low) or (high is not None and value > high):
        if above:
            bound = f"greater than {low:g}" + (f" and at most {high}" if high is not None else "")
        else:
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise UsageError(f"{name} must be {'an integer' if integer else 'a number'} {bound}, got {value!r}")
    return value
