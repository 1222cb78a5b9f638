"""Exact activation patching equals TransformerLens's own patching functions on the tiny testbed.

TL's ``get_act_patch_*`` run one forward per component on ``corrupted_tokens`` and patch in the
activation from ``clean_cache``; loka batches the patches. Each test feeds TL the same inputs
and the same metric (mean over rows of the summed target log-probability) and compares
``TL - metric(unpatched run)`` with loka's effects. TL's functions accept a TransformerBridge
directly (their model parameter is the ``TransformerLensModel`` protocol), so no stand-in is
needed. For the *ablation* direction the roles swap: TL runs the clean tokens and patches from
the baseline's cache.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from transformer_lens import patching
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.model_bridge import TransformerBridge

import attribution
from attribution import Corruption, corrupted_run
from attribution.positions import position_classes
from loka.data import KnowledgeSet
from loka.models import fingerprint, load_model
from loka.testbed import Testbed

TOL = 1e-4


@pytest.fixture(scope="module")
def facts(tiny_testbed: Testbed) -> KnowledgeSet:
    """Ten forget facts (two people x five relations), of several lengths."""
    return KnowledgeSet(tiny_testbed.forget.facts[:10], name="forget10")


def log_prob_metric(knowledge: KnowledgeSet, model: TransformerBridge, repeats: int = 1):
    """The facts' batch, and TL's view of the metric: mean over rows of log p(target | prompt),
    for logits of ``repeats`` stacked copies of the batch."""
    batch = knowledge.encode(model)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        copies = logits.chunk(repeats)
        return torch.cat([batch.target_log_probs(copy).sum(-1) for copy in copies]).mean()

    return batch, metric


def cache_of(model: TransformerBridge, tokens: torch.Tensor) -> tuple[torch.Tensor, ActivationCache]:
    with torch.no_grad():
        return model.run_with_cache(tokens)


def attribute_heads(model, facts, **options):
    return attribution.attribute(
        model, facts, method="activation_patching", components="heads", progress=False, **options
    )


def test_heads_zero_ablation_equals_tl(model, facts):
    batch, metric = log_prob_metric(facts, model)
    logits, cache = cache_of(model, batch.input_ids)
    zeros = ActivationCache({k: torch.zeros_like(v) for k, v in cache.items() if k.endswith("attn.hook_z")}, model)
    tl = patching.get_act_patch_attn_head_out_all_pos(model, batch.input_ids, zeros, metric) - metric(logits)

    ours = attribute_heads(model, facts, baseline="zero", direction="ablate", batch_size=4, chunk_size=3)
    assert ours.heads is not None and ours.neurons is None
    assert (ours.heads - tl).abs().max() < TOL
    assert ours.heads.abs().max() > 0.01  # the comparison is not between two zeros
    assert ours.metadata.clean_metric == pytest.approx(metric(logits).item(), abs=1e-5)


def test_heads_subject_corruption_both_directions_equal_tl(model, facts, pool):
    batch, metric = log_prob_metric(facts, model)
    corrupt = corrupted_run(model, facts, "subject", donors=pool)
    assert corrupt.input_ids.shape == batch.input_ids.shape
    changed = (corrupt.input_ids != batch.input_ids).any(-1)
    assert changed.all()  # every fact's subject was replaced ...
    assert not (corrupt.input_ids != batch.input_ids)[~batch.subject_mask].any()  # ... and nothing else
    clean_logits, clean_cache = cache_of(model, batch.input_ids)
    corrupt_logits, corrupt_cache = cache_of(model, corrupt.input_ids)
    options = dict(baseline="corrupt", corruption="subject", donors=pool)

    ablate = patching.get_act_patch_attn_head_out_all_pos(model, batch.input_ids, corrupt_cache, metric)
    ours = attribute_heads(model, facts, batch_size=3, direction="ablate", **options)
    assert (ours.heads - (ablate - metric(clean_logits))).abs().max() < TOL

    denoise = patching.get_act_patch_attn_head_out_all_pos(model, corrupt.input_ids, clean_cache, metric)
    ours = attribute_heads(model, facts, batch_size=6, direction="denoise", **options)
    assert (ours.heads - (denoise - metric(corrupt_logits))).abs().max() < TOL
    assert ours.metadata.base_metric == pytest.approx(metric(corrupt_logits).item(), abs=1e-4)
    assert ours.metadata.clean_metric == pytest.approx(metric(clean_logits).item(), abs=1e-4)
    assert ours.heads.max() > 0.1  # restoring some head brings the answer back


def test_heads_noise_denoising_equals_tl_under_the_same_noise(model, facts):
    """ROME's setting: noise on the subject embeddings, several samples, restore one head."""
    corruption = Corruption("noise", samples=2)
    corrupt = corrupted_run(model, facts, corruption, seed=3)
    assert corrupt.embed_noise is not None and corrupt.rows == 2 * len(facts)
    batch, metric = log_prob_metric(facts, model, repeats=2)
    tokens = corrupt.input_ids
    subject = batch.subject_mask.repeat(2, 1)
    assert (corrupt.embed_noise.abs().sum(-1) > 0).eq(subject).all()  # noise on subject tokens only

    def add_noise(embed, hook):
        return embed + corrupt.embed_noise

    _, clean_cache = cache_of(model, tokens)
    with model.hooks(fwd_hooks=[("hook_embed", add_noise)]):
        with torch.no_grad():
            corrupted = metric(model(tokens))
        tl = patching.get_act_patch_attn_head_out_all_pos(model, tokens, clean_cache, metric) - corrupted
    ours = attribute_heads(model, facts, baseline="corrupt", corruption=corruption, direction="denoise", seed=3)
    assert (ours.heads - tl).abs().max() < TOL
    assert ours.metadata.options["corruption"]["samples"] == 2
    assert ours.metadata.options["corruption"]["embedding_std"] > 0


def test_neurons_equal_tl_generic_patching(model, facts, pool):
    """TL has no per-neuron sweep; its generic_activation_patch with an index of
    (layer, neuron) rows and a neuron setter is the reference."""
    batch, metric = log_prob_metric(facts, model)
    corrupt = corrupted_run(model, facts, "subject", donors=pool)
    _, clean_cache = cache_of(model, batch.input_ids)
    corrupt_logits, _ = cache_of(model, corrupt.input_ids)
    generator = torch.Generator().manual_seed(0)
    d_mlp = model.cfg.d_mlp
    chosen = [
        (layer, int(i)) for layer in range(model.cfg.n_layers) for i in torch.randperm(d_mlp, generator=generator)[:12]
    ]
    index = pd.DataFrame(chosen, columns=["layer", "neuron"])

    def set_neuron(corrupted_activation, index, clean_activation):
        _, neuron = index
        corrupted_activation[:, :, neuron] = clean_activation[:, :, neuron]
        return corrupted_activation

    tl = patching.generic_activation_patch(
        model, corrupt.input_ids, clean_cache, metric, set_neuron, "post", index_df=index
    ) - metric(corrupt_logits)
    ours = attribution.patch_components(
        model,
        facts,
        [("neuron", layer, i) for layer, i in chosen],
        baseline="corrupt",
        corruption="subject",
        donors=pool,
        direction="denoise",
        batch_size=4,
        chunk_size=5,
    )
    assert ours.per_fact.shape == (len(chosen), len(facts))
    assert (ours.effects - tl).abs().max() < TOL


def test_resample_patches_in_the_donor_facts_activations(model, pool):
    """Two facts of the same relation and length: each is the other's only donor."""
    by_key: dict[tuple, list] = {}
    lengths = pool.encode(model).attention_mask.sum(-1).tolist()
    for fact, length in zip(pool, lengths, strict=True):
        by_key.setdefault((fact.relation, length), []).append(fact)
    a, b = next(group for group in by_key.values() if len(group) >= 2 and group[0].subject != group[1].subject)[:2]
    pair = KnowledgeSet((a, b), name="pair")
    batch, metric = log_prob_metric(pair, model)
    logits, _ = cache_of(model, batch.input_ids)
    _, swapped = cache_of(model, batch.input_ids[[1, 0]])
    tl = patching.get_act_patch_attn_head_out_all_pos(model, batch.input_ids, swapped, metric) - metric(logits)
    ours = attribute_heads(model, pair, baseline="resample")
    assert (ours.heads - tl).abs().max() < TOL


def test_mean_baseline_uses_per_class_means_of_the_donors(model, facts, pool):
    donors = KnowledgeSet(pool.facts[:40], name="donors")
    hooks = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    sums = {h: 0.0 for h in hooks}
    counts = torch.zeros(9)
    for start in range(0, len(donors), 16):
        ref_batch = KnowledgeSet(donors.facts[start : start + 16]).encode(model)
        _, cache = cache_of(model, ref_batch.input_ids)
        classes = position_classes(ref_batch)
        one_hot = torch.nn.functional.one_hot(classes.clamp(min=0), 9).float() * (classes >= 0)[..., None]
        counts += one_hot.sum((0, 1))
        for h in hooks:
            sums[h] = sums[h] + torch.einsum("bpc,bphd->chd", one_hot, cache[h])
    batch, metric = log_prob_metric(facts, model)
    logits, cache = cache_of(model, batch.input_ids)
    classes = position_classes(batch).clamp(min=0)
    means = {h: (sums[h] / counts.clamp(min=1)[:, None, None])[classes] for h in hooks}
    tl = patching.get_act_patch_attn_head_out_all_pos(model, batch.input_ids, ActivationCache(means, model), metric)
    ours = attribute_heads(model, facts, baseline="mean", donors=donors, batch_size=4)
    assert (ours.heads - (tl - metric(logits))).abs().max() < TOL
    assert ours.metadata.options["donors"] == {"name": "donors", "n_facts": 40}


def test_mean_of_a_fact_itself_at_its_last_token_changes_nothing(model, facts):
    one = KnowledgeSet(facts.facts[:1])
    scores = attribution.attribute(
        model, one, method="activation_patching", baseline="mean", donors=one, positions="last", progress=False
    )
    assert scores.neurons.abs().max() < 1e-6 and scores.heads.abs().max() < 1e-6


def test_last_position_patching_equals_tl_by_position(model, pool):
    """positions='last' patches only the last prompt token: TL's by-position sweep at that
    position, on facts whose last prompt token is at the same position."""
    encoded = pool.encode(model)
    answer = encoded.answer_positions
    common = int(answer.mode().values)
    same = KnowledgeSet(tuple(f for f, a in zip(pool, answer.tolist(), strict=True) if a == common)[:8])
    batch, metric = log_prob_metric(same, model)
    logits, cache = cache_of(model, batch.input_ids)
    zeros = ActivationCache({k: torch.zeros_like(v) for k, v in cache.items() if k.endswith("attn.hook_z")}, model)
    tl = patching.get_act_patch_attn_head_out_by_pos(model, batch.input_ids, zeros, metric)[:, common] - metric(logits)
    ours = attribute_heads(model, same, baseline="zero", direction="ablate", positions="last")
    assert (ours.heads - tl).abs().max() < TOL


def test_results_do_not_depend_on_batching(model, facts):
    """Seeds are per fact, so batch size and chunk size change nothing."""
    options = dict(baseline="corrupt", corruption=Corruption("noise", samples=2), direction="denoise", seed=1)
    a = attribute_heads(model, facts, batch_size=10, **options)
    b = attribute_heads(model, facts, batch_size=3, chunk_size=2, **options)
    assert (a.heads - b.heads).abs().max() < 1e-5


def hooks_on(model: TransformerBridge) -> int:
    return sum(len(point.fwd_hooks) + len(point.bwd_hooks) for point in model.hook_dict.values())


def test_attribution_leaves_the_model_as_it_was(tiny_testbed, facts, monkeypatch):
    model = load_model(tiny_testbed.model_dir)
    before = fingerprint(model)
    flags = [p.requires_grad for p in model.parameters()]
    noise = Corruption("noise", samples=2)
    attribution.attribute(model, facts, baseline="corrupt", corruption=noise, direction="ablate", progress=False)
    attribution.attribute(
        model,
        facts,
        method="activation_patching",
        components="heads",
        baseline="corrupt",
        corruption=noise,
        direction="ablate",
        progress=False,
    )
    assert hooks_on(model) == 0
    assert fingerprint(model) == before
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not model.training
    assert all(p.grad is None for p in model.parameters())

    def fail(self, logits):
        raise RuntimeError("boom")

    monkeypatch.setattr(attribution.metric.Targets, "__call__", fail)  # raises inside the hooked forward
    with pytest.raises(RuntimeError, match="boom"):
        attribution.attribute(
            model, facts, method="activation_patching", components="heads", baseline="zero", progress=False
        )
    assert hooks_on(model) == 0
