"""Learned masks (attribution.learned_mask): the config's checks, the penalty and the gradient
against hand computations, determinism, and a model left exactly as it was.

The hand computations use a tiny random GPT-2 checkpoint, one fact at a time: gates computed
from the formulas of Louizos et al. (2018) for a fixed noise draw, multiplied into
``hook_post`` / ``hook_z`` through TL hooks, the targets' log-probabilities read from the full
logits with ``log_softmax``, and the gradient taken by ``torch.autograd.grad``; the library
batches facts with padding and sums one backward per batch.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

import attribution
from attribution import LearnedMaskConfig
from attribution.baselines import Baselines, Setup
from attribution.learned_mask import (
    MaskParameters,
    forget_term,
    hard_concrete_gate,
    objective_gradients,
    probability_not_full,
    probability_open,
)
from attribution.metric import FactMetric
from loka.base import distributed
from loka.base.components import ComponentShapes
from loka.base.errors import UsageError
from loka.data import KnowledgeSet
from loka.models import load_model
from tests.checkpoints import birth_facts, build_tiny_checkpoint, parts

KINDS = ("neuron", "head")
FAST = dict(steps=15, lr=0.1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TransformerBridge:
    return load_model(build_tiny_checkpoint("gpt2", tmp_path_factory.mktemp("gpt2")))


@pytest.fixture(scope="module")
def sets() -> tuple[KnowledgeSet, KnowledgeSet]:
    return parts(birth_facts(7, surnames=True), forget=3, retain=4)


def setups(model: TransformerBridge, facts: KnowledgeSet, batch_size: int = 2) -> list[Setup]:
    b = Baselines(
        model, facts, hooks=(), baseline="zero", direction="ablate", corruption=None, donors=None,
        positions="all", metric=FactMetric(), batch_size=batch_size,
    )  # fmt: skip
    return [b.setup(*batch, sources=False) for batch in b.batches]


# The config --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(kind="l0"), "unknown kind 'l0'; use one of 'hard_concrete', 'slimming'"),
        (dict(objective="forget"), "unknown objective 'forget'; use one of 'keep', 'remove'"),
        (dict(steps=0), "steps must be an integer at least 1"),
        (dict(steps=2.0), "steps must be an integer at least 1"),
        (dict(lr=0), "lr must be a finite number greater than 0"),
        (dict(lr=float("inf")), "lr must be a finite number greater than 0"),
        (dict(sparsity=-1), "sparsity must be a finite number at least 0"),
        (dict(retain_weight=-0.5, objective="remove"), "retain_weight must be a finite number at least 0"),
        (dict(retain_weight=1.0), "retain_weight applies to objective='remove'"),
        (dict(temperature=0), "temperature must be a finite number greater than 0"),
        (dict(stretch=(0.1, 1.1)), r"stretch must be \(gamma, zeta\) with gamma < 0 and zeta > 1"),
        (dict(stretch=(-0.1, 1.0)), r"stretch must be \(gamma, zeta\) with gamma < 0 and zeta > 1"),
        (dict(stretch=(-0.1,)), r"stretch must be \(gamma, zeta\)"),
        (dict(init=0), r"init must be None or a number in \(0, 1\]"),
        (dict(init=1.5), r"init must be None or a number in \(0, 1\]"),
        (dict(seed=1.5), "seed must be an integer"),
    ],
)
def test_config_rejects_what_it_does_not_allow(options, message):
    with pytest.raises(UsageError, match=message) as caught:
        LearnedMaskConfig(**options)
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)


def test_config_is_frozen_and_resolves_its_initial_gate():
    config = LearnedMaskConfig()
    with pytest.raises(AttributeError):
        config.steps = 3  # type: ignore[misc]
    assert config.initial_gate == 0.5  # Chang et al.'s mask_p
    assert LearnedMaskConfig(kind="slimming").initial_gate == 1.0
    assert LearnedMaskConfig(objective="remove").initial_gate == 1.0
    assert LearnedMaskConfig(init=0.3).to_dict()["init"] == 0.3


# The gates and the penalty ------------------------------------------------------------------------
def test_hard_concrete_probabilities_match_sampled_gates():
    """P(g != 0) and P(g != 1), the closed forms the penalties use, against 400k sampled gates."""
    beta, gamma, zeta = 2 / 3, -0.1, 1.1
    log_alpha = torch.tensor([-2.0, -0.3, 0.0, 0.8, 2.5])
    u = torch.rand(400_000, 1, generator=torch.Generator().manual_seed(0)).clamp(1e-6, 1 - 1e-6)
    gates = hard_concrete_gate(log_alpha, u, beta=beta, gamma=gamma, zeta=zeta)
    assert torch.allclose(
        (gates > 0).float().mean(0), probability_open(log_alpha, beta=beta, gamma=gamma, zeta=zeta), atol=3e-3
    )
    assert torch.allclose(
        (gates < 1).float().mean(0), probability_not_full(log_alpha, beta=beta, gamma=gamma, zeta=zeta), atol=3e-3
    )


@pytest.mark.parametrize("objective", ["keep", "remove"])
def test_penalty_by_hand(objective):
    shapes = ComponentShapes(n_layers=1, d_mlp=2, n_heads=1)
    beta, gamma, zeta = 0.5, -0.2, 1.25
    config = LearnedMaskConfig(objective=objective, temperature=beta, stretch=(gamma, zeta))
    mask = MaskParameters(config, shapes, KINDS, "cpu")
    with torch.no_grad():
        mask.params["neuron"].copy_(torch.tensor([[-1.0, 2.0]]))
        mask.params["head"].copy_(torch.tensor([[0.5]]))

    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    if objective == "keep":  # sigmoid(log_alpha - beta * log(-gamma / zeta))
        terms = [sigmoid(a - beta * math.log(0.2 / 1.25)) for a in (-1.0, 2.0, 0.5)]
    else:  # sigmoid(beta * log((1 - gamma) / (zeta - 1)) - log_alpha)
        terms = [sigmoid(beta * math.log(1.2 / 0.25) - a) for a in (-1.0, 2.0, 0.5)]
    assert mask.penalty().item() == pytest.approx(sum(terms) / 3, rel=1e-6)

    slim = MaskParameters(LearnedMaskConfig(kind="slimming", objective=objective), shapes, KINDS, "cpu")
    with torch.no_grad():
        slim.params["neuron"].copy_(torch.tensor([[-0.5, 1.5]]))
        slim.params["head"].copy_(torch.tensor([[0.25]]))
    expected = (0.5 + 1.5 + 0.25) / 3 if objective == "keep" else (1.5 + 0.5 + 0.75) / 3
    assert slim.penalty().item() == pytest.approx(expected, rel=1e-6)


def test_initial_gates():
    shapes = ComponentShapes(2, 3, 1)
    for config, expected in ((LearnedMaskConfig(), 0.5), (LearnedMaskConfig(init=0.9), 0.9)):
        gates = MaskParameters(config, shapes, KINDS, "cpu").final_gates()
        assert all(torch.allclose(g, torch.full_like(g, expected)) for g in gates.values())


# The loss and its gradient ------------------------------------------------------------------------
def hand_log_prob(model: TransformerBridge, fact, gates: dict[str, torch.Tensor]) -> torch.Tensor:
    """log p(target | prompt) of one fact with every activation multiplied by its gate."""
    batch = KnowledgeSet((fact,)).encode(model)
    hooks = []
    for layer in range(model.cfg.n_layers):
        hooks.append((f"blocks.{layer}.mlp.hook_post", lambda act, hook, g=gates["neuron"][layer]: act * g))
        hooks.append((f"blocks.{layer}.attn.hook_z", lambda act, hook, g=gates["head"][layer]: act * g[:, None]))
    with model.hooks(fwd_hooks=hooks):
        logits = model(batch.input_ids)
    log_probs = logits[0].float().log_softmax(-1)
    picked = [
        log_probs[p, t]
        for p, t, real in zip(batch.prediction_positions[0], batch.target_ids[0], batch.target_mask[0], strict=True)
        if real
    ]
    return torch.stack(picked).sum()


@pytest.mark.parametrize(
    ("kind", "objective", "retain_weight"),
    [
        ("hard_concrete", "keep", 0.0),
        ("hard_concrete", "remove", 0.7),
        ("slimming", "keep", 0.0),
        ("slimming", "remove", 0.7),
    ],
)
def test_loss_and_gradient_equal_a_hand_computation(tiny, sets, kind, objective, retain_weight):
    forget, retain = sets
    beta, (gamma, zeta), sparsity = 0.6, (-0.15, 1.2), 0.37
    config = LearnedMaskConfig(
        kind=kind, objective=objective, sparsity=sparsity, retain_weight=retain_weight, temperature=beta,
        stretch=(gamma, zeta),
    )  # fmt: skip
    mask = MaskParameters(config, ComponentShapes.of(tiny), KINDS, "cpu")
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # parameters spread over both clipped regions and the smooth middle
        for p in mask.tensors:
            p.copy_(torch.randn(p.shape, generator=generator) * (1.5 if kind == "hard_concrete" else 0.6) + 0.5)
    noise = mask.noise(generator)
    retain_setups = setups(tiny, retain) if retain_weight else []
    parts_, grads = objective_gradients(tiny, mask, setups(tiny, forget), retain_setups, noise)

    leaves = {k: mask.params[k].detach().clone().requires_grad_(True) for k in KINDS}
    if kind == "hard_concrete":
        gates = {
            k: torch.clamp(
                torch.sigmoid((torch.log(noise[k]) - torch.log(1 - noise[k]) + leaves[k]) / beta) * (zeta - gamma)
                + gamma,
                0,
                1,
            )
            for k in KINDS
        }
        a = torch.cat([leaves[k].flatten() for k in KINDS])
        if objective == "keep":
            penalty = torch.sigmoid(a - beta * math.log(-gamma / zeta)).mean()
        else:
            penalty = torch.sigmoid(beta * math.log((1 - gamma) / (zeta - 1)) - a).mean()
    else:
        gates = {k: torch.clamp(leaves[k], 0, 1) for k in KINDS}
        m = torch.cat([leaves[k].flatten() for k in KINDS])
        penalty = m.abs().mean() if objective == "keep" else (1 - m).abs().mean()
    log_probs = torch.stack([hand_log_prob(tiny, f, gates) for f in forget])
    forget_metric = log_probs.mean()
    # keep: the targets' NLL; remove: -log(1 - p), p = exp(log p) the target's probability
    forget_loss = -forget_metric if objective == "keep" else -torch.log(1 - torch.exp(log_probs)).mean()
    loss = forget_loss + sparsity * penalty
    if retain_weight:
        retain_nll = -torch.stack([hand_log_prob(tiny, f, gates) for f in retain]).mean()
        loss = loss + retain_weight * retain_nll
        assert parts_.retain_nll == pytest.approx(retain_nll.item(), rel=1e-5)
    expected = torch.autograd.grad(loss, [leaves[k] for k in KINDS])

    assert parts_.loss == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
    assert parts_.penalty == pytest.approx(penalty.item(), rel=1e-6)
    assert parts_.forget_metric == pytest.approx(forget_metric.item(), rel=1e-5)
    assert parts_.forget_term == pytest.approx(forget_loss.item(), rel=1e-5)
    for got, want in zip(grads, expected, strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)
    assert any((g != 0).any() for g in grads)


def test_slimming_gradient_matches_finite_differences(tiny, sets):
    """Independent of autograd: central differences of the loss in a few coefficients (in the
    smooth region 0 < m < 1, where the clip does not bend the loss)."""
    forget, _ = sets
    config = LearnedMaskConfig(kind="slimming", sparsity=0.5)
    mask = MaskParameters(config, ComponentShapes.of(tiny), KINDS, "cpu")
    with torch.no_grad():
        for p in mask.tensors:
            p.copy_(torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) * 0.6 + 0.2)
    batches = setups(tiny, forget)
    _, grads = objective_gradients(tiny, mask, batches, [], None)
    eps = 1e-2
    for kind_index, kind, index in ((0, "neuron", (0, 5)), (0, "neuron", (1, 17)), (1, "head", (1, 2))):
        p = mask.params[kind]
        with torch.no_grad():
            p[index] += eps
        plus = objective_gradients(tiny, mask, batches, [], None)[0].loss
        with torch.no_grad():
            p[index] -= 2 * eps
        minus = objective_gradients(tiny, mask, batches, [], None)[0].loss
        with torch.no_grad():
            p[index] += eps
        numeric = (plus - minus) / (2 * eps)
        assert numeric == pytest.approx(grads[kind_index][index].item(), rel=0.02, abs=2e-3), (kind, index)


# Through attribute ---------------------------------------------------------------------------------
def weights_of(model: TransformerBridge) -> dict[str, tuple[torch.Tensor, bool, object]]:
    return {name: (p.detach().clone(), p.requires_grad, p.grad) for name, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["hard_concrete", "slimming"])
def test_deterministic_and_the_model_is_left_alone(tiny, sets, kind):
    forget, _ = sets
    before = weights_of(tiny)
    training = tiny.training
    config = LearnedMaskConfig(kind=kind, **FAST)
    first = attribution.attribute(tiny, forget, method="learned_mask", mask_config=config, progress=False)
    again = attribution.attribute(tiny, forget, method="learned_mask", mask_config=config, progress=False)
    assert torch.equal(first.neurons, again.neurons) and torch.equal(first.heads, again.heads)
    if kind == "hard_concrete":  # another seed, other noise, other scores
        other = attribution.attribute(
            tiny, forget, method="learned_mask", mask_config=LearnedMaskConfig(seed=1, **FAST), progress=False
        )
        assert not torch.equal(first.neurons, other.neurons)
    after = weights_of(tiny)
    assert before.keys() == after.keys()
    for name, (value, flag, grad) in before.items():
        assert torch.equal(value, after[name][0]), name  # bit-identical
        assert flag == after[name][1], name
        assert grad is None and after[name][2] is None, name
    assert tiny.training == training


def test_scores_and_metadata(tiny, sets):
    forget, retain = sets
    config = LearnedMaskConfig(objective="remove", retain_weight=0.5, **FAST)
    scores = attribution.attribute(
        tiny, forget, method="learned_mask", mask_config=config, retain=retain, components="neurons", progress=False
    )
    assert scores.heads is None
    importance = scores.importance("neurons")
    assert ((importance > 0) & (importance < 1)).all()  # 1 - sigmoid(log_alpha)
    meta = scores.metadata
    assert (meta.method, meta.baseline, meta.direction) == ("learned_mask", "zero", "ablate")
    assert meta.options["mask_config"] == config.to_dict()
    assert meta.options["retain"] == {"name": retain.name, "n_facts": len(retain)}
    training = meta.options["training"]
    assert training["last_step"]["loss"] < training["first_step"]["loss"]
    assert training["retain_metric_masked"] is not None


@pytest.mark.parametrize(
    ("config", "bound"),
    [
        # keep: 60 steps close a third of the gates (measured 0.63 open), the facts stay known (-0.017)
        (LearnedMaskConfig(steps=60), "keep"),
        (LearnedMaskConfig(kind="slimming", steps=60), "keep"),
        # remove: the deterministic mask takes the facts from -0.012 to -7.0 (Hard Concrete,
        # 150 steps) and -5.2 (Slimming, 60 steps)
        (LearnedMaskConfig(objective="remove", steps=150), "remove"),
        (LearnedMaskConfig(kind="slimming", objective="remove", steps=60), "remove"),
    ],
    ids=["hard_concrete-keep", "slimming-keep", "hard_concrete-remove", "slimming-remove"],
)
def test_masks_do_what_their_objective_says_on_the_testbed(model, tiny_testbed, config, bound):
    """On the tiny testbed (facts the model is sure of), each objective's final deterministic
    mask keeps or removes the facts."""
    facts = KnowledgeSet(tiny_testbed.forget.facts[:10], name="forget10")
    scores = attribution.attribute(model, facts, method="learned_mask", mask_config=config, progress=False)
    training = scores.metadata.options["training"]
    clean, masked = scores.metadata.clean_metric, training["forget_metric_masked"]
    assert training["last_step"]["loss"] < training["first_step"]["loss"]
    if bound == "keep":
        assert masked > clean - 0.1, (clean, masked)
        assert training["gates_full"] < 0.5  # most gates were closed at least partly
    else:
        assert masked < clean - 1.0, (clean, masked)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(mask_config=dict(steps=3)), r"mask_config must be an attribution.LearnedMaskConfig\(...\)"),
        (dict(mask_config=LearnedMaskConfig(objective="remove", retain_weight=1.0)), "needs the retain facts"),
        (dict(retain=birth_facts(2)), "retain is only read with mask_config.retain_weight > 0"),
        (dict(retain=[1, 2]), "retain must be a KnowledgeSet"),
        (dict(seed=3), r"LearnedMaskConfig\(seed=...\)"),
        (dict(baseline="corrupt"), "starts from zero ablation"),
        (dict(steps=4), "steps is read by method='integrated_gradients' only"),
        (dict(chunk_size=4), "chunk_size is read by"),
        (dict(samples=3), "samples must be 1"),
    ],
)
def test_bad_options(tiny, sets, options, message):
    with pytest.raises(UsageError, match=message):
        attribution.attribute(tiny, sets[0], method="learned_mask", progress=False, **options)


def test_not_under_torch_distributed(tiny, sets, monkeypatch):
    monkeypatch.setattr(distributed, "active", lambda: True)
    with pytest.raises(UsageError, match="does not run under torch.distributed"):
        attribution.attribute(tiny, sets[0], method="learned_mask", progress=False)


def test_the_log_odds_remove_term_is_minus_log_one_minus_p():
    p = torch.tensor([1e-6, 0.1, 0.5, 0.9, 1 - 1e-6], dtype=torch.float64)
    log_odds = torch.log(p) - torch.log1p(-p)
    term = forget_term(log_odds, "remove", "log_odds")
    assert torch.allclose(term, -torch.log1p(-p), rtol=1e-9)
    assert torch.equal(forget_term(log_odds, "keep", "log_odds"), -log_odds)
