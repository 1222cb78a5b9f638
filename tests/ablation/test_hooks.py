"""ablation.hooks: reversible ablation through TransformerLens hooks, mean activations, resampling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM

from ablation import AblationMask, ablate, mean_activations
from loka.base.errors import UsageError
from loka.data import KnowledgeSet
from loka.models import load_model, logits
from tests.checkpoints import D_MLP, N_HEADS, N_LAYERS, VOCAB_SIZE, build_tiny_checkpoint

COMPONENTS = [("neuron", 0, 5), ("neuron", 1, 20), ("neuron", 1, 63), ("head", 0, 1), ("head", 1, 2)]


@pytest.fixture(scope="module")
def ids() -> Tensor:
    return torch.randint(0, VOCAB_SIZE, (3, 9), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def other_ids() -> Tensor:
    return torch.randint(0, VOCAB_SIZE, (3, 9), generator=torch.Generator().manual_seed(1))


def run(model: TransformerBridge, ids: Tensor) -> Tensor:
    with torch.no_grad():
        return logits(model, ids)


def no_hooks_left(model: TransformerBridge) -> bool:
    return not any(hp.has_hooks() for hp in model.hook_points())


def reference_zero_ablation(model: TransformerBridge, ids: Tensor) -> Tensor:
    """Zero-ablate COMPONENTS by hand (clone, assign), independently of ablation.hooks."""
    by_hook: dict[str, list[int]] = {}
    for kind, layer, index in COMPONENTS:
        name = f"blocks.{layer}.mlp.hook_post" if kind == "neuron" else f"blocks.{layer}.attn.hook_z"
        by_hook.setdefault(name, []).append(index)

    def make(indices: list[int]):  # noqa: ANN202
        def hook(activation: Tensor, hook: object) -> Tensor:
            activation = activation.clone()
            if activation.dim() == 3:  # hook_post [batch, pos, d_mlp]
                activation[:, :, indices] = 0.0
            else:  # hook_z [batch, pos, n_heads, d_head]
                activation[:, :, indices, :] = 0.0
            return activation

        return hook

    with torch.no_grad():
        return model.run_with_hooks(ids, return_type="logits", fwd_hooks=[(n, make(i)) for n, i in by_hook.items()])


def test_zero_ablation_matches_a_hand_written_hook_and_is_undone(model: TransformerBridge, ids: Tensor) -> None:
    before = run(model, ids)
    mask = AblationMask.from_components(COMPONENTS, model=model)
    with ablate(model, mask) as ablated:
        assert ablated is model
        inside = run(model, ids)
    after = run(model, ids)
    assert (inside - before).abs().max() > 1e-2  # the ablation does something
    torch.testing.assert_close(inside, reference_zero_ablation(model, ids), atol=1e-6, rtol=0)
    assert torch.equal(after, before)  # bit-identical after exit
    assert no_hooks_left(model)


def test_hooks_are_removed_when_the_block_raises(model: TransformerBridge, ids: Tensor) -> None:
    before = run(model, ids)
    mask = AblationMask.from_components(COMPONENTS, model=model)
    with pytest.raises(RuntimeError, match="boom"), ablate(model, mask):
        run(model, ids)
        raise RuntimeError("boom")
    assert no_hooks_left(model)
    assert torch.equal(run(model, ids), before)


def test_callers_own_hooks_survive(model: TransformerBridge, ids: Tensor) -> None:
    calls: list[int] = []
    model.add_hook("blocks.0.mlp.hook_post", lambda act, hook: calls.append(1))
    try:
        with ablate(model, AblationMask.from_components(COMPONENTS, model=model)):
            run(model, ids)
        run(model, ids)
        assert len(calls) == 2
    finally:
        model.reset_hooks()
    assert no_hooks_left(model)


def test_nested_masks_compose_like_their_union(model: TransformerBridge, ids: Tensor) -> None:
    a = AblationMask.from_components(COMPONENTS[:2], model=model)
    b = AblationMask.from_components(COMPONENTS[2:], model=model)
    with ablate(model, a), ablate(model, b):
        nested = run(model, ids)
    with ablate(model, a | b):
        union = run(model, ids)
    assert torch.equal(nested, union)
    assert no_hooks_left(model)


def test_mean_ablation_sets_activations_to_the_stored_means(model: TransformerBridge, ids: Tensor) -> None:
    means = mean_activations(model, ids)
    mask = AblationMask.from_components(COMPONENTS, model=model, mode="mean", means=means)
    with ablate(model, mask), torch.no_grad():
        _, cache = model.run_with_cache(ids)
    post0, z1 = cache["blocks.0.mlp.hook_post"], cache["blocks.1.attn.hook_z"]
    assert torch.equal(post0[..., 5], means.neurons[0, 5].expand(3, 9))
    assert torch.equal(z1[:, :, 2, :], means.heads[1, 2].expand(3, 9, -1))
    only = AblationMask.from_components(["L0N5"], model=model, mode="mean", means=means)
    with ablate(model, only), torch.no_grad():
        _, one = model.run_with_cache(ids)
    with torch.no_grad():
        _, clean = model.run_with_cache(ids)
    keep = [i for i in range(D_MLP) if i != 5]  # the other neurons of the layer are untouched
    assert torch.equal(one["blocks.0.mlp.hook_post"][..., keep], clean["blocks.0.mlp.hook_post"][..., keep])


def test_scale_one_changes_nothing_and_scale_zero_is_zero_ablation(model: TransformerBridge, ids: Tensor) -> None:
    zero = AblationMask.from_components(COMPONENTS, model=model)
    with ablate(model, zero.with_mode("scale", scale=1.0)):
        untouched = run(model, ids)
    with ablate(model, zero.with_mode("scale", scale=0.0)):
        scaled_to_zero = run(model, ids)
    with ablate(model, zero):
        zeroed = run(model, ids)
    assert torch.equal(untouched, run(model, ids))
    assert torch.equal(scaled_to_zero, zeroed)
    with ablate(model, zero.with_mode("scale", scale=2.0)):
        assert (run(model, ids) - untouched).abs().max() > 1e-2


def test_resample_copies_activations_from_the_other_inputs(
    model: TransformerBridge, ids: Tensor, other_ids: Tensor
) -> None:
    mask = AblationMask.from_components(COMPONENTS, model=model, mode="resample")
    with ablate(model, mask, resample_from=ids):  # resampling from the same inputs is a no-op
        assert torch.equal(run(model, ids), run_clean(model, ids))
    with torch.no_grad():
        _, source = model.run_with_cache(other_ids)
    with ablate(model, mask, resample_from=other_ids), torch.no_grad():
        out, cache = model.run_with_cache(ids)
    assert torch.equal(cache["blocks.1.attn.hook_z"][:, :, 2], source["blocks.1.attn.hook_z"][:, :, 2])
    assert torch.equal(cache["blocks.0.mlp.hook_post"][..., 5], source["blocks.0.mlp.hook_post"][..., 5])
    assert (out - run(model, ids)).abs().max() > 1e-3
    assert no_hooks_left(model)


def run_clean(model: TransformerBridge, ids: Tensor) -> Tensor:
    with model.hooks(fwd_hooks=[]):
        return run(model, ids)


def test_resample_needs_inputs_of_the_same_shape(model: TransformerBridge, ids: Tensor) -> None:
    mask = AblationMask.from_components(COMPONENTS, model=model, mode="resample")
    with pytest.raises(
        ValueError, match="mode 'resample' replaces activations with those of other inputs: pass resample_from"
    ):
        with ablate(model, mask):
            pass
    with pytest.raises(ValueError, match=r"running on \[batch, pos\] = \[3, 9\] but resample_from has \[2, 9\]"):
        with ablate(model, mask, resample_from=ids[:2]):
            run(model, ids)
    zero = AblationMask.from_components(COMPONENTS, model=model)
    with pytest.raises(ValueError, match="resample_from is only used by mode='resample' masks"):
        with ablate(model, zero, resample_from=ids):
            pass
    assert no_hooks_left(model)


def test_ablate_refuses_a_mask_for_another_model(model: TransformerBridge, tmp_path: Path, ids: Tensor) -> None:
    arch = model.original_model.config.model_type
    other = load_model(build_tiny_checkpoint(arch, tmp_path / "other", seed=1))
    mask = AblationMask.from_components(COMPONENTS, model=other)
    with pytest.raises(ValueError, match="this mask was made for another model: weights_sha256"):
        with ablate(model, mask):
            pass
    assert no_hooks_left(model)


def test_ablate_needs_a_bridge(checkpoint: Path, model: TransformerBridge) -> None:
    hf = AutoModelForCausalLM.from_pretrained(checkpoint)
    with pytest.raises(UsageError, match="needs a TransformerBridge"):
        with ablate(hf, AblationMask.from_components(COMPONENTS, model=model)):  # type: ignore[arg-type]
            pass


def test_mean_activations_average_real_tokens_only(model: TransformerBridge, ids: Tensor) -> None:
    attention = torch.ones_like(ids)
    attention[0, :4] = 0  # left padding in row 0
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    means = mean_activations(model, ids, attention_mask=attention, position_ids=positions, batch_size=2)
    assert means.neurons.shape == (N_LAYERS, D_MLP) and means.heads.shape == (N_LAYERS, N_HEADS, model.cfg.d_head)
    assert means.n_tokens == int(attention.sum())
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, attention_mask=attention, position_ids=positions)
    real = attention.bool()
    for layer in range(N_LAYERS):
        expected = cache[f"blocks.{layer}.mlp.hook_post"][real].mean(0)
        torch.testing.assert_close(means.neurons[layer], expected, atol=1e-5, rtol=1e-5)
        expected_z = cache[f"blocks.{layer}.attn.hook_z"][real].mean(0)
        torch.testing.assert_close(means.heads[layer], expected_z, atol=1e-5, rtol=1e-5)
    assert no_hooks_left(model)
    with pytest.raises(ValueError, match="no real tokens"):
        mean_activations(model, ids, attention_mask=torch.zeros_like(ids))


def test_mean_activations_accept_a_fact_batch(model: TransformerBridge) -> None:
    facts = KnowledgeSet.from_records(
        [
            {"prompt": "Marie Curie was born in", "target": "Warsaw"},
            {"prompt": "The capital of France is", "target": "Paris"},
        ]
    )
    batch = facts.encode(model, padding_side="left")
    from_batch = mean_activations(model, batch)
    by_hand = mean_activations(
        model, batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
    )
    assert from_batch.n_tokens == int(batch.attention_mask.sum()) < batch.input_ids.numel()
    assert torch.equal(from_batch.neurons, by_hand.neurons) and torch.equal(from_batch.heads, by_hand.heads)
