"""Ablation masks: which neurons and heads to turn off, and what to put in their place.

An :class:`AblationMask` is the hand-off between *finding* components (attribution) and *changing*
a model (hooks, baked weights, localized edits). It holds two boolean tensors, one per component
kind (the component addresses of :mod:`loka.base.components`):

* ``neurons`` ``[n_layers, d_mlp]``: True where neuron ``i`` of ``blocks.{l}.mlp.hook_post`` is ablated;
* ``heads`` ``[n_layers, n_heads]``: True where head ``h`` of ``blocks.{l}.attn.hook_z`` is ablated;

(either may be ``None``: the mask then says nothing about that kind) and one ``mode`` that says
what an ablated component's activation becomes:

============  ===================================================  ==========================
mode          activation of an ablated component                   values stored beside it
============  ===================================================  ==========================
``zero``      0                                                    none
``mean``      its mean over some reference inputs                  ``neuron_means`` ``[L, d_mlp]``,
                                                                   ``head_means`` ``[L, n_heads, d_head]``
``scale``     activation x factor (0 = zero, 1 = untouched)        ``neuron_scales`` ``[L, d_mlp]``,
                                                                   ``head_scales`` ``[L, n_heads]``
``resample``  its activation on *other* inputs (evaluation only)   none (inputs come at ``ablate`` time)
============  ===================================================  ==========================

Values are dense (one per component of the model, not only the ablated ones), so that set algebra
and :meth:`AblationMask.random_like` can move the mask around and still know each component's
mean. A mask remembers the fingerprint (architecture, sizes, weight hash) of the model it was
made for, and :meth:`AblationMask.validate` refuses any other model.

Masks compose like sets of components (``a | b``, ``a & b``, ``a - b``, ``len(a)``), persist as a
readable JSON file with the values in safetensors beside it (:meth:`save` / :meth:`load`, see
:mod:`ablation.mask_file`), and draw themselves (:meth:`plot`, layers on the y axis)::

    mask = AblationMask.from_scores(scores, k=100, kind="neurons")
    control = AblationMask.random_like(mask, seed=0)      # same count per layer, random neurons
    mask.save("forget_mask.json")
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

import plotly.graph_objects as go
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ablation.mask_file import MaskFile, mask_file_error, read_mask, write_mask
from ablation.mask_schema import BAKEABLE_MODES, MODE_VALUES, MODES, VALUE_FIELDS, Mode, check_mode
from ablation.plot import plot_strengths
from ablation.selection import count_for, random_like_layers, select_top
from loka.base.components import Component, ComponentShapes, from_masks, to_masks
from loka.base.errors import UsageError
from loka.models import ModelFingerprint, fingerprint, head_output_weights

__all__ = ["AblationMask", "MeanActivations", "Mode", "MODES", "BAKEABLE_MODES", "KindChoice", "check_mode"]

KindChoice = Literal["neurons", "heads", "all"]  # the pool to rank, in attribution's and loka's words
KIND_CHOICES: tuple[KindChoice, ...] = get_args(KindChoice)
_KIND_ALIASES = {"neuron": "neurons", "head": "heads"}  # the singular of a component address is accepted


@dataclass(frozen=True, eq=False)
class MeanActivations:
    """Mean activation of every component over some reference tokens (see ``ablation.mean_activations``)."""

    neurons: Float[Tensor, "n_layers d_mlp"]
    heads: Float[Tensor, "n_layers n_heads d_head"]
    n_tokens: int


def _label(kind: str, layer: int, index: int) -> str:
    return f"L{layer}{'N' if kind == 'neuron' else 'H'}{index}"


def _bool_matrix(name: str, value: Any) -> Tensor | None:
    if value is None:
        return None
    if not isinstance(value, Tensor) or value.dtype != torch.bool or value.dim() != 2:
        got = (
            f"{value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        )
        raise UsageError(f"{name} must be a 2-d bool tensor [n_layers, width], got {got}")
    return value.detach().to("cpu").clone()


def _float_values(name: str, value: Any, shape: tuple[int, ...]) -> Tensor:
    """Check a values tensor (``head_means`` has a trailing ``d_head`` axis) and copy it to the CPU."""
    if not isinstance(value, Tensor) or not value.is_floating_point():
        got = value.dtype if isinstance(value, Tensor) else type(value).__name__
        raise UsageError(f"{name} must be a float tensor, got {got}")
    want: list[Any] = [*shape, "d_head"] if name == "head_means" else list(shape)
    if list(value.shape[: len(shape)]) != list(shape) or value.dim() != len(want) or value.numel() == 0:
        raise UsageError(f"{name} must have shape {want}, got {list(value.shape)}")
    bad = ~torch.isfinite(value)
    if bad.any():
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise UsageError(f"{name}{list(where)} is {value[where].item()}; values must be finite")
    return value.detach().to("cpu").clone()


@dataclass(frozen=True, eq=False)
class AblationMask:
    """Which components are ablated (bool ``[n_layers, d_mlp]`` / ``[n_layers, n_heads]``) and how.

    Build one with :meth:`from_scores`, :meth:`from_components` or :meth:`random_like`; the
    constructor checks every invariant (shapes, mode, values present for the mode, finite), so a
    mask that exists is well-formed. Tensors are copied to the CPU on construction.
    """

    neurons: Bool[Tensor, "n_layers d_mlp"] | None
    heads: Bool[Tensor, "n_layers n_heads"] | None
    mode: Mode = "zero"
    neuron_means: Float[Tensor, "n_layers d_mlp"] | None = None
    head_means: Float[Tensor, "n_layers n_heads d_head"] | None = None
    neuron_scales: Float[Tensor, "n_layers d_mlp"] | None = None
    head_scales: Float[Tensor, "n_layers n_heads"] | None = None
    fingerprint: ModelFingerprint | None = None

    def __post_init__(self) -> None:
        check_mode(self.mode)
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("neurons", _bool_matrix("neurons", self.neurons))
        set_("heads", _bool_matrix("heads", self.heads))
        if self.neurons is None and self.heads is None:
            raise UsageError("an AblationMask needs a neurons or a heads tensor (or both)")
        if self.neurons is not None and self.heads is not None and len(self.neurons) != len(self.heads):
            raise UsageError(f"neurons has {len(self.neurons)} layers but heads has {len(self.heads)}")
        if self.fingerprint is not None and not isinstance(self.fingerprint, ModelFingerprint):
            raise UsageError(
                f"fingerprint must be a loka.models.ModelFingerprint, got {type(self.fingerprint).__name__}"
            )
        allowed = MODE_VALUES[self.mode]
        for name in VALUE_FIELDS:
            value = getattr(self, name)
            kind_mask = self.neurons if name.startswith("neuron") else self.heads
            if value is None:
                if name in allowed and kind_mask is not None and kind_mask.any():
                    kind = name.split("_")[0]
                    how = (
                        "compute them with ablation.mean_activations(model, inputs) and pass means=..."
                        if self.mode == "mean"
                        else "pass scale=... (one factor for all) or a tensor of factors"
                    )
                    raise UsageError(
                        f"mode {self.mode!r} needs {name} for the ablated {kind}s, but none were given; {how}"
                    )
                continue
            if name not in allowed:
                raise UsageError(
                    f"{name} is given but mode {self.mode!r} does not use it (it uses {allowed or 'no values'})"
                )
            if kind_mask is None:
                raise UsageError(f"{name} is given but the mask has no {name.split('_')[0]}s tensor")
            set_(name, _float_values(name, value, tuple(kind_mask.shape)))

    # ------------------------------------------------------------------ sizes and contents

    @property
    def n_layers(self) -> int:
        return len(self.neurons if self.neurons is not None else self.heads)  # type: ignore[arg-type]

    @property
    def d_mlp(self) -> int | None:
        return None if self.neurons is None else self.neurons.shape[1]

    @property
    def n_heads(self) -> int | None:
        return None if self.heads is None else self.heads.shape[1]

    @property
    def components(self) -> list[Component]:
        """The ablated components (:mod:`loka.base.components` addresses), neurons first, in (layer, index) order."""
        return from_masks(self.neurons, self.heads)

    def __len__(self) -> int:
        return sum(int(m.sum()) for m in (self.neurons, self.heads) if m is not None)

    def tensor(self, kind: Literal["neuron", "head"]) -> Tensor | None:
        """The bool mask of one kind (``None`` when the mask says nothing about it)."""
        if kind not in ("neuron", "head"):
            raise UsageError(f"unknown component kind {kind!r}; use 'neuron' or 'head'")
        return self.neurons if kind == "neuron" else self.heads

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AblationMask):
            return NotImplemented
        if (self.mode, self.fingerprint) != (other.mode, other.fingerprint):
            return False
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, Tensor) or isinstance(b, Tensor):
                if a is None or b is None or a.dtype != b.dtype or not torch.equal(a, b):
                    return False
        return True

    __hash__ = None  # type: ignore[assignment]  # holds tensors

    def __repr__(self) -> str:
        parts = [f"mode={self.mode!r}", f"n_layers={self.n_layers}"]
        for kind, m in (("neurons", self.neurons), ("heads", self.heads)):
            if m is not None:
                parts.append(f"{kind}={int(m.sum())}/{m.numel()}")
        if self.fingerprint is not None:
            parts.append(f"model={self.fingerprint.architecture}:{self.fingerprint.weights_sha256[:12]}")
        return f"AblationMask({', '.join(parts)})"

    # ------------------------------------------------------------------ modes

    def with_mode(
        self,
        mode: Mode,
        *,
        means: MeanActivations | Any | None = None,
        scale: float | None = None,
    ) -> AblationMask:
        """The same components with another mode.

        ``mean`` needs ``means`` (a :class:`MeanActivations`, or anything with ``.neurons``
        ``[L, d_mlp]`` and ``.heads`` ``[L, n_heads, d_head]``); ``scale`` needs ``scale``, one
        factor for every component. ``zero`` and ``resample`` take neither.
        """
        check_mode(mode)
        if mode == self.mode and means is None and scale is None:
            return self
        if means is not None and mode != "mean":
            raise UsageError(f"means are only used with mode='mean', not {mode!r}")
        if scale is not None and mode != "scale":
            raise UsageError(f"scale is only used with mode='scale', not {mode!r}")
        values: dict[str, Tensor | None] = dict.fromkeys(VALUE_FIELDS)
        if mode == "mean" and means is not None:
            values["neuron_means"] = None if self.neurons is None else getattr(means, "neurons", None)
            values["head_means"] = None if self.heads is None else getattr(means, "heads", None)
        if mode == "scale" and scale is not None:
            if isinstance(scale, bool) or not isinstance(scale, int | float):
                raise UsageError(f"scale must be a number (the factor for every ablated component), got {scale!r}")
            for name, m in (("neuron_scales", self.neurons), ("head_scales", self.heads)):
                values[name] = None if m is None else torch.full(m.shape, float(scale))
        return replace(self, mode=mode, **values)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_components(
        cls,
        components: Iterable[Any],
        *,
        model: Any,
        mode: Mode = "zero",
        means: MeanActivations | None = None,
        scale: float | None = None,
    ) -> AblationMask:
        """A mask for ``model`` ablating the given components.

        A component is a :class:`loka.base.components.Component`, a ``("neuron" | "head", layer,
        index)`` tuple, or a label such as ``"L1H3"``; one that ``model`` does not have is a
        ValueError naming it. The mask records ``model``'s fingerprint.
        """
        check_mode(mode)
        fp = fingerprint(model)
        shapes = ComponentShapes(n_layers=fp.n_layers, d_mlp=fp.d_mlp, n_heads=fp.n_heads)
        neurons, heads = to_masks(components, shapes)
        return cls(neurons, heads, fingerprint=fp).with_mode(mode, means=means, scale=scale)

    @classmethod
    def from_scores(
        cls,
        scores: Any,
        *,
        k: int | None = None,
        fraction: float | None = None,
        per_layer_max: int | None = None,
        kind: KindChoice = "all",
        mode: Mode = "zero",
        means: MeanActivations | None = None,
        scale: float | None = None,
    ) -> AblationMask:
        """Ablate the top-scoring components of ``scores`` (larger score = ablated first).

        ``scores`` is an ``attribution.AttributionScores`` or any object with ``.neurons``
        ``[n_layers, d_mlp]`` and ``.heads`` ``[n_layers, n_heads]`` float tensors (either may be
        ``None``) where larger means "matters more". When the object has an ``importance(kind)``
        method (AttributionScores does: it flips ablation effects, which are negative for the
        components the knowledge needs), its values are ranked instead. ``kind`` picks the pool:
        ``"neurons"``, ``"heads"``, or ``"all"`` (every kind the scores have, ranked together;
        the singular ``"neuron"`` / ``"head"`` of a component address means the same).
        Give exactly one of ``k`` (a count) or ``fraction``
        (the smallest count that is at least that share of the pool); ``per_layer_max`` caps the
        components taken from one layer per kind. The model fingerprint is taken from
        ``scores.fingerprint``, or ``scores.metadata.model`` / ``.fingerprint`` when present.
        See :mod:`ablation.selection`.
        """
        asked, kind = kind, _KIND_ALIASES.get(kind, kind)  # type: ignore[assignment]
        if kind not in KIND_CHOICES:
            raise UsageError(f"unknown kind {asked!r}; use one of {', '.join(map(repr, KIND_CHOICES))}")
        check_mode(mode)
        given = {name: getattr(scores, name, None) for name in ("neurons", "heads")}
        for name, value in given.items():
            if value is not None and not isinstance(value, Tensor):
                raise UsageError(f"scores.{name} must be a tensor or None, got {type(value).__name__}")
        importance = getattr(scores, "importance", None)
        if callable(importance):  # AttributionScores: signed so that larger = carries more knowledge
            given = {name: None if value is None else importance(name) for name, value in given.items()}
        if all(v is None for v in given.values()):
            raise UsageError(
                f"{type(scores).__name__} has neither .neurons nor .heads scores; "
                "pass an AttributionScores (or an object with those tensor attributes)"
            )
        wanted = ("neurons", "heads") if kind == "all" else (kind,)
        pool = {name: given[name] for name in wanted if given[name] is not None}
        if not pool:
            raise UsageError(f"kind={asked!r} but scores.{wanted[0]} is None; use a kind the scores have")
        count = count_for(sum(t.numel() for t in pool.values()), k=k, fraction=fraction)
        chosen = select_top(pool, count, per_layer_max)
        masks = {
            name: chosen.get(name, None if value is None else torch.zeros(value.shape, dtype=torch.bool))
            for name, value in given.items()
        }
        mask = cls(masks["neurons"], masks["heads"], fingerprint=_scores_fingerprint(scores))
        return mask.with_mode(mode, means=means, scale=scale)

    @classmethod
    def random_like(cls, mask: AblationMask, seed: int = 0) -> AblationMask:
        """A control for ``mask``: in every layer the same number of neurons and of heads, chosen
        uniformly at random (``seed`` makes it reproducible). Mode and fingerprint are kept;
        means are each chosen component's own, and scale factors move with their layer's picks.
        """
        generator = torch.Generator().manual_seed(seed)
        picked = {
            name: None if m is None else random_like_layers(m, generator)
            for name, m in (("neurons", mask.neurons), ("heads", mask.heads))
        }
        values: dict[str, Tensor | None] = {name: getattr(mask, name) for name in VALUE_FIELDS}
        for name, old in (("neuron_scales", mask.neurons), ("head_scales", mask.heads)):
            factors, new = values[name], picked[name.split("_")[0] + "s"]
            if factors is not None and old is not None and new is not None:
                moved = factors.clone()
                for layer in range(len(old)):
                    moved[layer, new[layer]] = factors[layer, old[layer]]
                values[name] = moved
        return replace(mask, neurons=picked["neurons"], heads=picked["heads"], **values)

    # ------------------------------------------------------------------ set algebra

    def _combine(self, other: AblationMask, op: str) -> AblationMask:
        if not isinstance(other, AblationMask):
            return NotImplemented  # type: ignore[return-value]
        if self.mode != other.mode:
            raise UsageError(
                f"cannot combine masks with different modes ({self.mode!r} {op} {other.mode!r}); "
                "convert one with .with_mode(...) first"
            )
        if self.fingerprint is not None and other.fingerprint is not None and self.fingerprint != other.fingerprint:
            raise UsageError(f"cannot combine masks made for different models ({op}): their fingerprints differ")
        result: dict[str, Any] = {"fingerprint": self.fingerprint or other.fingerprint}
        for name in ("neurons", "heads"):
            a, b = getattr(self, name), getattr(other, name)
            if a is not None and b is not None and a.shape != b.shape:
                raise UsageError(
                    f"cannot combine masks ({op}): {name} shapes {list(a.shape)} and {list(b.shape)} differ"
                )
            if a is None and b is None:
                result[name] = None
            elif op == "|":
                result[name] = b if a is None else a if b is None else a | b
            elif op == "&":
                result[name] = None if a is None or b is None else a & b
            else:  # "-"
                result[name] = a if a is None or b is None else a & ~b
        for name in VALUE_FIELDS:
            kind = name.split("_")[0] + "s"
            a, b = getattr(self, name), getattr(other, name)
            if result[kind] is None:
                result[name] = None
            elif a is None or b is None or op != "|":
                result[name] = a if a is not None else b
            else:  # a component keeps the value of the mask that ablates it, the left one first
                ablated_by_self = getattr(self, kind)
                pick = ablated_by_self if a.dim() == 2 else ablated_by_self[..., None]
                result[name] = torch.where(pick, a, b.to(a.dtype))
        return replace(self, **result)

    def __or__(self, other: AblationMask) -> AblationMask:
        return self._combine(other, "|")

    def __and__(self, other: AblationMask) -> AblationMask:
        return self._combine(other, "&")

    def __sub__(self, other: AblationMask) -> AblationMask:
        return self._combine(other, "-")

    # ------------------------------------------------------------------ against a model

    def validate(self, model: Any) -> ModelFingerprint:
        """Check that this mask fits ``model``; return the model's fingerprint.

        Raises a ValueError naming the first offending entry: a fingerprint field that differs
        (another model, or the same model with other weights), a component the model does not
        have, a tensor shaped for another model, or head means of another ``d_head``.
        """
        fp = fingerprint(model)
        if self.fingerprint is not None and self.fingerprint != fp:
            for f in fields(ModelFingerprint):
                mine, theirs = getattr(self.fingerprint, f.name), getattr(fp, f.name)
                if mine != theirs:
                    raise UsageError(
                        f"this mask was made for another model: {f.name} is {mine!r} in the mask's "
                        f"fingerprint but {theirs!r} for this model"
                    )
        widths = {"neuron": ("d_mlp", fp.d_mlp), "head": ("n_heads", fp.n_heads)}
        for kind, m in (("neuron", self.neurons), ("head", self.heads)):
            if m is None:
                continue
            what, width = widths[kind]
            for layer, index in m.nonzero().tolist():
                if layer >= fp.n_layers or index >= width:
                    raise UsageError(
                        f"{kind} {_label(kind, layer, index)} is out of range for this model "
                        f"(n_layers = {fp.n_layers}, {what} = {width})"
                    )
            if tuple(m.shape) != (fp.n_layers, width):
                raise UsageError(
                    f"the mask's {kind}s are shaped {list(m.shape)} but this model has "
                    f"[n_layers, {what}] = [{fp.n_layers}, {width}]"
                )
        if self.head_means is not None:
            d_head = head_output_weights(model, 0, 0)
            d_head = d_head.stop - d_head.start
            if self.head_means.shape[-1] != d_head:
                raise UsageError(
                    f"head_means have d_head = {self.head_means.shape[-1]} but this model has d_head = {d_head}"
                )
        return fp

    # ------------------------------------------------------------------ reporting

    def summary(self) -> dict[str, Any]:
        """Counts per kind and layer, JSON-ready::

        {"mode": "zero", "total": 7, "neurons": {"total": 5, "per_layer": [2, 3]}, "heads": ...}
        """
        out: dict[str, Any] = {"mode": self.mode, "total": len(self), "n_layers": self.n_layers}
        for name, m in (("neurons", self.neurons), ("heads", self.heads)):
            out[name] = None if m is None else {"total": int(m.sum()), "per_layer": m.sum(dim=1).tolist()}
        if self.fingerprint is not None:
            out["model"] = {
                "architecture": self.fingerprint.architecture,
                "weights_sha256": self.fingerprint.weights_sha256,
            }
        return out

    def plot(self, *, title: str | None = None) -> go.Figure:
        """Heatmaps of the ablated neurons and heads, layers on the y axis (plotly figure).

        A cell shows how much of the component is removed: 1 for zero / mean / resample
        ablation, ``1 - factor`` for scale (so 0 is untouched, negative is amplified).
        """
        kinds = [kind for kind in ("neuron", "head") if self.tensor(kind) is not None]
        return plot_strengths(
            {kind: self.strength(kind) for kind in kinds},  # type: ignore[misc]
            {kind: int(self.tensor(kind).sum()) for kind in kinds},  # type: ignore[misc, union-attr]
            title=title or f"ablation mask ({self.mode}, {len(self)} components)",
        )

    def strength(self, kind: Literal["neuron", "head"]) -> Float[Tensor, "n_layers width"] | None:
        """How much of each component is removed (see :meth:`plot`), 0 where not ablated."""
        m = self.tensor(kind)
        if m is None:
            return None
        scales = self.neuron_scales if kind == "neuron" else self.head_scales
        removed = torch.ones(m.shape) if scales is None else 1.0 - scales.float()
        return torch.where(m, removed, torch.zeros(()))

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path`` (readable JSON) and, when the mode has values, ``path`` with suffix
        ``.safetensors`` beside it. ``AblationMask.load(path)`` gives back an equal mask."""
        values = {name: getattr(self, name) for name in VALUE_FIELDS if getattr(self, name) is not None}
        return write_mask(MaskFile(self.neurons, self.heads, self.mode, self.fingerprint, values), path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AblationMask:
        """Read a mask written by :meth:`save` (ValueError naming the first problem in the file)."""
        content = read_mask(path)
        try:
            return cls(
                content.neurons, content.heads, mode=content.mode, fingerprint=content.fingerprint, **content.values
            )
        except ValueError as err:  # a file that parses but does not make a mask
            raise mask_file_error(Path(path), str(err)) from err


def _scores_fingerprint(scores: Any) -> ModelFingerprint | None:
    """The model fingerprint that an attribution result carries, wherever it keeps it."""
    candidates = [getattr(scores, "fingerprint", None)]
    metadata = getattr(scores, "metadata", None)
    for key in ("fingerprint", "model"):
        if isinstance(metadata, Mapping):
            candidates.append(metadata.get(key))
        elif metadata is not None:
            candidates.append(getattr(metadata, key, None))
    for value in candidates:
        if isinstance(value, ModelFingerprint):
            return value
        if isinstance(value, Mapping):
            return ModelFingerprint.from_dict(value)
    return None
