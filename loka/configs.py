"""Each unlearning method's options as one frozen, validated dataclass.

``loka.unlearn(model, forget, retain, method="loka", size=0.02)`` builds ``LokaConfig(size=0.02)``
(keywords are sugar for the config); ``loka.unlearn(..., method="loka", config=LokaConfig(size=0.02))``
passes it whole. A config is checked when it is built, so a bad option fails before any work is
done, with a :class:`loka.errors.UsageError` that names the option, what is allowed and what was
given; an unknown option names the method's options. :meth:`MethodConfig.to_dict` is what a result
records (``result.config``, ``loka_edit.json``), and :meth:`MethodConfig.parse` reads the text of
a command-line ``--option KEY=VALUE`` by the option's type.

What each option does is in :mod:`loka.methods`' docstring.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

from loka.checks import check_number
from loka.errors import UsageError
from loka.localization import (
    COMPONENT_CHOICES,
    LOCALIZE,
    LOCATIONS,
    ComponentChoice,
    Localize,
    Location,
    check_choice,
    count_for_size,
)
from loka.objectives import OBJECTIVES, Objective

__all__ = [
    "CONFIGS",
    "SIZES",
    "GradientAscentConfig",
    "LokaConfig",
    "MethodConfig",
    "NPOConfig",
    "RMUConfig",
    "RetrainConfig",
    "TaskVectorConfig",
    "method_config",
]

SIZES: tuple[float, ...] = (0.0025, 0.005, 0.01, 0.02, 0.05, 0.1)
"""The sizes (fractions of the component pool) that LOKA's ``size="auto"`` tries, smallest first."""


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


def _set(config: Any, name: str, value: Any) -> None:
    object.__setattr__(config, name, value)


@dataclass(frozen=True)
class GradientAscentConfig(MethodConfig):
    """``"gradient_ascent"``: AdamW over all weights on ``alpha * (-loss_forget) + (1 - alpha) *
    loss_retain``, batches of ``batch_size`` forget and retain facts, learning rate ``lr``."""

    method: ClassVar[str] = "gradient_ascent"
    lr: float = 5e-4
    alpha: float = 0.5
    batch_size: int = 16

    def __post_init__(self) -> None:
        check_number("lr", self.lr)
        check_number("alpha", self.alpha, high=1.0)
        check_number("batch_size", self.batch_size, low=1, integer=True)


@dataclass(frozen=True)
class NPOConfig(MethodConfig):
    """``"npo"``: Negative Preference Optimization (Zhang et al. 2024) over all weights, as in
    open-unlearning: ``gamma * NPO(forget answers; beta) + alpha * NLL(retain answers)``, AdamW
    with learning rate ``lr`` on batches of ``batch_size`` forget and retain facts. ``beta`` is
    open-unlearning's; ``lr`` and ``alpha`` were chosen on the testbed's *validation* retain
    people (open-unlearning's ``alpha=1`` at ``lr`` 5e-4 or 2e-4 reached the forget target at
    validation retain 0.55-0.59; ``alpha=5``, ``lr=2e-4``: 0.84)."""

    method: ClassVar[str] = "npo"
    lr: float = 2e-4
    beta: float = 0.1
    alpha: float = 5.0
    gamma: float = 1.0
    batch_size: int = 16

    def __post_init__(self) -> None:
        check_number("lr", self.lr)
        check_number("beta", self.beta, low=1e-6)
        check_number("alpha", self.alpha)
        check_number("gamma", self.gamma)
        check_number("batch_size", self.batch_size, low=1, integer=True)


@dataclass(frozen=True)
class RMUConfig(MethodConfig):
    """``"rmu"``: Representation Misdirection for Unlearning (Li et al. 2024, WMDP). The residual
    stream after block ``layer`` on forget text is steered toward ``c`` x a fixed random unit
    vector, while on retain text it is held at the original's (``alpha`` x MSE); only the MLP
    output weights of blocks ``layer - n_updated + 1 .. layer`` are trained (AdamW, ``lr``,
    ``batch_size`` forget and retain facts a step). The coefficient is relative to the model:
    ``c = steering_scale x`` the original's mean residual-stream norm after block ``layer`` on the
    retain training tokens (as Adaptive RMU, Dang et al. 2025, scales it with the layer's
    activation norm), so one default serves models whose residual norms differ; ``result.config``
    records each candidate's scale, norm and the absolute ``steering_coeff`` it resolved to.
    ``layer`` (``None``: the grid :func:`loka.rmu.layer_grid`, half-way and three quarters down)
    and the scale (the grid ``steering_scales``) are chosen on validation retain people: the
    first candidate, in order, that reaches the forget target with validation retain at least
    0.95 x the original's; else the best validation-retain minus forget margin. The default
    scales reproduce the absolute coefficients 300 and 500 that were tuned on the default
    testbed (residual norm about 180 at block 2)."""

    method: ClassVar[str] = "rmu"
    layer: int | None = None
    n_updated: int = 3
    steering_scales: tuple[float, ...] = (1.5, 2.5)
    alpha: float = 100.0
    lr: float = 2e-2
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.layer is not None:
            check_number("layer", self.layer, integer=True)
        check_number("n_updated", self.n_updated, low=1, integer=True)
        check_number("alpha", self.alpha)
        check_number("lr", self.lr)
        check_number("batch_size", self.batch_size, low=1, integer=True)
        scales = self.steering_scales
        if not isinstance(scales, tuple | list) or not scales or any(
            isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < float("inf") for v in scales
        ):  # fmt: skip
            raise UsageError(f"steering_scales must be positive numbers, got {scales!r}")
        _set(self, "steering_scales", tuple(float(v) for v in scales))


@dataclass(frozen=True)
class TaskVectorConfig(MethodConfig):
    """``"task_vector"``: fine-tune a copy on the forget facts for ``finetune_steps`` steps (``None``:
    60 or the budget's ``max_steps`` if smaller) and subtract ``scale`` times the task vector, the
    smallest scale of ``scales`` that reaches the forget target."""

    method: ClassVar[str] = "task_vector"
    finetune_steps: int | None = None
    lr: float = 1e-3
    batch_size: int = 16
    scales: tuple[float, ...] = (0.5, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0)

    def __post_init__(self) -> None:
        if self.finetune_steps is not None:  # its upper bound is the budget's max_steps, checked by the method
            check_number("finetune_steps", self.finetune_steps, low=1, integer=True)
        check_number("lr", self.lr)
        check_number("batch_size", self.batch_size, low=1, integer=True)
        scales = self.scales
        if not isinstance(scales, tuple | list) or not scales or any(
            isinstance(v, bool) or not isinstance(v, int | float) or v <= 0 for v in scales
        ):  # fmt: skip
            raise UsageError(f"scales must be positive numbers, got {scales!r}")
        _set(self, "scales", tuple(scales))


@dataclass(frozen=True)
class LokaConfig(MethodConfig):
    """``"loka"``: locate ``size`` components (``components``, ``localize``, ``contrast``), move them
    (``location``, ``location_seed``) and edit them (``edit``: ``objective``, ``beta``, ``lr``,
    ``retain_weight``, ``batch_size``; ``ablate_mode``; or the rewrite's ``max_layers`` and
    ``lams``); ``size="auto"`` tries ``sizes`` until validation retain stays at least
    ``retain_floor`` x the original's. ``min_layer_share`` is the ``"layers"`` control's share
    of a layer; ``check_scores`` the number of candidates attribution re-measures exactly.
    Erasure (:mod:`loka.erasure`): ``erase="subject"`` also locates the forget people's names and
    pulls their whole texts to the likelihood of strangers' (``subject_weight``; the budget's
    check then also waits for the gap to be within ``subject_tolerance`` nats per token);
    ``"answer"`` edits the answers only; ``"auto"`` (default) is ``"subject"`` for a fine-tuning
    edit given ``reference`` people with names of two or more words. ``adversary_weight`` adds
    the forget loss at weights one adversarial fine-tuning step away (``adversary_lr`` per
    weight; ``None``, the default: 1.0 for a fine-tuning edit, 0 otherwise; 0 turns it off).
    ``reinit`` in (0, 1] shrink-perturbs the located parameters after the edit and repairs them
    by distillation (off by default: it did not lower relearning on the testbed).
    ``share`` (default True): the edited model holds new tensors only for the weights the edit
    changes and shares every other one with the input model (same storage, frozen;
    :func:`loka.models.copies.shared_copy`), so an edit of 5% of the neurons costs their layers'
    tensors, not a second model; call :func:`loka.models.copies.materialize` on the result before
    writing its weights in place. False copies the whole model."""

    method: ClassVar[str] = "loka"
    edit: Literal["finetune", "ablate", "rewrite"] = "finetune"
    size: float | int | Literal["auto"] = 0.05
    localize: Localize = "all"
    components: ComponentChoice = "neurons"
    contrast: bool = True
    location: Location = "located"
    location_seed: int | None = None
    objective: Objective = "auto"
    beta: float = 0.1
    ablate_mode: Literal["zero", "mean"] = "mean"
    retain_floor: float = 0.95
    lr: float = 1e-2
    retain_weight: float = 3.0
    batch_size: int = 64
    sizes: tuple[float, ...] = SIZES
    min_layer_share: float = 0.05
    check_scores: int = 10
    max_layers: int = 2
    lams: tuple[float, ...] = (10.0, 3.0, 1.0, 0.3, 0.1)
    erase: Literal["auto", "answer", "subject"] = "auto"
    subject_weight: float = 1.0
    subject_tolerance: float = 0.05
    reinit: float = 0.0
    adversary_weight: float | None = None
    adversary_lr: float = 3e-3
    share: bool = True

    def __post_init__(self) -> None:
        check_choice("edit", self.edit, ("finetune", "ablate", "rewrite"))
        check_choice("erase", self.erase, ("auto", "answer", "subject"))
        check_number("subject_weight", self.subject_weight)
        check_number("subject_tolerance", self.subject_tolerance)
        check_number("reinit", self.reinit, high=1.0)
        if self.adversary_weight is not None:
            check_number("adversary_weight", self.adversary_weight)
        check_number("adversary_lr", self.adversary_lr)
        check_choice("objective", self.objective, OBJECTIVES)
        check_choice("ablate_mode", self.ablate_mode, ("zero", "mean"))
        check_choice("location", self.location, LOCATIONS)
        check_choice("localize", self.localize, LOCALIZE)
        check_choice("components", self.components, COMPONENT_CHOICES)
        for flag in ("contrast", "share"):
            if not isinstance(getattr(self, flag), bool):
                raise UsageError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.location_seed is not None:
            check_number("location_seed", self.location_seed, integer=True)
        check_number("beta", self.beta, low=1e-6)
        check_number("retain_floor", self.retain_floor, high=1.0)
        check_number("min_layer_share", self.min_layer_share, high=1.0)
        check_number("lr", self.lr)
        check_number("retain_weight", self.retain_weight)
        check_number("batch_size", self.batch_size, low=1, integer=True)
        check_number("max_layers", self.max_layers, low=1, integer=True)
        check_number("check_scores", self.check_scores, integer=True)
        lams, sizes = self.lams, self.sizes
        if not isinstance(lams, tuple | list) or not lams or any(
            isinstance(v, bool) or not isinstance(v, int | float) or v < 0 for v in lams
        ):  # fmt: skip
            raise UsageError(f"lams must be non-negative numbers, got {lams!r}")
        if not isinstance(sizes, tuple | list) or not sizes or any(
            isinstance(v, bool) or not isinstance(v, float) or not 0 < v <= 1 for v in sizes
        ):  # fmt: skip
            raise UsageError(f"sizes must be fractions in (0, 1], got {sizes!r}")
        _set(self, "lams", tuple(lams))
        _set(self, "sizes", tuple(sizes))
        if self.size != "auto":
            count_for_size(self.size, 1 << 62)  # the type and range check; the pool is known after attribution


@dataclass(frozen=True)
class RetrainConfig(MethodConfig):
    """``"retrain"``: the exact-retrain oracle, loaded from ``oracle`` (a model directory trained
    without the forget facts, e.g. the testbed's ``oracle_dir``)."""

    method: ClassVar[str] = "retrain"
    oracle: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.oracle, str | Path):
            raise UsageError("method 'retrain' needs oracle= the directory of the model trained without the forget set")
        _set(self, "oracle", str(self.oracle))


CONFIGS: dict[str, type[MethodConfig]] = {
    "loka": LokaConfig,
    "gradient_ascent": GradientAscentConfig,
    "npo": NPOConfig,
    "rmu": RMUConfig,
    "task_vector": TaskVectorConfig,
    "retrain": RetrainConfig,
}
"""Each method's config class, by method name (the methods of :data:`loka.methods.METHODS`)."""


def method_config(method: str, config: MethodConfig | None = None, **options: Any) -> MethodConfig:
    """The config of ``method``: ``config`` as given, or one built from ``options`` (not both)."""
    if method not in CONFIGS:
        raise UsageError(f"unknown unlearning method {method!r}; choose one of {', '.join(CONFIGS)}")
    cls = CONFIGS[method]
    if config is None:
        return cls.from_options(options)
    if options:
        raise UsageError(f"give {method!r} its options either as config= or as keywords, not both ({sorted(options)})")
    if type(config) is not cls:
        raise UsageError(f"method {method!r} takes a {cls.__name__}, got {type(config).__name__}")
    return config
