"""Peeling (attribution.peeling): each round equals attributing a model whose peeled components
were deleted from its weights; the order, the ranking, the untouched model, and bad input."""

from __future__ import annotations

import pytest
import torch

from attribution import attribute
from attribution.peeling import peel
from attribution.recall import recall_at_k
from loka.base.components import Component
from loka.base.errors import UsageError
from loka.data import KnowledgeSet
from loka.models import head_output_weights, load_model, neuron_output_weights
from loka.testbed import Testbed

OPTIONS = dict(progress=False, seed=3, batch_size=8)


@pytest.fixture(scope="module")
def facts(tiny_testbed: Testbed) -> KnowledgeSet:
    return KnowledgeSet(tiny_testbed.forget.facts[:8], name="forget[:8]")


def _hook_count(model) -> int:
    return sum(len(point.fwd_hooks) + len(point.bwd_hooks) for point in model.hook_dict.values())


def test_round_zero_is_attribute(model, facts):
    peeled = peel(model, facts, rounds=0, **OPTIONS)
    plain = attribute(model, facts, **OPTIONS)
    assert peeled.order == {"neuron": (), "head": ()}
    assert torch.equal(peeled.final.neurons, plain.neurons) and torch.equal(peeled.final.heads, plain.heads)


@pytest.mark.parametrize("baseline", ["corrupt", "zero"])
def test_a_round_equals_attributing_the_model_with_the_peeled_weights_zeroed(tiny_testbed, model, facts, baseline):
    peeled = peel(model, facts, rounds=1, per_round=3, baseline=baseline, **OPTIONS)
    assert [len(peeled.order[k]) for k in ("neuron", "head")] == [3, 3]
    deleted = load_model(tiny_testbed.model_dir)  # a second copy: its W_out rows / W_O blocks zeroed
    with torch.no_grad():
        for kind, components in peeled.order.items():
            for c in components:
                slice_of = neuron_output_weights if kind == "neuron" else head_output_weights
                slice_of(deleted, c.layer, c.index).of(deleted).zero_()
    reference = attribute(deleted, facts, baseline=baseline, **OPTIONS)
    torch.testing.assert_close(peeled.rounds[1].neurons, reference.neurons, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(peeled.rounds[1].heads, reference.heads, atol=1e-5, rtol=1e-4)


def test_peeled_components_go_first_in_order_and_score_zero_after(model, facts):
    peeled = peel(model, facts, components="neurons", rounds=3, per_round=2, **OPTIONS)
    order = peeled.order["neuron"]
    assert len(order) == 6 and len(set(order)) == 6
    for t in range(3):  # round t's top 2 among those not yet peeled are the next two peeled
        values = peeled.rounds[t].importance("neurons").clone()
        for c in order[: 2 * t]:
            assert values[c.layer, c.index] == 0  # ablated: no activation, no effect
            values[c.layer, c.index] = -torch.inf
        best = torch.topk(values.flatten(), 2).indices.tolist()
        width = values.shape[1]
        assert [Component("neuron", i // width, i % width) for i in best] == list(order[2 * t : 2 * t + 2])
    ranking = peeled.top(10)
    assert ranking[:6] == list(order)
    rest = peeled.final.importance("neurons")
    assert [rest[c.layer, c.index] for c in ranking[6:]] == sorted(
        (rest[c.layer, c.index] for c in ranking[6:]), reverse=True
    )
    importance = peeled.importance("neurons")
    ranks = [float(importance[c.layer, c.index]) for c in order]
    assert ranks == sorted(ranks, reverse=True) and len(set(ranks)) == len(ranks)
    assert len(peeled.plot().data) == 1
    planted = torch.zeros_like(importance, dtype=torch.bool)
    planted[order[0].layer, order[0].index] = True
    assert recall_at_k(peeled, planted, 1, per_layer=False).recall == 1.0  # the first peeled is the top


def test_the_model_is_left_as_it_was(model, facts):
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    hooks = _hook_count(model)
    peel(model, facts, rounds=2, per_round=1, **OPTIONS)
    assert _hook_count(model) == hooks
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(rounds=-1), "rounds must be a non-negative integer, got -1"),
        (dict(rounds=1.5), "rounds must be a non-negative integer, got 1.5"),
        (dict(rounds=True), "rounds must be a non-negative integer, got True"),
        (dict(per_round=0), "per_round must be a positive integer"),
        (dict(components="heads", rounds=5, per_round=4), "5 rounds of 4 heads peel 20, more than the model's"),
        (dict(components="cells"), "unknown components 'cells'"),
    ],
)
def test_bad_input_is_one_line_and_runs_nothing(model, facts, kwargs, message):
    with pytest.raises(UsageError, match=message) as caught:
        peel(model, facts, **{**OPTIONS, **kwargs})
    assert "\n" not in str(caught.value)


def test_a_model_that_is_not_loaded_gets_the_attribution_error(facts):
    with pytest.raises(UsageError) as caught:
        peel("not/a/model", facts, **OPTIONS)
    assert "\n" not in str(caught.value) and "TransformerBridge" in str(caught.value)
