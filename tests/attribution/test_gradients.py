"""Gradient x activation / attribution patching against exact patching on the tiny testbed.

Validation numbers (rank agreement with exact patching, top-1% overlap) are attached to the test
report with ``record_property`` and asserted where the issue sets a bar (Spearman >= 0.8 for
heads and for the top neurons).

The tiny testbed's model is sure of its forget facts (log-probability about -0.01), the regime
where a first-order estimate of *ablating* is poor: the log-probability is saturated, so its
gradient at the clean run is small whatever removing a component would do (Spearman with exact
zero-ablation is negative for heads there). The estimates asserted here are the ones that work
in that regime: attribution patching in the denoising direction (the gradient is taken on the
corrupted run, where the answer is unlikely and the metric is far from saturation), with both
corruptions.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr
from transformer_lens.model_bridge import TransformerBridge

import attribution
from attribution import Corruption
from loka.base.components import hook_name
from loka.data import KnowledgeSet
from loka.testbed import Testbed

TOP_NEURONS = 0.05  # "the top neurons": the top 5% by exact patching
TOP_OVERLAP = 0.01


@pytest.fixture(scope="module")
def facts(tiny_testbed: Testbed) -> KnowledgeSet:
    return KnowledgeSet(tiny_testbed.forget.facts[:15], name="forget15")


def agreement(estimate: attribution.AttributionScores, exact: attribution.AttributionScores) -> dict[str, float]:
    """Spearman for heads, for the top neurons (by exact importance), and top-1% overlap."""
    heads = spearmanr(estimate.heads.flatten(), exact.heads.flatten()).statistic
    importance = exact.importance("neurons").flatten()
    n_top = int(TOP_NEURONS * importance.numel())
    top = importance.argsort(descending=True)[:n_top]
    neurons = spearmanr(estimate.neurons.flatten()[top], exact.neurons.flatten()[top]).statistic
    k = max(1, int(TOP_OVERLAP * importance.numel()))
    ours = set(estimate.importance("neurons").flatten().argsort(descending=True)[:k].tolist())
    theirs = set(importance.argsort(descending=True)[:k].tolist())
    return {"heads": float(heads), "top_neurons": float(neurons), "top1pct_overlap": len(ours & theirs) / k}


@pytest.mark.parametrize(
    "corruption",
    [Corruption("subject"), pytest.param(Corruption("noise", samples=8), marks=pytest.mark.slow)],
    ids=["subject", "noise"],
)
def test_attribution_patching_ranks_like_exact_patching(model, tiny_testbed, facts, pool, corruption, record_property):
    """Noise is one random draw per sample: with 15 facts and 3 samples, one draw on a model of
    another seed ranked the 8 heads at Spearman 0.79; with all forget facts and 8 samples both
    Spearmans were >= 0.92 and the top-1% overlap >= 0.8 on seeds 0 and 1, three noise draws
    each (subject corruption, 15 facts: Spearmans >= 0.96, overlap 1.0)."""
    if corruption.kind == "noise":
        facts = tiny_testbed.forget
    options = dict(
        baseline="corrupt",
        corruption=corruption,
        direction="denoise",
        donors=pool if corruption.kind == "subject" else None,
        progress=False,
    )
    estimate = attribution.attribute(model, facts, method="grad_x_act", **options)
    exact = attribution.attribute(model, facts, method="activation_patching", **options)
    numbers = agreement(estimate, exact)
    for name, value in numbers.items():
        record_property(f"{corruption.kind}_{name}", round(value, 3))
    assert numbers["heads"] >= 0.8, numbers
    assert numbers["top_neurons"] >= 0.8, numbers
    assert numbers["top1pct_overlap"] >= 0.5, numbers
    assert estimate.metadata.base_metric == pytest.approx(exact.metadata.base_metric, abs=1e-4)


@pytest.mark.parametrize(("kind", "noise_scale"), [("heads", 0.003), ("neurons", 0.01)])
def test_the_estimate_is_the_derivative_of_exact_patching(model, facts, kind, noise_scale):
    """For a corruption small enough that the metric is linear over it, grad x act equals exact
    patching (to first order: within a few percent of the largest effect).

    Each kind at its own step: the heads' error is curvature, which shrinks with the step (at
    0.01 it was 2-7% of the largest effect, at 0.003 at most 1%, on seeds 0 and 1); a neuron's
    effect is ~1e-6, where float32 rounding of the log-probabilities grows as the step shrinks
    (at most 2% at 0.01, up to 6% at 0.003)."""
    small = Corruption("noise", samples=1, noise_scale=noise_scale)
    few = KnowledgeSet(facts.facts[:5])
    options = dict(baseline="corrupt", corruption=small, direction="ablate", components=kind, progress=False)
    estimate = attribution.attribute(model, few, **options)
    exact = attribution.attribute(model, few, method="activation_patching", **options)
    largest = exact.of(kind).abs().max()
    assert largest > 0
    assert (estimate.of(kind) - exact.of(kind)).abs().max() < 0.05 * largest


def count_passes(model: TransformerBridge):
    """Hooks (added by the test, around the call) that count forward and backward passes."""
    counts = {"fwd": 0, "bwd": 0}

    def forward(activation, hook):
        counts["fwd"] += 1

    def backward(grad, hook):
        counts["bwd"] += 1

    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    return counts, model.hooks(fwd_hooks=[("hook_embed", forward)], bwd_hooks=[(last, backward)])


@pytest.mark.parametrize(
    ("options", "forwards"),
    [
        ({"baseline": "zero"}, 1),
        ({"baseline": "resample"}, 2),
        ({"baseline": "corrupt", "corruption": "noise", "direction": "ablate"}, 2),
        ({"baseline": "corrupt", "corruption": "noise", "direction": "denoise"}, 2),
    ],
    ids=["zero", "resample", "corrupt", "denoise"],
)
def test_at_most_two_forwards_and_one_backward_per_batch(model, facts, options, forwards):
    counts, hooks = count_passes(model)
    with hooks:
        scores = attribution.attribute(model, facts, batch_size=4, progress=False, **options)
    n_batches = 4  # 15 facts in batches of 4
    assert counts == {"fwd": forwards * n_batches, "bwd": n_batches}
    assert scores.neurons.shape == (model.cfg.n_layers, model.cfg.d_mlp)
    assert scores.heads.shape == (model.cfg.n_layers, model.cfg.n_heads)


def test_grad_x_act_equals_a_direct_autograd_computation_at_each_position_set(model, facts):
    """Zero baseline: score = sum over the chosen positions of -a * dM/da, averaged over facts,
    computed here directly from the bridge's hooks and autograd."""
    batch = facts.encode(model)
    n_layers = model.cfg.n_layers
    names = [hook_name(kind, layer) for kind in ("neuron", "head") for layer in range(n_layers)]
    acts = {}

    def keep(name):
        def hook(activation, hook):
            acts[name] = activation
            return activation

        return name, hook

    with model.hooks(fwd_hooks=[keep(name) for name in names]):
        value = batch.target_log_probs(model(batch.input_ids, attention_mask=batch.attention_mask)).sum()
    grads = dict(zip(names, torch.autograd.grad(value, [acts[n] for n in names]), strict=True))
    masks = {
        "all": batch.attention_mask.bool(),
        "last": torch.nn.functional.one_hot(batch.answer_positions, batch.input_ids.shape[1]).bool(),
        "subject": batch.subject_mask,
    }
    for positions, mask in masks.items():
        scores = attribution.attribute(
            model, facts, baseline="zero", direction="ablate", positions=positions, batch_size=6, progress=False
        )
        per_position = {n: (-acts[n] * grads[n]).detach() for n in names}
        neurons = torch.stack([(per_position[n] * mask[..., None]).sum((0, 1)) for n in names[:n_layers]])
        heads = torch.stack([(per_position[n] * mask[..., None, None]).sum((0, 1, 3)) for n in names[n_layers:]])
        assert torch.allclose(scores.neurons, neurons / len(facts), atol=1e-6), positions
        assert torch.allclose(scores.heads, heads / len(facts), atol=1e-6), positions
        assert scores.metadata.positions == positions
