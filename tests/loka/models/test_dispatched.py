"""A model dispatched by accelerate (a per-module ``device_map``) with a block offloaded: attribution,
copies, edits, bakes, LOKA and export give what they give on the same model loaded plainly.

This machine has one device. transformers dispatches a model (an ``hf_device_map`` and a hook on
every module that moves inputs to that module's device, the code path of a model split over GPUs)
only when the map names more than one place, so one block is offloaded to disk: its weights sit on
``meta`` between calls and are loaded by its hook for each forward. A copy keeps the weights it
does not write offloaded (read from the same place) and holds only the written modules in memory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

import attribution
from ablation import AblationMask, bake, edit, export_checkpoint, rewrite
from ablation.params import parameter_masks
from loka.base.errors import UsageError
from loka.evaluation import evaluate
from loka.evaluation.attacks.quantization import quantize
from loka.methods import unlearn
from loka.models import fingerprint, hf_model, hf_state_dict, load_model, logits, plain_copy
from loka.models.copies import shared_copy
from loka.models.weights import weight_values
from loka.protocol import Protocol
from tests.checkpoints import VOCAB_SIZE, birth_facts, build_tiny_checkpoint, parts

MODULES = ("model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "model.rotary_emb", "lm_head")
OFFLOADED = dict.fromkeys(MODULES, "cpu") | {"model.layers.1": "disk"}
# an offloaded layer (1) and a layer in memory (0); neurons write down_proj, heads o_proj
COMPONENTS = [("neuron", 1, 3), ("neuron", 1, 40), ("head", 1, 0), ("neuron", 0, 5), ("head", 0, 1)]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint("llama", tmp_path_factory.mktemp("llama-dispatched"))


@pytest.fixture(scope="module")
def ids() -> Tensor:
    return torch.randint(0, VOCAB_SIZE, (2, 9), generator=torch.Generator().manual_seed(0))


def _offloaded(model) -> set[str]:
    return {name for name, tensor in hf_state_dict(model).items() if tensor.is_meta}


def _values(model) -> dict[str, Tensor]:
    return {name: tensor.detach().clone() for name, tensor in weight_values(model).items()}


def _assert_same(got, expected, ids: Tensor) -> None:
    mine, theirs = weight_values(got), weight_values(expected)
    assert set(mine) == set(theirs)
    for name in theirs:
        torch.testing.assert_close(mine[name], theirs[name], atol=0, rtol=0, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(logits(got, ids), logits(expected, ids), atol=1e-6, rtol=0)


def test_attribution_on_a_dispatched_model_equals_the_plain_model(llama_dir: Path) -> None:
    plain = load_model(llama_dir)
    dispatched = load_model(llama_dir, device_map=OFFLOADED)
    assert hf_model(dispatched).hf_device_map["model.layers.1"] == "disk"
    facts = birth_facts(6)
    for method in ("grad_x_act", "activation_patching"):
        a = attribution.attribute(plain, facts, method=method, progress=False)
        b = attribution.attribute(dispatched, facts, method=method, progress=False)
        torch.testing.assert_close(b.neurons, a.neurons, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(b.heads, a.heads, atol=1e-6, rtol=1e-5)


def test_copies_keep_unwritten_weights_offloaded(llama_dir: Path, ids: Tensor) -> None:
    """A plain copy shares the offloaded values (nothing new in memory for them); a weight named to
    be written is read into memory with the rest of its module, on the module's execution device."""
    model = load_model(llama_dir, device_map=OFFLOADED)
    offloaded = _offloaded(model)
    assert offloaded and all(name.startswith("model.layers.1.") for name in offloaded)
    with torch.no_grad():
        expected = logits(model, ids)
    copy = plain_copy(model)
    assert _offloaded(copy) == offloaded and copy.hf_device_map["model.layers.1"] == "disk"
    written = "model.layers.1.mlp.down_proj.weight"
    for other in (plain_copy(model, onload={written}), shared_copy(model, {written})):
        assert _offloaded(other) == offloaded - {written}
        assert str(other.hf_device_map["model.layers.1"]) == "cpu"
        for made in (copy, other):
            with torch.no_grad():
                torch.testing.assert_close(logits(made, ids), expected, atol=0, rtol=0)
    with torch.no_grad():  # the copy's own down_proj is its own: writing it leaves the model alone
        hf_state_dict(other)[written].zero_()
        assert not torch.equal(logits(other, ids), expected)
        assert torch.equal(logits(model, ids), expected)


def test_edit_and_bake_of_a_dispatched_model_equal_the_plain_model(llama_dir: Path, ids: Tensor) -> None:
    plain = load_model(llama_dir)
    dispatched = load_model(llama_dir, device_map=OFFLOADED)
    before = fingerprint(dispatched)
    mask = AblationMask.from_components(COMPONENTS, model=plain)

    def objective(model) -> Tensor:
        return logits(model, ids)[:, -1].logsumexp(-1).mean()

    for share in (False, True):
        expected = edit(plain, mask, objective, steps=3, lr=1e-2, share=share)
        got = edit(dispatched, mask, objective, steps=3, lr=1e-2, share=share)
        # only the trained weights left the offload (this tiny model's modules hold one weight each)
        assert _offloaded(got) == _offloaded(dispatched) - set(parameter_masks(plain, mask.neurons, mask.heads))
        assert "model.layers.1.mlp.down_proj.weight" not in _offloaded(got)
        _assert_same(got, expected, ids)
        _assert_same(bake(dispatched, mask, share=share), bake(plain, mask, share=share), ids)
    assert fingerprint(dispatched, refresh=True) == before  # the input is untouched


def test_rewrite_of_a_dispatched_model_equals_the_plain_model(llama_dir: Path, ids: Tensor) -> None:
    """The closed-form rewrite reads the offloaded MLP output weight from its hook and writes the
    edited one into memory; the rest stays offloaded."""
    forget, retain, reference = parts(birth_facts(9), forget=3, retain=3, reference=3)
    options = dict(retain=retain, reference=reference, layers=[1], steps=3)
    expected = rewrite(load_model(llama_dir), forget, **options)
    got = rewrite(load_model(llama_dir, device_map=OFFLOADED), forget, **options)
    assert "model.layers.1.mlp.down_proj.weight" not in _offloaded(got.model) and _offloaded(got.model)
    mine, theirs = weight_values(got.model), weight_values(expected.model)
    for name in theirs:
        torch.testing.assert_close(mine[name], theirs[name], atol=1e-6, rtol=0, msg=name)


def test_loka_and_export_on_a_dispatched_model(llama_dir: Path, tmp_path: Path, ids: Tensor) -> None:
    forget, retain, validation = parts(birth_facts(9), forget=3, retain=3, validation=3)
    options = dict(method="loka", max_steps=2, progress=False, check_scores=0, validation=validation, seed=0)
    dispatched = load_model(llama_dir, device_map=OFFLOADED)
    # without the relearning adversary, the same steps as on the plain model
    got = unlearn(dispatched, forget, retain, adversary_weight=0.0, **options)
    expected = unlearn(load_model(llama_dir), forget, retain, adversary_weight=0.0, **options)
    assert got.mask is not None and expected.mask is not None and got.mask.components == expected.mask.components
    mine, theirs = weight_values(got.model), weight_values(expected.model)
    for name in theirs:
        torch.testing.assert_close(mine[name], theirs[name], atol=1e-6, rtol=0, msg=name)
    # with it (the default), the adversary moves the weights held in memory; still surgical
    got = unlearn(dispatched, forget, retain, **options)
    assert got.mask is not None and got.config["adversary_weight"] == 1.0
    trained = parameter_masks(dispatched, got.mask.neurons, got.mask.heads)
    original, edited = weight_values(dispatched), weight_values(got.model)
    for name, value in original.items():
        unchanged = ~trained[name] if name in trained else torch.ones_like(value, dtype=torch.bool)
        assert torch.equal(edited[name][unchanged], value[unchanged]), name
    out = export_checkpoint(got.model, tmp_path / "export", mask=got.mask, source=llama_dir)
    reloaded = load_model(out)
    _assert_same(reloaded, got.model, ids)
    with pytest.raises(UsageError, match="trains every weight") as raised:
        unlearn(dispatched, forget, retain, method="gradient_ascent", max_steps=1, progress=False)
    assert "\n" not in str(raised.value)


def test_evaluation_of_an_offloaded_model_equals_the_plain_model(tiny_testbed) -> None:
    """Every number of the evaluation, the attacks that need every weight in memory (relearning
    fine-tunes them all, quantization rounds them all) and the probe's hooks included."""
    protocol = Protocol.from_testbed(tiny_testbed)
    for directory in (tiny_testbed.model_dir, tiny_testbed.oracle_dir):
        plain = load_model(directory)
        offloaded = load_model(directory, device_map="auto", max_memory={"cpu": "200KB"})
        assert any(p.is_meta for p in offloaded.parameters())
        expected, got = evaluate(plain, protocol=protocol), evaluate(offloaded, protocol=protocol)
        assert dict(got.rows()) == dict(expected.rows())
        assert got.relearning is not None and got.relearning.grid == expected.relearning.grid
        rounded = weight_values(quantize(offloaded, 4, group_size=128))
        for name, value in weight_values(quantize(plain, 4, group_size=128)).items():
            assert torch.equal(rounded[name], value), name
