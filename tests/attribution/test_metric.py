"""The metric: log p(target | prompt) per fact, its log-odds, and the logit difference against a contrast."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

import attribution
from attribution.metric import FactMetric
from loka.data import Fact, KnowledgeSet
from loka.scoring.metrics import score_facts
from loka.testbed import Testbed


@pytest.fixture(scope="module")
def facts(tiny_testbed: Testbed) -> KnowledgeSet:
    return KnowledgeSet(tiny_testbed.forget.facts[:10] + tiny_testbed.passages.facts[:2], name="mixed")


def first_token(model: TransformerBridge, fact: Fact, target: str) -> int:
    return KnowledgeSet((Fact(fact.id, fact.prompt, target),)).encode(model).target_ids[0, 0].item()


def contrast_for(model: TransformerBridge, facts: KnowledgeSet) -> dict[str, str]:
    """For each fact, another answer of a fact in the set whose first token differs."""
    out = {}
    for fact in facts:
        mine = first_token(model, fact, fact.target)
        out[fact.id] = next(o.target for o in facts if first_token(model, fact, o.target) != mine)
    return out


def test_log_prob_is_loka_metrics_log_prob(model, facts):
    ours = attribution.metric_values(model, facts, batch_size=5)
    reference = score_facts(model, facts)
    assert ours.fact_ids == facts.ids and ours.metric == "log_prob"
    assert torch.allclose(ours.values, reference.log_prob, atol=1e-5)
    assert ours.mean == pytest.approx(reference.mean_log_prob, abs=1e-5)
    assert (ours.values <= 0).all()
    assert (facts.encode(model).target_mask.sum(-1)[-2:] > 10).all()  # passages: sums over many tokens


def test_logit_diff_reads_the_first_target_token_against_the_contrast(model, facts):
    contrast = contrast_for(model, facts)
    ours = attribution.metric_values(model, facts, contrast=contrast)
    assert ours.metric == "logit_diff"
    batch = facts.encode(model)
    with torch.no_grad():
        logits = model(batch.input_ids, attention_mask=batch.attention_mask)
    at_answer = logits[torch.arange(len(batch)), batch.answer_positions]
    contrast_ids = [first_token(model, f, contrast[f.id]) for f in facts]
    expected = (
        at_answer[torch.arange(len(batch)), batch.target_ids[:, 0]] - at_answer[torch.arange(len(batch)), contrast_ids]
    )
    assert torch.allclose(ours.values, expected, atol=1e-4)
    assert (ours.values[:10] > 0).all()  # the model knows these facts: target beats contrast


def test_log_odds_is_log_p_minus_log_one_minus_p_summed_over_the_target(model, facts):
    ours = attribution.metric_values(model, facts, metric="log_odds", batch_size=5)
    assert ours.metric == "log_odds"
    batch = facts.encode(model)
    with torch.no_grad():
        logits = model(batch.input_ids, attention_mask=batch.attention_mask).double()
    expected = []
    for row in range(len(batch)):
        total = torch.zeros((), dtype=torch.float64)
        for position, target, keep in zip(
            batch.prediction_positions[row], batch.target_ids[row], batch.target_mask[row], strict=True
        ):
            if keep:
                p = logits[row, position].softmax(-1)[target]
                total += torch.log(p) - torch.log1p(-p)
        expected.append(total)
    assert torch.allclose(ours.values.double(), torch.stack(expected), atol=1e-3, rtol=1e-4)
    log_prob = attribution.metric_values(model, facts).values
    assert (ours.values > log_prob).all()  # log p - log(1 - p) > log p wherever p > 0


def test_extra_contrast_ids_are_ignored(model, facts):
    contrast = contrast_for(model, facts) | {"someone else/birthplace": "Oslo"}
    assert len(attribution.metric_values(model, facts, contrast=contrast)) == len(facts)


@pytest.mark.parametrize(
    ("metric", "contrast", "message"),
    [
        ("accuracy", None, r"unknown metric 'accuracy'; use one of 'log_prob', 'logit_diff', 'log_odds'"),
        ("logit_diff", None, r"metric='logit_diff' needs contrast="),
        ("log_prob", {"a": "b"}, r"a contrast is only read by metric='logit_diff'"),
        ("log_odds", {"a": "b"}, r"a contrast is only read by metric='logit_diff'"),
    ],
)
def test_metric_options_are_checked(metric, contrast, message):
    with pytest.raises(ValueError, match=message):
        FactMetric.resolve(metric, contrast)


def test_contrast_must_cover_every_fact_and_differ_from_the_target(model, facts):
    with pytest.raises(ValueError, match=r"needs a contrast for every fact; 11 of 12 have none"):
        attribution.metric_values(model, facts, contrast={facts[0].id: "Oslo"})
    same = {f.id: f.target for f in facts}
    with pytest.raises(ValueError, match=r"starts with the same token as the target"):
        attribution.metric_values(model, facts, contrast=same)
    spaced = KnowledgeSet((Fact("f", "Ann was born in ", "Oslo"),))
    with pytest.raises(ValueError, match=r"bad contrast: fact 'f': target '' tokenizes to no tokens"):
        attribution.metric_values(model, spaced, contrast={"f": ""})
