"""Unlearning methods: each lowers forget accuracy and keeps retain, returns a copy, and checks input."""

from __future__ import annotations

import pytest
import torch

import loka
from loka.data import KnowledgeSet
from loka.methods import unlearn
from loka.metrics import score_facts
from loka.models import architecture, hf_state_dict


@pytest.fixture(scope="module")
def model(tiny_testbed):
    return loka.load_model(tiny_testbed.model_dir)


@pytest.mark.parametrize(("method", "retain_floor"), [("gradient_ascent", 0.85), ("task_vector", 0.85), ("loka", 0.8)])
def test_method_forgets_some_and_keeps_retain(tiny_testbed, model, method, retain_floor):
    before = {k: v.clone() for k, v in hf_state_dict(model).items()}
    options = {"reference": tiny_testbed.holdout} if method == "loka" else {}
    result = unlearn(model, tiny_testbed.forget, tiny_testbed.retain, method=method, progress=False, **options)
    forget = score_facts(result.model, tiny_testbed.forget).first_token_accuracy
    retain = score_facts(result.model, tiny_testbed.retain).first_token_accuracy
    assert forget < score_facts(model, tiny_testbed.forget).first_token_accuracy
    assert retain >= retain_floor
    assert result.method == method and result.seconds > 0 and result.log
    assert isinstance(result.model, type(model))
    assert not isinstance(result.model.original_model, type(model))  # never a bridge inside a bridge
    # the input model is untouched
    assert all(torch.equal(before[k], v) for k, v in hf_state_dict(model).items())


def test_loka_edits_only_the_mlps_of_the_layers_it_chose(tiny_testbed, model):
    result = unlearn(
        model, tiny_testbed.forget, tiny_testbed.retain, method="loka", reference=tiny_testbed.holdout,
        steps=10, check_every=5, progress=False,
    )  # fmt: skip
    layers = result.config["chosen"]["layers"]
    spec = architecture(model)
    allowed = {spec.name(w, layer) for layer in layers for w in (spec.mlp_out_weight, *spec.mlp_in_weights)}
    before, after = hf_state_dict(model), hf_state_dict(result.model)
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed and changed <= allowed
    assert [entry["step"] for entry in result.log] == [5, 10][: len(result.log)]


def test_methods_are_reproducible_by_seed(tiny_testbed, model):
    runs = [unlearn(model, tiny_testbed.forget, tiny_testbed.retain, method="gradient_ascent", epochs=2,
                    progress=False, seed=3) for _ in range(2)]  # fmt: skip
    assert loka.fingerprint(runs[0].model) == loka.fingerprint(runs[1].model)


def test_retrain_returns_the_oracle(tiny_testbed, model):
    result = unlearn(model, tiny_testbed.forget, tiny_testbed.retain, method="retrain", oracle=tiny_testbed.oracle_dir)
    assert loka.fingerprint(result.model) == loka.fingerprint(loka.load_model(tiny_testbed.oracle_dir))


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
    with pytest.raises(ValueError, match="unknown option for 'gradient_ascent'"):
        unlearn(model, tb.forget, tb.retain, method="gradient_ascent", learning_rate=1.0)
    with pytest.raises(ValueError, match="alpha must be a number between 0.0 and 1.0"):
        unlearn(model, tb.forget, tb.retain, method="gradient_ascent", alpha=2)
    with pytest.raises(ValueError, match="max_layers must be an integer at least 1"):
        unlearn(model, tb.forget, tb.retain, method="loka", max_layers=0)
    with pytest.raises(ValueError, match="edit must be 'finetune' or 'rewrite'"):
        unlearn(model, tb.forget, tb.retain, method="loka", edit="prune")
    with pytest.raises(ValueError, match="retain_weight must be a number at least 0"):
        unlearn(model, tb.forget, tb.retain, method="loka", retain_weight=-1.0)
    with pytest.raises(ValueError, match="method 'retrain' needs oracle="):
        unlearn(model, tb.forget, tb.retain, method="retrain")
