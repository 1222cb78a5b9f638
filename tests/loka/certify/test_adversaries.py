"""The two edits built to fool a certificate (:mod:`loka.certify.adversaries`), on the tiny testbed:
each does what it claims, and nothing more."""

from __future__ import annotations

import pytest
import torch

from loka.certify.adversaries import match_reference_loss, output_projection, suppress
from loka.data.encoding import encode_facts
from loka.models import hf_state_dict, load_model
from loka.protocol import Protocol
from loka.scoring.metrics import score_facts, text_nll


@pytest.fixture(scope="module")
def setting(tiny_testbed):
    model = load_model(tiny_testbed.model_dir)
    return model, model.tokenizer, Protocol.from_testbed(tiny_testbed)


def _accuracy(model, tokenizer, knowledge) -> float:
    return float(score_facts(model, knowledge, tokenizer=tokenizer).first_token_correct.float().mean())


def test_suppression_stops_the_answers_and_leaves_every_earlier_weight_alone(setting):
    model, tokenizer, p = setting
    edited = suppress(model, tokenizer, p.forget, p.retain_train, lr=3e-3, target_accuracy=0.1)
    assert _accuracy(model, tokenizer, p.forget) > 0.9
    assert _accuracy(edited, tokenizer, p.forget) <= 0.1
    assert _accuracy(edited, tokenizer, p.retain_eval) >= _accuracy(model, tokenizer, p.retain_eval) - 0.1
    before, after = hf_state_dict(model), edited.state_dict()
    changed = {n for n in after if not torch.equal(before[n], after[n])}
    assert changed and changed <= set(output_projection(edited))  # only the last block's MLP output
    assert all(p.requires_grad for p in edited.parameters())  # handed back trainable, like any copy
    assert _accuracy(model, tokenizer, p.forget) > 0.9  # the input model is untouched


def test_loss_matching_pulls_the_forget_texts_onto_the_reference(setting):
    model, tokenizer, p = setting

    def mean_nll(m, knowledge) -> float:
        with torch.no_grad():
            return float(text_nll(m, encode_facts(knowledge.facts, tokenizer)).mean())

    gap = mean_nll(model, p.reference) - mean_nll(model, p.forget)
    edited = match_reference_loss(model, tokenizer, p.forget, p.reference, p.retain_train, lr=1e-3, tolerance=0.05)
    after = mean_nll(edited, p.reference) - mean_nll(edited, p.forget)
    assert gap > 1.0  # the original knows its forget texts far better than strangers'
    assert abs(after) <= 0.05 * mean_nll(edited, p.reference) + 1e-6
