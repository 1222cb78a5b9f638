"""Frozen result dataclasses back from their JSON (the inverse of ``dataclasses.asdict`` + ``json``)."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["from_jsonable"]

T = TypeVar("T")


def from_jsonable(kind: type[T], value: Any) -> T:
    """``value`` (what ``json.loads`` gave for an ``asdict`` of a ``kind``) as a ``kind`` again:
    dataclasses field by field (keys that are not init fields, such as derived summaries, are
    ignored), NamedTuples and ``tuple[...]`` from lists, mappings by value, ``X | None`` as None
    or X; other types as they are (floats as float)."""
    return _convert(kind, value)


def _convert(kind: Any, value: Any) -> Any:
    if kind is Any or value is None:
        return value
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if origin is typing.Literal:
        return value
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        hints = typing.get_type_hints(kind)
        return kind(**{f.name: _convert(hints[f.name], value[f.name])
                       for f in dataclasses.fields(kind) if f.init and f.name in value})  # fmt: skip
    if isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields"):  # a NamedTuple
        hints = typing.get_type_hints(kind)
        items = value if not isinstance(value, Mapping) else [value[name] for name in kind._fields]
        return kind(*(_convert(hints[name], v) for name, v in zip(kind._fields, items, strict=True)))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        return tuple(_convert(a, v) for a, v in zip(args, value, strict=True)) if args else tuple(value)
    if origin in (dict, Mapping):
        return {k: _convert(args[1] if args else Any, v) for k, v in value.items()}
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value
