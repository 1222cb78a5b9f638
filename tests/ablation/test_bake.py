"""ablation.bake: an edited copy whose weights implement the mask, equal to hook ablation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM

from ablation import AblationMask, ablate, bake, mean_activations
from loka.models import fingerprint, hf_model, hf_state_dict, load_model, logits
from tests.checkpoints import VOCAB_SIZE, build_tiny_checkpoint

COMPONENTS = [("neuron", 0, 5), ("neuron", 0, 6), ("neuron", 1, 63), ("head", 0, 1), ("head", 1, 0), ("head", 1, 3)]
MODES = ("zero", "mean", "scale")
PARITY = 1e-5


@pytest.fixture(scope="module")
def ids() -> Tensor:
    return torch.randint(0, VOCAB_SIZE, (3, 10), generator=torch.Generator().manual_seed(0))


def make_mask(model: TransformerBridge, mode: str, ids: Tensor) -> AblationMask:
    zero = AblationMask.from_components(COMPONENTS, model=model)
    if mode == "mean":
        return zero.with_mode("mean", means=mean_activations(model, ids))
    if mode == "scale":
        factors = torch.linspace(-0.5, 1.5, zero.neurons.numel()).reshape(zero.neurons.shape)
        return AblationMask(
            zero.neurons,
            zero.heads,
            mode="scale",
            neuron_scales=factors,
            head_scales=torch.full(zero.heads.shape, 0.3),
            fingerprint=zero.fingerprint,
        )
    return zero


def hooked(model: TransformerBridge, mask: AblationMask, ids: Tensor) -> Tensor:
    with ablate(model, mask), torch.no_grad():
        return logits(model, ids)


def bake_or_add_bias(model: TransformerBridge, mask: AblationMask) -> TransformerBridge:
    llama_mean = mask.mode == "mean" and model.original_model.config.model_type == "llama"
    return bake(model, mask, missing_bias="add" if llama_mean else "refuse")


@pytest.mark.parametrize("mode", MODES)
def test_baked_copy_equals_hook_ablation(model: TransformerBridge, ids: Tensor, mode: str) -> None:
    mask = make_mask(model, mode, ids)
    before = fingerprint(model)
    clean = logits(model, ids).detach()
    baked = bake_or_add_bias(model, mask)
    assert isinstance(baked, TransformerBridge) and baked is not model
    expected = hooked(model, mask, ids)
    with torch.no_grad():
        actual = logits(baked, ids)
    assert (expected - clean).abs().max() > 1e-2  # the mask does something
    torch.testing.assert_close(actual, expected, atol=PARITY, rtol=0)
    assert fingerprint(model) == before  # the input is untouched
    assert torch.equal(logits(model, ids).detach(), clean)
    assert not any(hp.has_hooks() for hp in baked.hook_points())


def test_zero_bake_changes_only_the_output_slices(model: TransformerBridge, ids: Tensor) -> None:
    mask = make_mask(model, "zero", ids)
    original, baked = hf_state_dict(model), hf_state_dict(bake(model, mask))
    changed = {name for name in original if not torch.equal(original[name], baked[name])}
    spec = {
        "gpt2": ("mlp.c_proj.weight", "attn.c_proj.weight"),
        "gpt_neox": ("dense_4h_to_h.weight", "attention.dense.weight"),
        "llama": ("down_proj.weight", "o_proj.weight"),
    }
    suffixes = spec[model.original_model.config.model_type]
    assert changed and all(name.endswith(suffixes) for name in changed)
    assert original.keys() == baked.keys()


def test_baked_copy_can_be_ablated_and_baked_again(model: TransformerBridge, ids: Tensor) -> None:
    first = AblationMask.from_components(COMPONENTS[:3], model=model)
    second = AblationMask.from_components(COMPONENTS[3:], model=model)
    once = bake(model, first)
    twice = bake(once, AblationMask(second.neurons, second.heads))  # the copy has new weights: no fingerprint
    torch.testing.assert_close(logits(twice, ids).detach(), hooked(model, first | second, ids), atol=PARITY, rtol=0)


def test_bake_accepts_a_plain_hf_model(checkpoint: Path, model: TransformerBridge, ids: Tensor) -> None:
    hf = AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="eager").eval()
    mask = make_mask(model, "scale", ids)
    baked = bake(hf, mask)
    assert type(baked) is type(hf) and baked is not hf
    with torch.no_grad():
        torch.testing.assert_close(baked(ids).logits, hooked(model, mask, ids), atol=PARITY, rtol=0)


def test_resample_cannot_be_baked(model: TransformerBridge) -> None:
    mask = AblationMask.from_components(COMPONENTS, model=model, mode="resample")
    with pytest.raises(
        ValueError, match=r"mode 'resample' .* cannot be baked; bake supports \('zero', 'mean', 'scale'\)"
    ):
        bake(model, mask)


def test_bake_refuses_a_mask_for_another_model(model: TransformerBridge, tmp_path: Path) -> None:
    other = load_model(build_tiny_checkpoint(model.original_model.config.model_type, tmp_path / "o", seed=2))
    with pytest.raises(ValueError, match="made for another model"):
        bake(other, AblationMask.from_components(COMPONENTS, model=model))
    with pytest.raises(ValueError, match=r"unknown missing_bias 'ignore'; use one of \('refuse', 'add'\)"):
        bake(model, AblationMask.from_components(COMPONENTS, model=model), missing_bias="ignore")  # type: ignore[arg-type]


def test_llama_mean_mode_is_refused_by_default_and_adds_biases_on_request(tmp_path: Path, ids: Tensor) -> None:
    llama = load_model(build_tiny_checkpoint("llama", tmp_path / "llama"))
    mask = make_mask(llama, "mean", ids)
    with pytest.raises(
        ValueError,
        match=r"this llama model has no output bias for the ablated neurons in layers \[0, 1\]; "
        r"heads in layers \[0, 1\]\. .*missing_bias='add'",
    ):
        bake(llama, mask)
    baked = bake(llama, mask, missing_bias="add")
    config = hf_model(baked).config
    assert config.mlp_bias and config.attention_bias
    assert not hf_model(llama).config.mlp_bias  # the original config is untouched
    state = hf_state_dict(baked)
    added = set(state) - set(hf_state_dict(llama))
    assert added == {
        f"model.layers.{layer}.{p}.bias"
        for layer in range(2)
        for p in (
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
        )
    }
    assert all(not state[n].any() for n in added if not n.endswith(("down_proj.bias", "o_proj.bias")))
    assert state["model.layers.0.mlp.down_proj.bias"].abs().sum() > 0
    # only heads: only attention biases are switched on
    heads_only = bake(
        llama, AblationMask(None, mask.heads, mode="mean", head_means=mask.head_means), missing_bias="add"
    )
    assert hf_model(heads_only).config.attention_bias and not hf_model(heads_only).config.mlp_bias
