"""RMU (Li et al. 2024, WMDP): its loss, what it may change, and that it unlearns on the testbed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import loka
from loka.base.errors import UsageError
from loka.data import Fact, KnowledgeSet
from loka.methods import Budget, RMUConfig, unlearn
from loka.methods.rmu import _block, _states, control_vector, layer_grid, rmu, rmu_loss
from loka.models import architecture, hf_model, hf_state_dict, load_model, plain_copy
from loka.protocol import Protocol
from loka.scoring.metrics import score_facts
from tests.checkpoints import ARCHITECTURES, build_tiny_checkpoint


def test_rmu_loss_matches_its_formula_on_hand_made_numbers() -> None:
    """forget = mean over real tokens of mean_d (h - c u)^2; retain the same against the original."""
    d = 2
    forget = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])  # the third token is padding
    retain = torch.tensor([[[1.0, 1.0]], [[2.0, 0.0]]])
    original = torch.tensor([[[0.0, 1.0]], [[2.0, 2.0]]])
    u = torch.tensor([0.6, 0.8])
    c, alpha = 5.0, 10.0
    forget_mask = torch.tensor([[True, True, False]])
    retain_mask = torch.tensor([[True], [True]])
    target = [3.0, 4.0]  # c * u
    by_hand_forget = (((1 - 3) ** 2 + (2 - 4) ** 2) / d + ((3 - 3) ** 2 + (4 - 4) ** 2) / d) / 2
    by_hand_retain = ((1**2 + 0**2) / d + (0**2 + 2**2) / d) / 2
    assert target == (c * u).tolist()
    terms = rmu_loss(forget, retain, original, u, c, alpha, (forget_mask, retain_mask))
    assert terms.forget.item() == pytest.approx(by_hand_forget)  # 2.0
    assert terms.retain.item() == pytest.approx(by_hand_retain)  # 1.25
    assert terms.loss.item() == pytest.approx(by_hand_forget + alpha * by_hand_retain)
    # fp16 states still accumulate in float32
    half = rmu_loss(forget.half(), retain.half(), original.half(), u, c, alpha, (forget_mask, retain_mask))
    assert half.loss.dtype == torch.float32 and half.loss.item() == pytest.approx(terms.loss.item())


def test_control_vector_is_a_seeded_unit_vector_with_nonnegative_entries() -> None:
    u = control_vector(64, seed=3)
    assert u.norm().item() == pytest.approx(1.0) and (u >= 0).all()
    assert torch.equal(u, control_vector(64, seed=3)) and not torch.equal(u, control_vector(64, seed=4))


def test_layer_grid_is_small_and_in_range() -> None:
    assert layer_grid(4) == (2, 3)
    assert layer_grid(2) == (1,)
    assert layer_grid(1) == (0,)
    assert all(0 <= layer < 32 for layer in layer_grid(32)) and len(layer_grid(32)) <= 3


_FORGET = KnowledgeSet(
    (Fact("f1", "Marie Curie was born in", " Warsaw", "Marie Curie"),
     Fact("f2", "Alan Turing studied at", " Cambridge", "Alan Turing")),
    name="forget",
)  # fmt: skip
_RETAIN = KnowledgeSet(
    (Fact("r1", "The capital of France is", " Paris"), Fact("r2", "The capital of Poland is", " Warsaw")),
    name="retain",
)
_VALIDATION = KnowledgeSet((Fact("v1", "Ada Lovelace wrote the first", " algorithm", "Ada Lovelace"),), name="val")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_only_the_chosen_mlp_output_weights_change(arch: str, tmp_path: Path) -> None:
    """With layer 1 and n_updated 1, block 1's MLP output projection is trained and every other
    parameter (block 0's included) is bit-identical; the input model is untouched."""
    model = load_model(build_tiny_checkpoint(arch, tmp_path / arch))
    before = {k: v.clone() for k, v in hf_state_dict(model).items()}
    config = RMUConfig(layer=1, n_updated=1, steering_scales=(1.0,), lr=1e-2)
    edited, used, log = rmu(
        model, _FORGET, _RETAIN, tokenizer=model.tokenizer, seed=0, progress=False,
        budget=Budget(target_forget_accuracy=0.0, check_every=2, max_steps=3), validation_retain=_VALIDATION,
        config=config,
    )  # fmt: skip
    spec = architecture(model)
    changed = spec.name(spec.mlp_out_weight, 1)
    assert used["chosen"]["updated"] == [changed] and used["chosen"]["layer"] == 1
    after = hf_state_dict(edited)
    assert set(after) == set(before)
    for name, old in before.items():
        if name == changed:
            assert not torch.equal(after[name], old), name
        else:
            assert torch.equal(after[name], old), name
        assert torch.equal(hf_state_dict(model)[name], old), f"input model changed: {name}"
    assert log[0]["step"] == 2  # the first check (a random model is already at the target: it stops there)
    assert all(p.requires_grad for p in edited.parameters())


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("cached", [True, False])
def test_the_coefficient_is_the_scale_times_the_originals_mean_residual_norm(
    arch: str, cached: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """c = steering_scale x the mean L2 norm of the original's h[L] over every real retain token
    (BOS included), recorded in ``used`` and the log next to the scale; the same whether the
    original's retain states are cached or recomputed by a frozen copy."""
    if not cached:
        monkeypatch.setattr("loka.methods.rmu._CACHE_BYTES", 0)
    model = load_model(build_tiny_checkpoint(arch, tmp_path / arch))
    hf = plain_copy(model)
    batch = _RETAIN.encode(model.tokenizer)
    with torch.no_grad():
        states = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    output_hidden_states=True).hidden_states[1]  # h[0]: the last entry has the final norm  # fmt: skip
    norm = states.norm(dim=-1)[batch.attention_mask.bool()].mean().item()
    for scale in (0.5, 2.0):
        _, used, log = rmu(
            model, _FORGET, _RETAIN, tokenizer=model.tokenizer, seed=0, progress=False,
            budget=Budget(target_forget_accuracy=0.0, check_every=1, max_steps=1), validation_retain=_VALIDATION,
            config=RMUConfig(layer=0, n_updated=1, steering_scales=(scale,), lr=1e-2),
        )  # fmt: skip
        chosen = used["chosen"]
        assert chosen["steering_scale"] == scale and used["candidates"][0]["steering_scale"] == scale
        assert chosen["residual_norm"] == pytest.approx(norm, rel=1e-4, abs=2e-3)  # recorded to 3 decimals
        assert chosen["steering_coeff"] == pytest.approx(scale * norm, rel=1e-4, abs=2e-3)
        assert log[0]["steering_scale"] == scale
        assert log[0]["steering_coeff"] == pytest.approx(scale * norm, rel=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_hook_reads_the_hidden_state_after_the_block(arch: str, tmp_path: Path) -> None:
    """h[L] is Hugging Face's hidden_states[L + 1] (before any final norm: checked at L = 0)."""
    model = plain_copy(load_model(build_tiny_checkpoint(arch, tmp_path / arch)))
    batch = _FORGET.encode(load_model(tmp_path / arch).tokenizer)
    with torch.no_grad():
        expected = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         output_hidden_states=True).hidden_states[1]  # fmt: skip
        got = _states(model, _block(model, architecture(model).mlp_out_weight, 0), batch.input_ids,
                      batch.attention_mask)  # fmt: skip
    real = batch.attention_mask.bool()
    assert torch.allclose(got[real], expected[real], atol=1e-5)


def test_rmu_on_the_tiny_testbed_forgets_and_keeps_validation_retain(tiny_testbed) -> None:
    model = loka.load_model(tiny_testbed.model_dir)
    p = Protocol.from_testbed(tiny_testbed)
    accuracy = lambda m, k: score_facts(m, k).answer_accuracy  # noqa: E731
    forget_before, retain_before = accuracy(model, p.forget), accuracy(model, p.retain_validation)
    # the default scales: the coefficient follows the tiny model's residual norm (about 32 at block 1,
    # against about 180 on the default testbed), where the old absolute default 300 destroyed retain
    result = unlearn(model, p.forget, p.retain_train, validation=p.retain_validation, method="rmu",
                     max_steps=250, progress=False)  # fmt: skip
    forget_after, retain_after = accuracy(result.model, p.forget), accuracy(result.model, p.retain_validation)
    assert forget_before >= 0.9
    assert forget_after <= forget_before - 0.5, (forget_after, result.config["candidates"])
    assert retain_after >= retain_before - 0.15, (retain_after, result.config["candidates"])
    chosen = result.config["chosen"]
    assert chosen["layer"] in layer_grid(hf_model(model).config.num_hidden_layers)
    assert chosen["steering_scale"] in RMUConfig().steering_scales and chosen["residual_norm"] > 0
    resolved = chosen["steering_scale"] * chosen["residual_norm"]
    assert chosen["steering_coeff"] == pytest.approx(resolved, rel=1e-4, abs=2e-3)
    steps = [entry["step"] for entry in result.log]
    assert steps == sorted(steps) and result.compute.steps == steps[-1]  # cumulative over candidates
    assert result.compute.steps == sum(c["steps"] for c in result.config["candidates"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"layer": 7}, r"layer must be in range\(0, 2\) for this model, got 7"),
        ({"layer": -1}, "layer must be"),
        ({"n_updated": 0}, "n_updated must be an integer at least 1"),
        ({"steering_scales": (0.0,)}, "steering_scales must be positive"),
        ({"steering_scales": ()}, "steering_scales must be positive"),
        ({"batch_size": 0}, "batch_size must be"),
    ],
)
def test_bad_inputs_are_one_line_usage_errors(options, message, tmp_path: Path) -> None:
    model = load_model(build_tiny_checkpoint("gpt2", tmp_path / "gpt2"))
    with pytest.raises(UsageError, match=message) as error:
        unlearn(model, _FORGET, _RETAIN, validation=_VALIDATION, method="rmu", progress=False, **options)
    assert "\n" not in str(error.value)
