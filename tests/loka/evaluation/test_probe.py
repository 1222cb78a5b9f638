"""The residual-knowledge probe: it tells the original from the oracle, it sees through an edit that
only silences the output, and it refuses inputs it cannot read."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import loka
from loka.data import Fact, KnowledgeSet
from loka.evaluation.attacks.probe import MIN_RETAIN_PEOPLE, Probe, _prompts, fit_probe, probe_gap, probe_informative
from loka.models import hf_model, quiet_transformers
from loka.scoring.metrics import score_facts


@pytest.fixture(scope="module")
def tiny(tiny_testbed):
    with quiet_transformers():
        original = AutoModelForCausalLM.from_pretrained(tiny_testbed.model_dir).eval()
        oracle = AutoModelForCausalLM.from_pretrained(tiny_testbed.oracle_dir).eval()
    return tiny_testbed, AutoTokenizer.from_pretrained(tiny_testbed.model_dir), original, oracle


@pytest.fixture(scope="module")
def probes(tiny):
    tb, tokenizer, original, oracle = tiny
    return (
        fit_probe(original, tokenizer, tb.forget, tb.retain, seed=0),
        fit_probe(oracle, tokenizer, tb.forget, tb.retain, seed=0),
    )


def test_probe_reads_the_original_and_not_the_oracle(tiny, probes):
    tb, *_ = tiny
    original, oracle = probes
    # measured on the tiny testbed: original 0.70, oracle 0.03, chance 0.30
    assert original.forget_accuracy >= 0.5
    assert oracle.forget_accuracy <= 0.15
    assert original.forget_accuracy > original.chance + 0.2
    assert probe_informative(original, oracle)
    assert not probe_informative(oracle, oracle)
    # one entry per forget fact, in order; the accuracy is their mean
    assert original.forget_ids == tb.forget.ids
    assert len(original.forget_correct) == len(tb.forget) and all(original.forget_readable)
    assert original.forget_accuracy == pytest.approx(np.mean(original.forget_correct))
    assert original.forget_people == tuple(f.subject for f in tb.forget)
    # the block is the one held-out retain people read best
    assert original.layer == int(np.argmax(original.layer_retain_accuracy))
    assert original.retain_accuracy == original.layer_retain_accuracy[original.layer]
    assert original.n_retain_people == len(tb.retain.subjects)


def test_bridge_reads_like_the_hf_model(tiny, probes):
    tb, tokenizer, *_ = tiny
    bridge = loka.load_model(tb.model_dir)
    assert fit_probe(bridge, tokenizer, tb.forget, tb.retain, seed=0) == probes[0]


def _silence_last_mlp(model, tokenizer, forget: KnowledgeSet, retain: KnowledgeSet):
    """A copy whose last MLP alone is fine-tuned to stop saying the forget answers (while still
    saying the retain ones); every other weight stays as it was: suppression by construction."""
    edited = copy.deepcopy(model)
    prefix = f"transformer.h.{edited.config.num_hidden_layers - 1}.mlp."
    trained = [p for name, p in edited.named_parameters() if name.startswith(prefix)]
    for p in edited.parameters():
        p.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(trained, lr=3e-3)
    f_batch, r_batch = forget.encode(tokenizer), retain.encode(tokenizer)
    torch.manual_seed(0)
    for _ in range(60):
        f_logp = f_batch.target_log_probs(
            edited(input_ids=f_batch.input_ids, attention_mask=f_batch.attention_mask).logits
        )
        r_logp = r_batch.target_log_probs(
            edited(input_ids=r_batch.input_ids, attention_mask=r_batch.attention_mask).logits
        )
        # push p(forget answer) towards 0 (log(1 - p)), keep the retain answers
        forget_loss = -torch.log1p(-f_logp[:, 0].exp().clamp(max=1 - 1e-6)).mean()
        loss = forget_loss - r_logp[:, 0].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return edited.eval()


def test_probe_flags_suppression_in_the_output_side(tiny, probes):
    tb, tokenizer, original, oracle = tiny
    edited = _silence_last_mlp(original, tokenizer, tb.forget, tb.retain)
    changed = {n for n, p in hf_model(edited).named_parameters() if not torch.equal(p, original.get_parameter(n))}
    assert changed and all(n.startswith(f"transformer.h.{original.config.num_hidden_layers - 1}.mlp.") for n in changed)
    # the outputs forgot
    assert score_facts(original, tb.forget, tokenizer=tokenizer).first_token_accuracy == 1.0
    assert score_facts(edited, tb.forget, tokenizer=tokenizer).first_token_accuracy <= 0.2
    assert score_facts(edited, tb.retain, tokenizer=tokenizer).first_token_accuracy >= 0.9
    # ... but the probe still reads the facts, as well as from the original, and far above the oracle
    suppressed = fit_probe(edited, tokenizer, tb.forget, tb.retain, seed=0)
    assert suppressed.forget_accuracy == probes[0].forget_accuracy >= 0.5
    assert probe_informative(suppressed, probes[1])


def test_templates_add_wordings_of_facts_with_a_subject():
    fact = Fact("a/born", "Ann Lee was born in", "Oslo", "Ann Lee", "birthplace")
    templates = {"birthplace": ("{s} was born in", "The birthplace of {s} is")}
    assert _prompts(fact, templates) == ["Ann Lee was born in", "The birthplace of Ann Lee is"]
    assert _prompts(fact, {"employer": ("{s} works for",)}) == ["Ann Lee was born in"]
    no_subject = Fact("x", "Somebody was born in", "Oslo", None, "birthplace")
    assert _prompts(no_subject, templates) == ["Somebody was born in"]


def _facts(people: int, relation: str = "birthplace", values: int = 4) -> KnowledgeSet:
    return KnowledgeSet(
        tuple(
            Fact(f"p{i}/{relation}", f"Person {i} was born in", f"City{i % values}", f"Person {i}", relation)
            for i in range(people)
        )
    )


def test_bad_inputs_are_refused_in_one_line(tiny):
    tb, tokenizer, original, _ = tiny
    with pytest.raises(ValueError, match=f"at least {MIN_RETAIN_PEOPLE} people"):
        fit_probe(original, tokenizer, tb.forget, KnowledgeSet(tb.retain.facts[:5]))
    with pytest.raises(ValueError, match="no forget fact can be read.*birthplace"):
        fit_probe(original, tokenizer, _facts(3), tb.retain.filter(lambda f: f.relation != "birthplace"))
    with pytest.raises(ValueError, match="no forget fact can be read"):
        fit_probe(original, tokenizer, _facts(3), _facts(10, values=1))
    with pytest.raises(ValueError, match="layer must be a block index in range"):
        fit_probe(original, tokenizer, tb.forget, tb.retain, layer=7)
    with pytest.raises(ValueError, match="retain must be a KnowledgeSet"):
        fit_probe(original, tokenizer, tb.forget, list(tb.retain))
    with pytest.raises(ValueError, match="contain '{s}'"):
        fit_probe(original, tokenizer, tb.forget, tb.retain, templates={"birthplace": ["was born in"]})
    no_subjects = KnowledgeSet(tuple(Fact(f.id, f.prompt, f.target, None, f.relation) for f in tb.forget))
    with pytest.raises(ValueError, match="no fact with a subject"):
        fit_probe(original, tokenizer, no_subjects, no_subjects, templates={"birthplace": ["{s} was born in"]})


def test_unreadable_facts_are_marked_and_left_out_of_the_accuracy(tiny):
    tb, tokenizer, original, _ = tiny
    unknown = KnowledgeSet((Fact("nobody/hobby", "Kim Roe's hobby is", "chess", "Kim Roe", "hobby"),))
    probe = fit_probe(original, tokenizer, tb.forget + unknown, tb.retain, seed=0, layer=1)
    assert probe.forget_readable == (True,) * len(tb.forget) + (False,)
    assert probe.forget_correct[-1] is False
    assert probe.forget_accuracy == pytest.approx(np.mean(probe.forget_correct[:-1]))


def _probe(correct: list[bool], people: list[str]) -> Probe:
    return Probe(
        layer=0, retain_accuracy=1.0, forget_accuracy=float(np.mean(correct)), chance=0.1,
        forget_correct=tuple(correct), forget_readable=(True,) * len(correct),
        forget_ids=tuple(f"f{i}" for i in range(len(correct))), forget_people=tuple(people),
    )  # fmt: skip


def test_probe_gap_resamples_people():
    people = [f"p{i // 5}" for i in range(50)]  # 10 people, 5 facts each
    rng = np.random.default_rng(0)
    strong = _probe(list(rng.random(50) < 0.8), people)
    weak = _probe(list(rng.random(50) < 0.1), people)
    gap, low = probe_gap(strong, weak)
    assert gap == pytest.approx(strong.forget_accuracy - weak.forget_accuracy)
    assert 0 < low < gap
    assert probe_informative(strong, weak) and not probe_informative(weak, strong)
    # a one-fact lead over a few people is no evidence
    a = _probe([True, False, False, False], ["x", "x", "y", "y"])
    b = _probe([False, False, False, False], ["x", "x", "y", "y"])
    assert not probe_informative(a, b)
    # the same readout is never informative, and probes of different forget sets are not compared
    assert probe_gap(strong, strong) == (0.0, 0.0) and not probe_informative(strong, strong)
    with pytest.raises(ValueError, match="same forget facts"):
        probe_gap(strong, _probe([True] * 4, ["x"] * 4))
