"""The relearning attack: it recovers, it does not damage, its worst case is the grid's, bad input is refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

import loka
from loka.data import KnowledgeSet
from loka.data.encoding import encode_facts
from loka.evaluation.attacks.relearning import (
    DEFAULT_LRS,
    DEFAULT_SPLIT_SEEDS,
    Relearning,
    _retain_sample,
    benign_relearn,
    relearn,
)
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


# --- benign relearning: a fine-tune on retain facts alone -------------------------------------------


def test_benign_relearning_is_a_plain_fine_tune_on_retain_facts_alone(tiny_testbed):
    """Against a hand-written loop: a copy of the model, AdamW at ``lr``, ``steps`` full-batch steps
    of the LM loss on the sampled retain facts (no forget fact among them), every forget fact scored."""
    tb = tiny_testbed
    model = loka.load_model(tb.model_dir)
    result = benign_relearn(model, model.tokenizer, tb.forget, tb.retain, steps=3, lr=1e-3, n_retain=40, seed=2)
    sample = _retain_sample(tb.retain, 40, 2, -1)
    assert not {f.subject for f in sample} & set(tb.forget.subjects)
    batch = encode_facts(sample, model.tokenizer)
    copy = AutoModelForCausalLM.from_pretrained(tb.model_dir, attn_implementation="eager")
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)  # the HF loss on every real token
    optimizer = torch.optim.AdamW(copy.parameters(), lr=1e-3)
    for _ in range(3):
        copy.train()
        loss = copy(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    copy.eval()
    correct = score_facts(copy, tb.forget, tokenizer=model.tokenizer).first_token_correct
    assert result.correct == tuple(bool(c) for c in correct) and result.ids == tb.forget.ids
    assert result.after == pytest.approx(correct.float().mean().item()) == result.curve[-1][1]
    assert result.before == pytest.approx(score_facts(model, tb.forget).first_token_accuracy)
    assert (result.steps, result.lr, result.n_retain) == (3, 1e-3, 40)


def test_benign_relearning_brings_nothing_to_the_oracle_and_keeps_the_original(tiny_testbed):
    tb = tiny_testbed
    original = benign_relearn(loka.load_model(tb.model_dir), None, tb.forget, tb.retain)
    oracle = benign_relearn(loka.load_model(tb.oracle_dir), None, tb.forget, tb.retain)
    assert original.before > 0.9 and original.after >= 0.9 * original.before  # it does not damage
    assert oracle.after < 0.3 and oracle.gain <= 0.1  # retain facts cannot teach a forget answer


def test_benign_relearning_refuses_bad_input(tiny_testbed):
    tb = tiny_testbed
    for kwargs, message in [
        ({"n_retain": 0}, "n_retain must be a positive integer"),
        ({"lr": -1.0}, "learning rates must be positive"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"retain": tb.forget}, "share fact id"),
    ]:
        with pytest.raises(ValueError, match=message) as error:
            benign_relearn(object(), None, tb.forget, **{"retain": tb.retain, **kwargs})
        assert "\n" not in str(error.value) and str(error.value).startswith("benign_relearn: ")


# --- the LoRA relearning attack: the same attack through rank-r adapters of frozen weights ------------


def test_lora_relearning_is_adam_on_low_rank_adapters_of_every_block_weight(tiny_testbed):
    """Against a hand-written loop: each block weight W of an HF copy read as W + B A (B zeros,
    A seeded Gaussian / sqrt(d1), in module order) through torch.func.functional_call, AdamW on
    the adapters alone, the LM loss of the train half; the held-out half scored on the merged weights."""
    tb = tiny_testbed
    model = loka.load_model(tb.model_dir)
    weights = {name: tensor.clone() for name, tensor in hf_state_dict(model).items()}
    # no retain facts mixed in and a large rate: the adapters damage the held-out half (a visible change)
    options = dict(steps=4, lrs=(0.2,), split_seeds=(0,), retain_ratio=0, lora_rank=2, seed=1)
    result = relearn(model, None, tb.forget, tb.retain, **options)
    assert result.lora_rank == 2 and [(p.lr, p.split_seed) for p in result.grid] == [(0.2, 0)]
    assert result.after < result.before  # the adapters moved the answers
    assert all(torch.equal(weights[n], t) for n, t in hf_state_dict(model).items())  # the model is untouched

    train, test = tb.forget.split(0.5, seed=0)
    batch = encode_facts(train.facts, model.tokenizer)
    copy = AutoModelForCausalLM.from_pretrained(tb.model_dir, attn_implementation="eager")
    generator = torch.Generator().manual_seed(1)
    adapters = {}
    for name, module in copy.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.nn.Parameter) and weight.ndim == 2 and ".h." in f".{name}.":
            rank = min(2, *weight.shape)
            a = torch.randn(rank, weight.shape[1], generator=generator) / weight.shape[1] ** 0.5
            adapters[f"{name}.weight"] = (a.requires_grad_(), torch.zeros(weight.shape[0], rank, requires_grad=True))
    assert len(adapters) == 4 * copy.config.n_layer  # attention in and out, MLP in and out
    base = dict(copy.named_parameters())
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    optimizer = torch.optim.AdamW([t for pair in adapters.values() for t in pair], lr=0.2)
    for _ in range(4):
        merged = {n: base[n].detach() + b @ a for n, (a, b) in adapters.items()}
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "labels": labels}
        out = torch.func.functional_call(copy, merged, (), inputs)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        for n, (a, b) in adapters.items():
            base[n] += b @ a
    copy.eval()
    correct = score_facts(copy, test, tokenizer=model.tokenizer).first_token_correct
    assert result.held_out_correct == tuple(bool(c) for c in correct) and result.held_out_ids == test.ids


def test_lora_relearning_refuses_a_bad_rank(tiny_testbed):
    tb = tiny_testbed
    for rank in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="lora_rank must be a positive integer") as error:
            relearn(object(), None, tb.forget, tb.retain, lora_rank=rank)
        assert "\n" not in str(error.value)
