"""Component addresses: which MLP neuron or attention head, and where its activation is hooked.

A component is the address ``(kind, layer, index)``:

- ``("neuron", l, i)``: neuron ``i`` of ``blocks.{l}.mlp.hook_post`` (shape ``[batch, pos, d_mlp]``);
- ``("head", l, h)``: head ``h`` of ``blocks.{l}.attn.hook_z`` (shape ``[batch, pos, n_heads, d_head]``).

:class:`Component` is a NamedTuple, so it equals the plain tuple ``("head", 1, 3)`` and users may
pass either. Whole-model results (scores, masks) are tensors shaped ``[n_layers, d_mlp]`` and
``[n_layers, n_heads]``, never lists of addresses; :func:`to_masks` and :func:`from_masks`
convert between the two, and :class:`ComponentShapes` says how big those tensors are for a model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

import torch
from jaxtyping import Bool
from torch import Tensor

from loka.base.errors import UsageError

__all__ = ["Kind", "KINDS", "Component", "ComponentShapes", "hook_name", "to_masks", "from_masks"]

Kind = Literal["neuron", "head"]
KINDS: tuple[Kind, ...] = get_args(Kind)
_HOOKS = {"neuron": "blocks.{layer}.mlp.hook_post", "head": "blocks.{layer}.attn.hook_z"}
_LABEL = re.compile(r"^L(\d+)([NH])(\d+)$")


def hook_name(kind: Kind, layer: int) -> str:
    """The TransformerLens hook whose activations hold ``kind`` components of ``layer``."""
    if kind not in _HOOKS:
        raise UsageError(f"unknown component kind {kind!r}; use one of {KINDS}")
    return _HOOKS[kind].format(layer=layer)


class Component(NamedTuple):
    """``("neuron" | "head", layer, index)``; ``label`` is ``L{layer}N{index}`` or ``L{layer}H{index}``."""

    kind: Kind
    layer: int
    index: int

    @property
    def hook_name(self) -> str:
        return hook_name(self.kind, self.layer)

    @property
    def label(self) -> str:
        return f"L{self.layer}{'N' if self.kind == 'neuron' else 'H'}{self.index}"

    @classmethod
    def parse(cls, value: Any) -> Component:
        """Accept a Component, a ``(kind, layer, index)`` tuple or list, or a label like ``"L1H3"``."""
        if isinstance(value, str):
            match = _LABEL.match(value.strip())
            if not match:
                raise UsageError(
                    f"cannot read component {value!r}; write it as 'L<layer>N<index>' or 'L<layer>H<index>'"
                )
            layer, letter, index = match.groups()
            return cls("neuron" if letter == "N" else "head", int(layer), int(index))
        if not isinstance(value, tuple | list) or len(value) != 3:
            raise UsageError(f"a component is ('neuron' | 'head', layer, index), got {value!r}")
        kind, layer, index = value
        if kind not in KINDS:
            raise UsageError(f"component {tuple(value)!r}: unknown kind {kind!r}; use one of {KINDS}")
        for name, number in (("layer", layer), ("index", index)):
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                raise UsageError(f"component {tuple(value)!r}: {name} must be a non-negative integer")
        return cls(kind, layer, index)


@dataclass(frozen=True)
class ComponentShapes:
    """How many components a model has: ``[n_layers, d_mlp]`` neurons and ``[n_layers, n_heads]`` heads."""

    n_layers: int
    d_mlp: int
    n_heads: int

    @classmethod
    def of(cls, model: Any) -> ComponentShapes:
        """Read the shapes from a TransformerBridge (``model.cfg``)."""
        cfg = getattr(model, "cfg", None)
        if cfg is None:
            raise UsageError(f"expected a TransformerBridge with a .cfg, got {type(model).__name__}")
        return cls(int(cfg.n_layers), int(cfg.d_mlp), int(cfg.n_heads))

    def shape(self, kind: Kind) -> tuple[int, int]:
        if kind not in KINDS:
            raise UsageError(f"unknown component kind {kind!r}; use one of {KINDS}")
        return (self.n_layers, self.d_mlp if kind == "neuron" else self.n_heads)

    def check(self, component: Component) -> Component:
        """``component`` if it exists in a model of these shapes, else a ValueError naming it."""
        n_layers, width = self.shape(component.kind)
        if component.layer >= n_layers:
            raise UsageError(
                f"component {component.label}: layer {component.layer} does not exist (model has {n_layers} layers)"
            )
        if component.index >= width:
            what = "d_mlp" if component.kind == "neuron" else "n_heads"
            raise UsageError(f"component {component.label}: index {component.index} is out of range ({what} = {width})")
        return component


def to_masks(
    components: Iterable[Any], shapes: ComponentShapes
) -> tuple[Bool[Tensor, "n_layers d_mlp"], Bool[Tensor, "n_layers n_heads"]]:
    """Boolean masks (neurons, heads) with True at every given component (validated)."""
    masks = {kind: torch.zeros(shapes.shape(kind), dtype=torch.bool) for kind in KINDS}
    for value in components:
        component = shapes.check(Component.parse(value))
        masks[component.kind][component.layer, component.index] = True
    return masks["neuron"], masks["head"]


def from_masks(
    neurons: Bool[Tensor, "n_layers d_mlp"] | None, heads: Bool[Tensor, "n_layers n_heads"] | None
) -> list[Component]:
    """The components where the masks are True, neurons first, each in (layer, index) order."""
    out: list[Component] = []
    for kind, mask in (("neuron", neurons), ("head", heads)):
        if mask is not None:
            out += [Component(kind, int(layer), int(index)) for layer, index in mask.nonzero().tolist()]  # type: ignore[arg-type]
    return out
