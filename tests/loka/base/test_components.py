"""Component addresses: parsing, labels, validation, and the mask round-trip."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loka.base.components import Component, ComponentShapes, from_masks, hook_name, to_masks

SHAPES = ComponentShapes(n_layers=3, d_mlp=8, n_heads=4)


def test_component_is_a_plain_tuple_with_a_label():
    c = Component("head", 1, 3)
    assert c == ("head", 1, 3)
    assert c.label == "L1H3" and Component("neuron", 2, 7).label == "L2N7"
    assert c.hook_name == "blocks.1.attn.hook_z"
    assert hook_name("neuron", 0) == "blocks.0.mlp.hook_post"
    assert Component.parse("L2N7") == ("neuron", 2, 7)
    assert Component.parse(["head", 0, 1]) == ("head", 0, 1)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("L1X3", "cannot read component 'L1X3'"),
        (("neuron", 1), r"a component is \('neuron' \| 'head', layer, index\)"),
        (("mlp", 1, 2), "unknown kind 'mlp'"),
        (("head", -1, 2), "layer must be a non-negative integer"),
        (("head", 1, 2.5), "index must be a non-negative integer"),
    ],
)
def test_parse_errors(value, message):
    with pytest.raises(ValueError, match=message):
        Component.parse(value)


def test_check_against_shapes():
    with pytest.raises(ValueError, match=r"L3N0: layer 3 does not exist \(model has 3 layers\)"):
        to_masks([("neuron", 3, 0)], SHAPES)
    with pytest.raises(ValueError, match=r"L0H4: index 4 is out of range \(n_heads = 4\)"):
        to_masks(["L0H4"], SHAPES)
    with pytest.raises(ValueError, match="unknown component kind"):
        hook_name("mlp", 0)  # type: ignore[arg-type]


@settings(deadline=None)  # no per-example time limit: CI machines may be busy
@given(
    st.sets(
        st.one_of(
            st.tuples(st.just("neuron"), st.integers(0, 2), st.integers(0, 7)),
            st.tuples(st.just("head"), st.integers(0, 2), st.integers(0, 3)),
        )
    )
)
def test_masks_round_trip(components):
    neurons, heads = to_masks(components, SHAPES)
    assert neurons.shape == (3, 8) and heads.shape == (3, 4)
    assert int(neurons.sum() + heads.sum()) == len(components)
    back = from_masks(neurons, heads)
    assert set(back) == set(components)
    assert back == sorted(back, key=lambda c: (c.kind != "neuron", c.layer, c.index))
    assert from_masks(None, torch.zeros(3, 4, dtype=torch.bool)) == []
