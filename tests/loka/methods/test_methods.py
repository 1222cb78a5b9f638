"""Unlearning methods: each lowers forget accuracy and keeps retain, returns a copy, and checks input."""

from __future__ import annotations

import math

import pytest
import torch

import loka
from ablation.params import parameter_masks
from loka.base.errors import UsageError
from loka.data import KnowledgeSet
from loka.methods import Budget, GradientAscentConfig, TaskVectorConfig, unlearn
from loka.models import architecture, hf_state_dict
from loka.models.copies import shares_storage
from loka.protocol import Protocol
from loka.scoring.metrics import score_facts
from tests.owned import only_owned_weights_moved


@pytest.fixture(scope="module")
def model(tiny_testbed):
    return loka.load_model(tiny_testbed.model_dir)


@pytest.fixture(scope="module")
def protocol(tiny_testbed):
    return Protocol.from_testbed(tiny_testbed)


BUDGET = Budget(target_forget_accuracy=0.1, check_every=10, max_steps=40)


@pytest.mark.parametrize("method", ["gradient_ascent", "task_vector", pytest.param("loka", marks=pytest.mark.slow)])
def test_every_method_follows_the_shared_budget(protocol, model, method):
    """Every method checks forget accuracy on the same schedule and stops by the same rule; the
    bounds are relative to the model's own numbers, so they hold for any trained testbed."""
    before = {k: v.clone() for k, v in hf_state_dict(model).items()}
    result = unlearn(
        model, protocol.forget, protocol.retain_train, method=method, validation=protocol.retain_validation,
        reference=protocol.reference, budget=BUDGET, progress=False,
    )  # fmt: skip
    forget = score_facts(result.model, protocol.forget).first_token_accuracy
    assert forget < score_facts(model, protocol.forget).first_token_accuracy
    checks = [e for e in result.log if "forget_accuracy" in e]
    assert checks and all(e["step"] % BUDGET.check_every == 0 or e["step"] == BUDGET.max_steps for e in checks)
    if method != "task_vector":  # task vector checks one scale at a time after its fine-tune
        # LOKA's subject erasure also waits for the names to reach the strangers' level (within its tolerance)
        tolerance = result.config.get("subject_tolerance", 0.0)
        reached = [BUDGET.reached(e["forget_accuracy"]) and abs(e.get("subject_gap", 0.0)) <= tolerance for e in checks]
        assert not any(reached[:-1])  # it stops at the first check that reaches the target
        assert reached[-1] or checks[-1]["step"] == BUDGET.max_steps
        assert checks[-1]["forget_accuracy"] == pytest.approx(forget)
    assert result.compute.steps <= BUDGET.max_steps and result.compute.steps >= 1
    assert result.compute.backward_tokens > 0 and result.compute.forward_tokens >= result.compute.backward_tokens
    assert result.config["budget"] == {"target_forget_accuracy": 0.1, "check_every": 10, "max_steps": 40}
    assert result.method == method and result.seconds > 0
    assert isinstance(result.model, type(model))
    assert not isinstance(result.model.original_model, type(model))  # never a bridge inside a bridge
    # what the method saw: never the evaluation sets
    assert result.seen.clash(protocol.retain_eval) is None and result.seen.clash(protocol.nonmembers) is None
    assert result.seen.clash(protocol.paraphrase_eval, by_person=False) is None
    # the input model is untouched
    assert all(torch.equal(before[k], v) for k, v in hf_state_dict(model).items())


def test_compute_counts_every_forward_token(protocol, model):
    """The meter counts tokens through the embedding: one full-batch check of the forget set
    costs exactly its padded token count."""
    result = unlearn(
        model, protocol.forget, protocol.retain_train, method="gradient_ascent",
        validation=protocol.retain_validation, budget=Budget(check_every=1, max_steps=1), batch_size=4,
        progress=False,
    )  # fmt: skip
    tokens = lambda ks: sum(b.input_ids.numel() for b in ks.batches(model, 64))  # noqa: E731
    assert result.compute.steps == 1 and result.compute.backward_tokens > 0  # one forget and one retain batch
    assert result.compute.forward_tokens == result.compute.backward_tokens + tokens(protocol.forget)  # + the check


def test_loka_edits_only_the_parameters_its_components_own(protocol, model):
    """Every parameter outside the located neurons' own slices is bit-identical; the result
    carries the mask and the parameter count it changed."""
    result = unlearn(
        model, protocol.forget, protocol.retain_train, method="loka", reference=protocol.reference,
        validation=protocol.retain_validation, max_steps=10, check_every=5, size=0.02, progress=False,
    )  # fmt: skip
    count = math.ceil(0.02 * model.cfg.n_layers * model.cfg.d_mlp)
    assert result.config["erase"] == "subject"  # the default with reference people: the names' neurons too
    assert result.mask is not None and count < len(result.mask) <= 2 * count
    assert only_owned_weights_moved(model, result) > 0
    owned = parameter_masks(model, result.mask.neurons, result.mask.heads)
    chosen = result.config["chosen"]
    assert chosen["parameters"] == sum(int(m.sum()) for m in owned.values())
    total = sum({id(v.untyped_storage()): v.numel() for v in hf_state_dict(model).values()}.values())
    assert chosen["parameter_fraction"] == pytest.approx(chosen["parameters"] / total, rel=1e-3)
    assert [entry["step"] for entry in result.log] == [5, 10][: len(result.log)]


def test_loka_shares_what_it_does_not_change(protocol, model):
    """By default the edited model holds new tensors only for the weights its components own and
    shares the others with the input; its weights equal the full copy's (share=False) bit for bit."""
    runs = {
        share: unlearn(
            model,
            protocol.forget,
            protocol.retain_train,
            method="loka",
            reference=protocol.reference,
            validation=protocol.retain_validation,
            max_steps=4,
            check_every=2,
            size=0.02,
            progress=False,
            share=share,
        )  # fmt: skip
        for share in (True, False)
    }
    shared, full = (hf_state_dict(runs[share].model) for share in (True, False))
    assert set(shared) == set(full) and all(torch.equal(shared[k], full[k]) for k in full)
    owned = set(parameter_masks(model, runs[True].mask.neurons, runs[True].mask.heads))
    assert shares_storage(runs[True].model, model) == set(full) - owned
    assert not shares_storage(runs[False].model, model)
    assert runs[True].config["share"] is True


def test_loka_layers_control_edits_only_the_mlps_of_its_layers(protocol, model):
    result = unlearn(
        model, protocol.forget, protocol.retain_train, method="loka", reference=protocol.reference,
        validation=protocol.retain_validation, max_steps=4, check_every=2, location="layers", progress=False,
    )  # fmt: skip
    layers = sorted({layer for _, layer, _ in result.mask.components})
    spec = architecture(model)
    allowed = {spec.name(w, layer) for layer in layers for w in (spec.mlp_out_weight, *spec.mlp_in_weights)}
    allowed |= {name.removesuffix(".weight") + ".bias" for name in allowed}
    before, after = hf_state_dict(model), hf_state_dict(result.model)
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed and changed <= allowed
    assert result.config["location"] == "layers" and result.config["chosen"]["location"] == "layers"


def test_methods_are_reproducible_by_seed(tiny_testbed, model):
    runs = [unlearn(model, tiny_testbed.forget, tiny_testbed.retain, method="gradient_ascent", max_steps=4,
                    progress=False, seed=3) for _ in range(2)]  # fmt: skip
    assert loka.fingerprint(runs[0].model) == loka.fingerprint(runs[1].model)


def test_retrain_returns_the_oracle(tiny_testbed, model):
    result = unlearn(model, tiny_testbed.forget, tiny_testbed.retain, method="retrain", oracle=tiny_testbed.oracle_dir)
    assert loka.fingerprint(result.model) == loka.fingerprint(loka.load_model(tiny_testbed.oracle_dir))


def test_a_config_and_its_keywords_give_the_same_run(tiny_testbed, model):
    """``config=`` and keywords are one interface: the same edit, the same recorded config (every
    option, what the method resolved, the budget and the seed)."""
    tb = tiny_testbed
    common = dict(method="task_vector", max_steps=4, check_every=2, progress=False)
    by_keywords = unlearn(model, tb.forget, tb.retain, finetune_steps=2, scales=[1.0, 2.0], **common)
    config = TaskVectorConfig(finetune_steps=2, scales=(1.0, 2.0))
    by_config = unlearn(model, tb.forget, tb.retain, config=config, **common)
    assert by_config.config == by_keywords.config
    assert by_config.config["scales"] == [1.0, 2.0] and by_config.config["lr"] == config.lr
    assert by_config.config["chosen"]["scale"] in (1.0, 2.0) and by_config.config["seed"] == 0
    probe = torch.tensor([[1, 5, 9, 13]])
    assert torch.equal(loka.models.logits(by_config.model, probe), loka.models.logits(by_keywords.model, probe))


def test_an_internal_type_error_is_not_an_unknown_option(tiny_testbed, model, monkeypatch):
    """Options are checked by the config, so a TypeError raised inside a method is a bug shown as
    itself, never re-worded as an unknown option."""

    def broken(*args, **kwargs):
        raise TypeError("f() got an unexpected keyword argument 'x'")

    monkeypatch.setattr(loka.methods.registry, "run_gradient_ascent", broken)
    with pytest.raises(TypeError, match="unexpected keyword argument 'x'"):
        unlearn(
            model, tiny_testbed.forget, tiny_testbed.retain, method="gradient_ascent", config=GradientAscentConfig()
        )


def test_bad_inputs(tiny_testbed, model):
    tb = tiny_testbed
    with pytest.raises(ValueError, match="unknown unlearning method 'forget_harder'; choose one of"):
        unlearn(model, tb.forget, tb.retain, method="forget_harder")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="forget must be a non-empty KnowledgeSet, got list"):
        unlearn(model, [], tb.retain, method="gradient_ascent")
    with pytest.raises(ValueError, match="is empty: it needs at least one fact"):
        unlearn(model, KnowledgeSet((), name="forget"), tb.retain, method="gradient_ascent")
    with pytest.raises(ValueError, match="forget and retain overlap"):
        unlearn(model, tb.forget, tb.retain + tb.forget, method="gradient_ascent")
    with pytest.raises(ValueError, match="forget and reference overlap"):
        unlearn(model, tb.forget, tb.retain, method="loka", reference=tb.forget)
    with pytest.raises(ValueError, match="retain and validation overlap"):
        unlearn(model, tb.forget, tb.retain, method="loka", validation=tb.retain)
    with pytest.raises(ValueError, match="give the budget either as budget= or as max_steps="):
        unlearn(model, tb.forget, tb.retain, method="loka", budget=Budget(), max_steps=3)
    with pytest.raises(ValueError, match="max_steps must be an integer at least 1"):
        unlearn(model, tb.forget, tb.retain, method="gradient_ascent", max_steps=0)
    with pytest.raises(ValueError, match="target_forget_accuracy must be a number between 0.0 and 1.0"):
        Budget(target_forget_accuracy=2)
    with pytest.raises(UsageError, match="unknown option for 'gradient_ascent': 'learning_rate'; options are lr, "):
        unlearn(model, tb.forget, tb.retain, method="gradient_ascent", learning_rate=1.0)
    with pytest.raises(ValueError, match="alpha must be a number between 0.0 and 1.0"):
        unlearn(model, tb.forget, tb.retain, method="gradient_ascent", alpha=2)
    with pytest.raises(ValueError, match="max_layers must be an integer at least 1"):
        unlearn(model, tb.forget, tb.retain, method="loka", max_layers=0)
    with pytest.raises(ValueError, match="edit must be one of 'finetune', 'ablate', 'rewrite', got 'prune'"):
        unlearn(model, tb.forget, tb.retain, method="loka", edit="prune")
    with pytest.raises(ValueError, match="size must be a fraction in \\(0, 1\\] or a count between 1 and"):
        unlearn(model, tb.forget, tb.retain, method="loka", size=1.5)
    with pytest.raises(ValueError, match="location must be one of 'located', 'random'"):
        unlearn(model, tb.forget, tb.retain, method="loka", location="elsewhere")
    with pytest.raises(ValueError, match="localize must be one of 'all', 'output', 'lookup', 'exact'"):
        unlearn(model, tb.forget, tb.retain, method="loka", localize="middle", max_steps=1)
    with pytest.raises(ValueError, match="objective='unknown' needs reference="):
        unlearn(model, tb.forget, tb.retain, method="loka", objective="unknown")
    with pytest.raises(ValueError, match="retain_weight must be a number at least 0"):
        unlearn(model, tb.forget, tb.retain, method="loka", retain_weight=-1.0)
    with pytest.raises(ValueError, match="method 'retrain' needs oracle="):
        unlearn(model, tb.forget, tb.retain, method="retrain")


def test_setup_reads_come_in_chunks_and_in_order(tiny_testbed, model):
    """The original's log-probs at setup are read chunk by chunk (never a whole large batch's
    vocabulary rows at once) and joined back in the rows' order."""
    from loka.methods.batches import by_chunks

    batch = tiny_testbed.forget.encode(model.tokenizer)
    whole = batch.input_ids.sum(-1)
    for rows in (1, 3, len(batch), 10 * len(batch)):
        assert torch.equal(by_chunks(batch, lambda part: part.input_ids.sum(-1), rows=rows), whole)
