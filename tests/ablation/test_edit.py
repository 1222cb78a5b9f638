"""ablation.edit: localized fine-tuning of only the masked components' weights (gradient masking)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from ablation import AblationMask, bake, edit, mean_activations
from ablation.params import parameter_masks
from loka.models import (
    WeightSlice,
    fingerprint,
    head_input_weights,
    hf_state_dict,
    load_model,
    logits,
    neuron_input_weights,
    plain_copy,
    same_kind_as,
)
from tests.checkpoints import ARCHITECTURES, D_MLP, N_HEADS, VOCAB_SIZE, build_tiny_checkpoint

COMPONENTS = [("neuron", 0, 3), ("neuron", 1, 40), ("head", 1, 0), ("head", 1, 1), ("head", 0, 2)]
# per architecture: the HF parameters that hold weights of COMPONENTS (GQA: L1H0 + L1H1 form a whole group)
OWNED = {
    "gpt2": {
        "transformer.h.{l}.mlp.c_fc.weight": (0, 1),
        "transformer.h.{l}.mlp.c_fc.bias": (0, 1),
        "transformer.h.{l}.mlp.c_proj.weight": (0, 1),
        "transformer.h.{l}.attn.c_attn.weight": (0, 1),
        "transformer.h.{l}.attn.c_attn.bias": (0, 1),
        "transformer.h.{l}.attn.c_proj.weight": (0, 1),
    },
    "gpt_neox": {
        "gpt_neox.layers.{l}.mlp.dense_h_to_4h.weight": (0, 1),
        "gpt_neox.layers.{l}.mlp.dense_h_to_4h.bias": (0, 1),
        "gpt_neox.layers.{l}.mlp.dense_4h_to_h.weight": (0, 1),
        "gpt_neox.layers.{l}.attention.query_key_value.weight": (0, 1),
        "gpt_neox.layers.{l}.attention.query_key_value.bias": (0, 1),
        "gpt_neox.layers.{l}.attention.dense.weight": (0, 1),
    },
    "llama": {
        "model.layers.{l}.mlp.gate_proj.weight": (0, 1),
        "model.layers.{l}.mlp.up_proj.weight": (0, 1),
        "model.layers.{l}.mlp.down_proj.weight": (0, 1),
        "model.layers.{l}.self_attn.q_proj.weight": (0, 1),
        "model.layers.{l}.self_attn.k_proj.weight": (1,),  # layer 0: only L0H2 of its group is masked
        "model.layers.{l}.self_attn.v_proj.weight": (1,),
        "model.layers.{l}.self_attn.o_proj.weight": (0, 1),
    },
}


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(arch: str, tmp_path_factory: pytest.TempPathFactory) -> TransformerBridge:
    return load_model(build_tiny_checkpoint(arch, tmp_path_factory.mktemp(arch)))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ids() -> Tensor:
    return torch.randint(0, VOCAB_SIZE, (4, 8), generator=torch.Generator().manual_seed(0))


def cross_entropy_to(target: Tensor, ids: Tensor):  # noqa: ANN201
    def objective(m: object) -> Tensor:
        out = logits(m, ids)  # type: ignore[arg-type]
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))

    return objective


@pytest.fixture(scope="module")
def edited(model: TransformerBridge, ids: Tensor) -> tuple[TransformerBridge, list[float], AblationMask]:
    mask = AblationMask.from_components(COMPONENTS, model=model)
    target = torch.randint(0, VOCAB_SIZE, ids.shape, generator=torch.Generator().manual_seed(1))
    losses: list[float] = []
    out = edit(
        model, mask, cross_entropy_to(target, ids), steps=15, lr=1e-2, on_step=lambda s, loss: losses.append(loss)
    )
    return out, losses, mask


def test_edit_lowers_the_objective_and_returns_a_new_bridge(model: TransformerBridge, edited) -> None:  # noqa: ANN001
    out, losses, _ = edited
    assert isinstance(out, TransformerBridge) and out is not model
    assert len(losses) == 15 and losses[-1] < losses[0] - 0.5


def test_everything_outside_the_mask_is_bit_identical(model: TransformerBridge, edited, arch: str) -> None:  # noqa: ANN001
    out, _, mask = edited
    before, after = hf_state_dict(model), hf_state_dict(out)
    assert before.keys() == after.keys()
    allowed = parameter_masks(model, mask.neurons, mask.heads)
    expected_names = {t.format(l=layer) for t, layers in OWNED[arch].items() for layer in layers}
    assert set(allowed) == expected_names
    for name, tensor in before.items():
        keep = allowed.get(name, torch.zeros_like(tensor, dtype=torch.bool))
        assert torch.equal(after[name][~keep], tensor[~keep]), name
    changed = {name for name in allowed if not torch.equal(after[name], before[name])}
    assert changed == expected_names  # every owned parameter was trained


def test_the_input_model_is_untouched(model: TransformerBridge, edited, tmp_path: Path, arch: str) -> None:  # noqa: ANN001
    fresh = load_model(build_tiny_checkpoint(arch, tmp_path / "fresh"))  # type: ignore[arg-type]
    assert fingerprint(model) == fingerprint(fresh)


def test_edited_bridge_runs_its_own_weights(edited, ids: Tensor) -> None:  # noqa: ANN001
    """The returned bridge computes with the edited weights (also NeoX's split query/key/value)."""
    out, _, _ = edited
    plain = plain_copy(out)
    with torch.no_grad():
        torch.testing.assert_close(logits(out, ids), logits(plain, ids), atol=1e-5, rtol=0)


def _perturbed(model: TransformerBridge, slices: tuple[WeightSlice, ...]) -> TransformerBridge:
    copy = plain_copy(model)
    with torch.no_grad():
        for piece in slices:
            view = piece.of(copy)
            view.add_(torch.randn(view.shape, generator=torch.Generator().manual_seed(0)))
    return same_kind_as(copy, model)


def _changed_heads(a: TransformerBridge, b: TransformerBridge, ids: Tensor, layer: int) -> list[int]:
    with torch.no_grad():
        _, ca = a.run_with_cache(ids)
        _, cb = b.run_with_cache(ids)
    za, zb = ca[f"blocks.{layer}.attn.hook_z"], cb[f"blocks.{layer}.attn.hook_z"]
    return [h for h in range(N_HEADS) if not torch.equal(za[:, :, h], zb[:, :, h])]


def test_head_input_slices_feed_only_that_head(model: TransformerBridge, ids: Tensor, arch: str) -> None:
    assert _changed_heads(model, _perturbed(model, head_input_weights(model, 1, 2)), ids, 1) == [2]
    whole_group = head_input_weights(model, 1, 2, masked_heads=[2, 3])
    expected = [2, 3] if arch == "llama" else [2]  # Llama: heads 2 and 3 share a key/value head
    assert _changed_heads(model, _perturbed(model, whole_group), ids, 1) == expected


def test_neuron_input_slices_feed_only_that_neuron(model: TransformerBridge, ids: Tensor) -> None:
    perturbed = _perturbed(model, neuron_input_weights(model, 0, 7))
    with torch.no_grad():
        _, ca = model.run_with_cache(ids)
        _, cb = perturbed.run_with_cache(ids)
    a, b = ca["blocks.0.mlp.hook_post"], cb["blocks.0.mlp.hook_post"]
    assert [i for i in range(D_MLP) if not torch.equal(a[..., i], b[..., i])] == [7]


def test_edit_bad_inputs(model: TransformerBridge, ids: Tensor) -> None:
    target = torch.zeros_like(ids)
    objective = cross_entropy_to(target, ids)
    empty = AblationMask.from_components([], model=model)
    with pytest.raises(ValueError, match="edit needs at least one masked component to train, but the mask is empty"):
        edit(model, empty, objective)
    mask = AblationMask.from_components(COMPONENTS[:1], model=model)
    with pytest.raises(ValueError, match="objective must return a scalar loss tensor .* got float"):
        edit(model, mask, lambda m: 1.0, steps=1)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match=r"got a tensor of shape \[4, 8, 300\]"):
        edit(model, mask, lambda m: logits(m, ids), steps=1)
    with pytest.raises(ValueError, match=r"non-finite loss \(nan\) at step 0"):
        edit(model, mask, lambda m: objective(m) * float("nan"), steps=1)
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamw'; use one of \('adam', 'sgd'\)"):
        edit(model, mask, objective, optimizer="adamw")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps must be an integer at least 1, got 0"):
        edit(model, mask, objective, steps=0)


def test_on_step_can_stop_early_and_sgd_works(model: TransformerBridge, ids: Tensor) -> None:
    mask = AblationMask.from_components(COMPONENTS[:2], model=model)
    steps: list[int] = []
    out = edit(
        model,
        mask,
        cross_entropy_to(torch.zeros_like(ids), ids),
        steps=50,
        optimizer="sgd",
        lr=0.1,
        on_step=lambda step, loss: steps.append(step) or step == 2,
    )
    assert steps == [0, 1, 2]
    assert fingerprint(out) != fingerprint(model)


def test_switched_on_llama_biases_belong_to_their_components(tmp_path: Path, ids: Tensor) -> None:
    llama = load_model(build_tiny_checkpoint("llama", tmp_path / "llama"))
    mask = AblationMask.from_components(["L0N3", "L1H0"], model=llama, mode="mean", means=mean_activations(llama, ids))
    with_biases = bake(llama, mask, missing_bias="add")
    owned = parameter_masks(with_biases, mask.neurons, mask.heads)
    assert owned["model.layers.0.mlp.gate_proj.bias"].nonzero().flatten().tolist() == [3]
    assert owned["model.layers.0.mlp.up_proj.bias"].nonzero().flatten().tolist() == [3]
    assert owned["model.layers.1.self_attn.q_proj.bias"].nonzero().flatten().tolist() == list(range(8))
    assert "model.layers.0.mlp.down_proj.bias" not in owned  # shared by the whole layer
