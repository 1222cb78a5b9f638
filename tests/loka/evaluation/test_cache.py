"""Kept evaluations: what is read back is what was computed, and anything that changes the numbers
changes the key."""

from __future__ import annotations

import json

import pytest
import torch

from loka.base.files import json_default
from loka.evaluation import cache
from loka.evaluation.cache import cached_evaluate, evaluation_key
from loka.evaluation.result import UnlearningEvaluation
from loka.models import load_model, plain_copy
from loka.protocol import Protocol


@pytest.fixture(scope="module")
def setup(tiny_testbed):
    return load_model(tiny_testbed.model_dir), Protocol.from_testbed(tiny_testbed)


def test_an_evaluation_reads_back_equal_from_its_json(setup, tiny_testbed):
    model, protocol = setup
    evaluation = cached_evaluate(model, None, protocol=protocol, label="original")
    evaluation = UnlearningEvaluation(**{**evaluation.__dict__, "oracle": evaluation})  # a nested one too
    text = json.dumps(evaluation.to_dict(), default=json_default)
    back = UnlearningEvaluation.from_dict(json.loads(text))
    assert back == evaluation and back.details == evaluation.details and back.label == "original"
    assert back.relearning is not None and type(back.relearning.grid[0]) is type(evaluation.relearning.grid[0])
    assert json.dumps(back.to_dict(), default=json_default) == text


def test_a_kept_evaluation_is_read_back_not_recomputed(setup, tmp_path, monkeypatch):
    model, protocol = setup
    options = dict(probe=False, relearn=False)
    first = cached_evaluate(model, tmp_path, protocol=protocol, label="original", **options)
    (kept,) = tmp_path.glob("original-*.json")

    def fail(*args, **kwargs):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(cache, "evaluate", fail)
    assert cached_evaluate(model, tmp_path, protocol=protocol, label="original", **options) == first
    kept.write_text("{not json")  # a damaged file is evaluated again
    monkeypatch.undo()
    assert cached_evaluate(model, tmp_path, protocol=protocol, label="original", **options) == first
    assert UnlearningEvaluation.from_dict(json.loads(kept.read_text())) == first


def test_weights_protocol_and_options_each_change_the_key(setup, tiny_testbed):
    model, protocol = setup
    key = evaluation_key(model, protocol, {"probe": False})
    assert evaluation_key(model, protocol, {"probe": False}) == key
    assert evaluation_key(model, protocol, {"probe": True}) != key
    assert evaluation_key(model, Protocol.from_testbed(tiny_testbed, seed=1), {"probe": False}) != key
    other = plain_copy(model)
    with torch.no_grad():
        next(other.parameters())[0, 0] += 1.0
    assert evaluation_key(other, protocol, {"probe": False}) != key
