"""Copies that share untouched weights with the original (``shared_copy``, ``edit``/``bake``
with ``share=True``), copies of dispatched and offloaded models, and the input-device sites.

A shared copy must be the full copy's twin (bit for bit), leave the original bit-identical, and
hold new memory only for the weights it changes; a model whose embedding accelerate offloads
(``meta`` weights between calls) must still get its inputs on the right device.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

import attribution.patching
from ablation import AblationMask, ablate, bake, edit, export_checkpoint, mean_activations
from ablation.hooks import ablation_hooks
from ablation.params import parameter_masks
from ablation.rewrite_keys import device_of
from attribution.metric import metric_values
from loka.base.errors import UsageError
from loka.data import Fact, KnowledgeSet
from loka.models import hf_model, hf_state_dict, input_device, load_model, logits, plain_copy
from loka.models.copies import materialize, shared_copy, shares_storage
from tests.checkpoints import VOCAB_SIZE, build_tiny_checkpoint

LLAMA_MODULES = ("model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "model.rotary_emb", "lm_head")
ONE_LAYER = [("neuron", 1, 3), ("neuron", 1, 40), ("head", 1, 0)]


@pytest.fixture(scope="module")
def ids() -> Tensor:
    return torch.randint(0, VOCAB_SIZE, (2, 9), generator=torch.Generator().manual_seed(0))


def _weights(model) -> dict[str, Tensor]:
    return {name: tensor.detach().clone() for name, tensor in hf_state_dict(model).items()}


def _same_weights(model, reference: dict[str, Tensor]) -> bool:
    now = hf_state_dict(model)
    return set(now) == set(reference) and all(torch.equal(now[k], reference[k]) for k in reference)


def _new_bytes(copy, original) -> int:
    """Bytes of the copy's weights whose storage the original does not hold (each storage once)."""
    shared = shares_storage(copy, original)
    seen: dict[int, int] = {}
    for name, tensor in hf_state_dict(copy).items():
        if name not in shared:
            seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return sum(seen.values())


def _bytes(model, names) -> int:
    weights = hf_state_dict(model)
    return sum(weights[name].numel() * weights[name].element_size() for name in set(names))


def _objective(ids: Tensor):
    def loss(model) -> Tensor:  # push the next token of every position down
        out = logits(model, ids)
        return out[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).mean()

    return loss


# ----------------------------------------------------------------------------- shared_copy


def test_shared_copy_clones_only_the_changed_weights(model, ids: Tensor) -> None:
    names = sorted(hf_state_dict(model))
    changed = {name for name in names if ".1." in name and name.endswith("weight")}
    copy = shared_copy(model, changed)
    shared = shares_storage(copy, model)
    assert shared == set(names) - changed
    assert all(not p.requires_grad for n, p in copy.named_parameters() if n in shared)
    assert all(p.requires_grad for n, p in copy.named_parameters() if n not in shared)
    with torch.no_grad():
        assert torch.equal(logits(copy, ids), logits(plain_copy(model), ids))
    assert shares_storage(plain_copy(model), model) == set()


def test_shared_copy_keeps_tied_embeddings_tied(tmp_path: Path) -> None:
    model = load_model(build_tiny_checkpoint("gpt2", tmp_path / "gpt2"))
    for changed in (set(), {"transformer.wte.weight"}, {"lm_head.weight"}):
        copy = shared_copy(model, changed)
        assert copy.get_output_embeddings().weight is copy.get_input_embeddings().weight
        assert ("transformer.wte.weight" in shares_storage(copy, model)) == (not changed)
    with pytest.raises(UsageError, match="not weights of the model"):
        shared_copy(model, {"transformer.h.9.mlp.c_proj.weight"})


def test_materialize_is_independent(model) -> None:
    before = _weights(model)
    edited = bake(model, AblationMask.from_components(ONE_LAYER, model=model), share=True)
    independent = materialize(edited)
    assert type(independent) is type(model) and shares_storage(independent, model) == set()
    with torch.no_grad():
        for tensor in hf_state_dict(independent).values():
            tensor.add_(1.0)  # a user's in-place edit of the materialized copy
    assert _same_weights(model, before) and _same_weights(edited, {**before, **_changed(edited, before)})


def _changed(model, reference: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in hf_state_dict(model).items() if not torch.equal(v, reference[k])}


# ----------------------------------------------------------------------------- edit and bake


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_shared_edit_equals_full_copy_edit_and_holds_one_layer(model, ids: Tensor, optimizer: str) -> None:
    before = _weights(model)
    mask = AblationMask.from_components(ONE_LAYER, model=model)
    options = dict(steps=3, lr=1e-2, optimizer=optimizer)
    full = edit(model, mask, _objective(ids), **options)
    shared = edit(model, mask, _objective(ids), share=True, **options)
    assert _same_weights(model, before)  # the optimizer never wrote the original
    assert _same_weights(shared, _weights(full))  # bit for bit the old full-copy edit
    assert type(shared) is type(model)
    owned = set(parameter_masks(model, mask.neurons, mask.heads))
    assert {name.split(".")[-3] for name in owned} != set() and all(".1." in name for name in owned)
    assert _new_bytes(shared, model) == _bytes(model, owned)  # one layer's tensors, not a model
    assert _new_bytes(full, model) == sum(t.untyped_storage().nbytes() for t in _unique(model))
    theirs = {t.untyped_storage().data_ptr() for t in hf_state_dict(model).values()}
    frozen = [p.requires_grad for p in shared.parameters() if p.untyped_storage().data_ptr() in theirs]
    assert frozen and not any(frozen) and any(p.requires_grad for p in shared.parameters())
    with torch.no_grad():
        torch.testing.assert_close(logits(shared, ids), logits(full, ids), rtol=0, atol=0)


def _unique(model) -> list[Tensor]:
    return list({t.untyped_storage().data_ptr(): t for t in hf_state_dict(model).values()}.values())


@pytest.mark.parametrize("mode", ["zero", "scale", "mean"])
def test_shared_bake_equals_full_copy_bake(model, ids: Tensor, mode: str) -> None:
    before = _weights(model)
    mask = AblationMask.from_components(ONE_LAYER, model=model)
    if mode == "mean":
        mask = mask.with_mode("mean", means=mean_activations(model, ids))
    elif mode == "scale":
        mask = mask.with_mode("scale", scale=0.5)
    missing = "add" if mode == "mean" else "refuse"
    full = bake(model, mask, missing_bias=missing)
    shared = bake(model, mask, missing_bias=missing, share=True)
    assert _same_weights(model, before)
    assert _same_weights(shared, _weights(full))
    new = {name for name in hf_state_dict(shared) if name not in before}  # Llama's added biases
    assert new == set(hf_state_dict(full)) - set(before)
    written = {n for n, t in hf_state_dict(full).items() if n in before and not torch.equal(t, before[n])}
    assert _new_bytes(shared, model) == _bytes(shared, written | new)


def test_shared_edit_exports_and_reloads(model, ids: Tensor, tmp_path: Path) -> None:
    mask = AblationMask.from_components(ONE_LAYER, model=model)
    shared = edit(model, mask, _objective(ids), steps=2, lr=1e-2, share=True)
    out = export_checkpoint(shared, tmp_path / "out", mask=mask, source=model)
    reloaded = load_model(out)
    assert _same_weights(reloaded, _weights(shared))
    with torch.no_grad():
        assert torch.equal(logits(reloaded, ids), logits(shared, ids))


def test_share_must_be_a_bool(model) -> None:
    mask = AblationMask.from_components(ONE_LAYER, model=model)
    with pytest.raises(UsageError, match="share must be True or False"):
        bake(model, mask, share="yes")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="share must be True or False"):
        edit(model, mask, _objective(torch.zeros(1, 2, dtype=torch.long)), share=1)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- devices


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint("llama", tmp_path_factory.mktemp("llama-shared"))


def test_copies_of_a_dispatched_model_keep_its_map(llama_dir: Path, ids: Tensor) -> None:
    model = load_model(llama_dir, device_map={name: "cpu" for name in LLAMA_MODULES})
    device_map = getattr(hf_model(model), "hf_device_map", None)  # None where all of it is on the CPU
    mask = AblationMask.from_components(ONE_LAYER, model=model)
    reference = bake(load_model(llama_dir), mask)
    for share in (False, True):
        baked = bake(model, mask, share=share)
        assert isinstance(baked, TransformerBridge) and getattr(hf_model(baked), "hf_device_map", None) == device_map
        assert {p.device for p in baked.parameters()} == {p.device for p in model.parameters()}
        with torch.no_grad():
            assert torch.equal(logits(baked, ids), logits(reference, ids))


def test_input_device_sites_with_an_offloaded_embedding(llama_dir: Path, ids: Tensor) -> None:
    """With the embedding on ``meta`` between calls, the first parameter is on ``meta``; every
    site that places inputs asks :func:`input_device` instead and gets the reference's results."""
    reference = load_model(llama_dir)
    model = load_model(llama_dir, device_map={name: "cpu" for name in LLAMA_MODULES} | {"model.embed_tokens": "disk"})
    assert next(model.parameters()).is_meta and input_device(model) == torch.device("cpu")
    assert device_of(model) == torch.device("cpu")
    expected, got = mean_activations(reference, ids), mean_activations(model, ids)
    torch.testing.assert_close(got.neurons, expected.neurons, atol=1e-6, rtol=0)
    mask = AblationMask.from_components(ONE_LAYER, model=reference).with_mode("mean", means=expected)
    with torch.no_grad(), ablate(reference, mask), model.hooks(fwd_hooks=ablation_hooks(model, mask)):
        torch.testing.assert_close(logits(model, ids), logits(reference, ids), atol=1e-6, rtol=0)
    assert attribution.patching.default_chunk_size(model, 64) == attribution.patching.default_chunk_size(reference, 64)
    facts = KnowledgeSet(tuple(Fact(f"f{i}", f"The number {i} is", f" {i + 1}") for i in range(3)))
    torch.testing.assert_close(
        metric_values(model, facts).values, metric_values(reference, facts).values, atol=1e-5, rtol=0
    )
