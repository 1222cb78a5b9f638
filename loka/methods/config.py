"""The base of every method's options: one frozen, validated dataclass per method.

``loka.unlearn(model, forget, retain, method="loka", size=0.02)`` builds ``LokaConfig(size=0.02)``
(keywords are sugar for the config); ``config=LokaConfig(size=0.02)`` passes it whole. A config is
checked when it is built, so a bad option fails before any work is done, with a
:class:`loka.base.errors.UsageError` that names the option, what is allowed and what was given; an
unknown option names the method's options. :meth:`MethodConfig.to_dict` is what a result records
(``result.config``, ``loka_edit.json``), and :meth:`MethodConfig.parse` reads the text of a
command-line ``--option KEY=VALUE`` by the option's type. Each method's own config lives beside
its runner (``loka/methods/<method>.py``); :mod:`loka.methods.registry` maps names to them.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

from loka.base.errors import UsageError

__all__ = ["MethodConfig", "set_field"]


@dataclass(frozen=True)
class MethodConfig:
    """What every method's config shares: its method name, its options, validation at
    construction, a JSON-ready dict, and parsing of option values from text."""

    method: ClassVar[str] = ""

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The names of this method's options, in declaration order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> MethodConfig:
        """The config with ``options`` (unknown names are a UsageError that lists the options)."""
        known = cls.options()
        for name in options:
            if name not in known:
                raise UsageError(f"unknown option for {cls.method!r}: {name!r}; options are {', '.join(known)}")
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        """Every option, JSON-ready (tuples as lists, paths as strings)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def parse(cls, name: str, text: str) -> Any:
        """The value of option ``name`` written as ``text`` (``--option name=text``), read by the
        option's type: ``true``/``false`` for a flag, ``none`` for an absent value, an integer
        before a float where both are allowed (``size=100`` is a count, ``size=0.02`` a
        fraction), and a list as ``0.1,0.2`` or JSON ``[0.1, 0.2]``."""
        hints = typing.get_type_hints(cls)
        if name not in cls.options():
            raise UsageError(f"unknown option for {cls.method!r}: {name!r}; options are {', '.join(cls.options())}")
        value = _parse(hints[name], text.strip())
        if value is _NO:
            raise UsageError(f"option {name}={text!r} for {cls.method!r}: expected {_describe(hints[name])}")
        return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


_NO = object()  # "text does not parse as this type"


def _parse(kind: Any, text: str, top: bool = True) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        ordered = sorted(args, key=lambda a: {bool: 0, type(None): 1, int: 2, float: 3}.get(a, 4))
        for arg in ordered:
            value = _parse(arg, text, top=False)
            if value is not _NO:
                return value
        return _NO
    if origin is Literal:  # a pure choice is left to the config's check, which names the choices
        return text if text in args or top else _NO
    if origin is tuple:
        parts = _list(text)
        if parts is _NO:
            return _NO
        values = [_parse(args[0], str(part), top=False) for part in parts]
        return _NO if any(v is _NO for v in values) else tuple(values)
    if kind is type(None):
        return None if text.lower() in ("none", "null") else _NO
    if kind is bool:
        return {"true": True, "false": False}.get(text.lower(), _NO)
    if kind is int:
        try:
            return int(text)
        except ValueError:
            return _NO
    if kind is float:
        try:
            return float(text)
        except ValueError:
            return _NO
    if kind in (str, Path):
        return text
    return _NO


def _list(text: str) -> list[Any] | object:
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return _NO
        return value if isinstance(value, list) else _NO
    return [part.strip() for part in text.split(",") if part.strip()]


def _describe(kind: Any) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return " or ".join(map(repr, args))
    if origin is tuple:
        return f"a comma-separated list of {_describe(args[0])}s"
    if kind is type(None):
        return "none"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "text", Path: "a path"}
    return names.get(kind, str(kind))


def set_field(config: Any, name: str, value: Any) -> None:
    object.__setattr__(config, name, value)
