"""The relearning attack: it recovers, it does not damage, its worst case is the grid's, bad input is refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import loka
from loka.data import KnowledgeSet
from loka.evaluation.attacks.relearning import DEFAULT_LRS, DEFAULT_SPLIT_SEEDS, Relearning, relearn
from loka.models import hf_state_dict
from loka.scoring.metrics import score_facts


@pytest.fixture(scope="module")
def attacked(tiny_testbed):
    """The original (with its weights before the attack) and the default-grid attack on it and on the oracle."""
    tb = tiny_testbed
    model, oracle = loka.load_model(tb.model_dir), loka.load_model(tb.oracle_dir)
    weights = {name: tensor.clone() for name, tensor in hf_state_dict(model).items()}
    return model, weights, relearn(model, None, tb.forget, tb.retain), relearn(oracle, None, tb.forget, tb.retain)


def test_the_attacked_model_is_untouched(attacked):
    model, weights, _, _ = attacked
    after = hf_state_dict(model)
    assert after.keys() == weights.keys()
    assert all(torch.equal(after[name], weights[name]) for name in weights)
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())


def test_the_attack_does_not_damage_the_original(attacked):
    _, _, original, _ = attacked
    assert len(original.grid) == len(DEFAULT_LRS) * len(DEFAULT_SPLIT_SEEDS)
    for point in original.grid:
        assert point.before > 0.9  # the original knows the held-out half
        assert point.after >= 0.9 * point.before, point


def test_the_oracle_relearns_less_than_the_original(attacked):
    _, _, original, oracle = attacked
    assert oracle.before < 0.3 and oracle.after < original.after - 0.5
    # same grid for both: it is the protocol, not tuned per model
    assert [(p.lr, p.split_seed) for p in oracle.grid] == [(p.lr, p.split_seed) for p in original.grid]


@pytest.mark.parametrize("which", [2, 3])
def test_the_result_is_the_worst_grid_point(attacked, tiny_testbed, which):
    result: Relearning = attacked[which]
    worst = max(result.grid, key=lambda p: p.after)
    assert result.after == worst.after == max(p.after for p in result.grid)
    first = next(p for p in result.grid if p.after == worst.after)
    assert (result.lr, result.split_seed, result.before) == (first.lr, first.split_seed, first.before)
    assert result.curve[0] == (0, result.before) and result.curve[-1] == (result.steps, result.after)
    # per-fact output of the worst point: the held-out half of its split, scored after the attack
    train, test = tiny_testbed.forget.split(0.5, seed=result.split_seed)
    assert result.held_out_ids == test.ids and (result.n_train, result.n_test) == (len(train), len(test))
    assert sum(result.held_out_correct) / len(test) == pytest.approx(result.after)
    assert sum(result.held_out_correct_before) / len(test) == pytest.approx(result.before)
    assert result.n_retain == result.retain_ratio * result.n_train


def test_a_small_retain_set_is_sampled_with_replacement_and_runs_are_reproducible(tiny_testbed):
    tb = tiny_testbed
    model = loka.load_model(tb.model_dir)
    few = KnowledgeSet(tb.retain.facts[:5], name="few")
    runs = [relearn(model, model.tokenizer, tb.forget, few, steps=2, lrs=(1e-4,), split_seeds=(3,)) for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0].n_retain == 4 * runs[0].n_train > len(few)
    before = score_facts(model, tb.forget.split(0.5, seed=3)[1]).first_token_accuracy
    assert runs[0].before == pytest.approx(before)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lrs": ()}, "the grid is empty"),
        ({"split_seeds": []}, "the grid is empty"),
        ({"lrs": (1e-4, -1e-3)}, "learning rates must be positive"),
        ({"lrs": (float("nan"),)}, "learning rates must be positive"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"retain_ratio": -1}, "retain_ratio must be a non-negative integer"),
        ({"split_seeds": (0, 0)}, "repeats a point"),
    ],
)
def test_bad_options_are_refused(tiny_testbed, options, message):
    tb = tiny_testbed
    with pytest.raises(ValueError, match=message) as error:
        relearn(object(), None, tb.forget, tb.retain, **options)
    assert "\n" not in str(error.value)


def test_bad_knowledge_is_refused(tiny_testbed):
    tb = tiny_testbed
    for forget, retain, message in [
        (KnowledgeSet(tb.forget.facts[:1]), tb.retain, "at least 2 facts"),
        (tb.forget, tb.forget, "share fact id"),
        (tb.forget, KnowledgeSet(tb.retain.facts[:3] + (tb.forget.facts[0],)), "share fact id"),
        (tb.forget, KnowledgeSet((replace(tb.forget.facts[0], id="other"),)), "share subject"),
        (tb.forget, list(tb.retain), "retain must be a KnowledgeSet"),
    ]:
        with pytest.raises(ValueError, match=message) as error:
            relearn(object(), None, forget, retain)
        assert "\n" not in str(error.value)
