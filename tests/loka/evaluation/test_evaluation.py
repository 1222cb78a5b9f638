"""The shared evaluation: grades, attacks against hand-made numbers, oracle self-consistency, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import loka
from loka.base.files import json_default
from loka.evaluation import UnlearningEvaluation, evaluate
from loka.evaluation.attacks.membership import membership_scores, min_k_plus_plus, token_statistics
from loka.evaluation.attacks.relearning import LORA_LRS, LORA_RANK, LORA_SPLIT_SEEDS
from loka.protocol import Protocol
from loka.scoring.metrics import score_facts, text_token_log_probs


def _evaluation(forget: float, retain: float, auc: float) -> UnlearningEvaluation:
    return UnlearningEvaluation(forget, retain, auc, forget, retain, None, {"loss": auc})


@pytest.mark.parametrize(
    ("forget", "retain", "auc", "quality", "leakage"),
    [
        (0.08, 0.92, 0.53, "excellent", "minimal"),
        (0.10, 0.95, 0.60, "good", "moderate"),
        (0.25, 0.85, 0.35, "good", "significant"),
        (0.05, 0.79, 0.50, "insufficient", "minimal"),
        (0.40, 0.99, 0.66, "insufficient", "significant"),
    ],
)
def test_grades_follow_the_seed_thresholds(forget, retain, auc, quality, leakage):
    evaluation = _evaluation(forget, retain, auc)
    assert evaluation.forget_quality == quality
    assert evaluation.privacy_leakage == leakage


@pytest.fixture(scope="module")
def tiny_models(tiny_testbed):
    return loka.load_model(tiny_testbed.model_dir), loka.load_model(tiny_testbed.oracle_dir)


def test_original_against_oracle(tiny_testbed, tiny_models):
    model, oracle = tiny_models
    tb = tiny_testbed
    ev = evaluate(model, forget=tb.forget, retain=tb.retain, holdout=tb.holdout, oracle=oracle,
                  passages=tb.passages_of("forget"))  # fmt: skip
    ref = ev.oracle
    assert ref is not None and ref.label == "oracle"
    # the original knows the forget facts, the oracle does not
    assert ev.forget_accuracy == pytest.approx(tb.accuracy_table().value("forget facts", "original"))
    assert ref.forget_accuracy == pytest.approx(tb.accuracy_table().value("forget facts", "oracle"))
    assert ev.forget_quality == "insufficient"
    # the LOSS AUC is sklearn's on the attack's scores
    members = text_token_log_probs(model, tb.forget)
    others = text_token_log_probs(model, tb.holdout)
    texts = [f.text for f in tb.forget] + [f.text for f in tb.holdout]
    scores = membership_scores(members + others, texts, attack="loss")
    labels = [1] * len(members) + [0] * len(others)
    assert ev.membership_inference_auc == pytest.approx(roc_auc_score(labels, scores))
    assert ev.membership_inference_auc > 0.9 and abs(ref.membership_inference_auc - 0.5) < 0.2
    # the answer-only LOSS attack: mean log-prob of the target tokens given the prompt
    per_token = [s.log_prob / s.n_target_tokens for s in (score_facts(model, k) for k in (tb.forget, tb.holdout))]
    assert ev.mia_aucs["loss_answer"] == pytest.approx(roc_auc_score(labels, torch.cat(per_token).numpy()))
    assert ev.privleak < -50  # MUSE: near -100 for a model that remembers its training set
    # memorised passages are extracted verbatim by the original only
    assert ev.extraction.exact_match == 1.0 and ref.extraction.exact_match == 0.0
    assert ev.extraction.rouge_l == 1.0 and ref.extraction.rouge_l < 1.0
    # the relearning attack does not damage the original, and the oracle cannot relearn what it
    # never knew from the other half (bounds relative to the models' own numbers)
    assert ev.relearning.after >= 0.9 * ev.relearning.before
    assert ref.relearning.after < ev.relearning.after - 0.3
    # the LoRA attack: rank-8 adapters over its own grid, per held-out fact in the details
    lora = ev.lora_relearning
    assert lora.lora_rank == LORA_RANK and [(p.lr, p.split_seed) for p in lora.grid] == [
        (lr, s) for lr in LORA_LRS for s in LORA_SPLIT_SEEDS
    ]
    assert ev.details["relearning_lora"][1] == tuple(float(c) for c in lora.held_out_correct)
    assert ("LoRA relearn: after", lora.after) in ev.rows() and ref.lora_relearning is not None
    assert "forget quality insufficient" in ev.verdict()
    table = ev.table()
    assert "oracle" in table and "MIA AUC (loss)" in table
    assert ev.to_dict()["oracle"]["label"] == "oracle"


def test_held_out_attacks_min_k_plus_plus_and_in_context(tiny_testbed, tiny_models):
    """Min-K%++'s AUC is sklearn's on each text's Min-K%++ score (k = the evaluation's min_k); the
    in-context attack is score_facts on each forget fact asked after its person's other facts; both
    survive the JSON round trip."""
    model, _ = tiny_models
    tb = tiny_testbed
    ev = evaluate(model, forget=tb.forget, retain=tb.retain, holdout=tb.holdout, relearn=False, probe=False,
                  quantize=False, logit_lens=False, min_k=0.2)  # fmt: skip
    scores = [min_k_plus_plus(*s, k=0.2) for ks in (tb.forget, tb.holdout) for s in token_statistics(model, None, ks)]
    labels = [1] * len(tb.forget) + [0] * len(tb.holdout)
    assert ev.mia_aucs["min_k_plus_plus"] == pytest.approx(roc_auc_score(labels, scores))
    assert ev.details["mia.min_k_plus_plus.members"][1] == pytest.approx(scores[: len(tb.forget)])
    assert ev.details["mia.min_k_plus_plus.nonmembers"][0] == tuple(f.subject for f in tb.holdout)
    asked = tb.forget.in_context()
    correct = score_facts(model, asked, tokenizer=model.tokenizer).first_token_correct
    assert ev.in_context_forget_accuracy == pytest.approx(correct.float().mean().item())
    assert ev.details["in_context"] == (tuple(f.subject for f in asked), tuple(float(c) for c in correct))
    back = UnlearningEvaluation.from_dict(json.loads(json.dumps(ev.to_dict(), default=json_default)))
    assert back.in_context_forget_accuracy == ev.in_context_forget_accuracy
    assert back.mia_aucs["min_k_plus_plus"] == ev.mia_aucs["min_k_plus_plus"]
    assert ("in-context forget acc", ev.in_context_forget_accuracy) in ev.rows()


def test_oracle_against_itself_has_zero_privleak_and_is_reproducible(tiny_testbed, tiny_models):
    _, oracle = tiny_models
    tb = tiny_testbed
    first = evaluate(oracle, forget=tb.forget, retain=tb.retain, holdout=tb.holdout, oracle=oracle)
    assert first.privleak == 0.0
    again = evaluate(oracle, forget=tb.forget, retain=tb.retain, holdout=tb.holdout, oracle=first.oracle)
    assert again.relearning == first.relearning and again.probe == first.probe
    assert again == first


def test_protocol_evaluation_scores_each_set_and_keeps_per_person_details(tiny_testbed, tiny_models):
    model, _ = tiny_models
    protocol = Protocol.from_testbed(tiny_testbed)
    ev = evaluate(model, protocol=protocol, probe=False, relearn=False)
    sets = {"forget": protocol.forget, "retain": protocol.retain_eval, "paraphrase": protocol.paraphrase_eval,
            "unseen_wording": protocol.unseen_wording_eval}  # fmt: skip
    for key, knowledge in sets.items():
        people, values = ev.details[key]
        assert people == tuple(f.subject for f in knowledge)
        assert np.mean(values) == pytest.approx(score_facts(model, knowledge).first_token_accuracy)
    assert ev.retain_accuracy == pytest.approx(score_facts(model, protocol.retain_eval).first_token_accuracy)
    assert ev.unseen_wording_forget_accuracy == pytest.approx(np.mean(ev.details["unseen_wording"][1]))
    members, nonmembers = ev.details["mia.loss.members"], ev.details["mia.loss.nonmembers"]
    labels = [1] * len(members[1]) + [0] * len(nonmembers[1])
    assert ev.membership_inference_auc == pytest.approx(roc_auc_score(labels, members[1] + nonmembers[1]))
    assert set(nonmembers[0]) == set(protocol.nonmembers.subjects)


def test_overlapping_sets_are_refused(tiny_testbed, tiny_models):
    model, _ = tiny_models
    tb = tiny_testbed
    with pytest.raises(ValueError, match=r"forget and retain overlap \(person '.*' is in both\)"):
        evaluate(model, forget=tb.forget, retain=tb.retain + tb.forget, holdout=tb.holdout)
    with pytest.raises(ValueError, match="holdout and forget and retain overlap"):
        evaluate(model, forget=tb.forget, retain=tb.retain, holdout=tb.retain)
    with pytest.raises(ValueError, match="give either protocol= or forget=, not both"):
        evaluate(model, protocol=Protocol.from_testbed(tb), forget=tb.forget)
    with pytest.raises(
        ValueError, match=r"needs protocol= or all of forget=, retain=, holdout= \(missing \['holdout'\]\)"
    ):
        evaluate(model, forget=tb.forget, retain=tb.retain)
    with pytest.raises(ValueError, match="expected a model"):
        evaluate(42, forget=tb.forget, retain=tb.retain, holdout=tb.holdout)


def test_without_an_oracle_the_table_says_which_checks_are_not_calibrated():
    """An evaluation without an oracle does not silently flag nothing: its table and verdict name
    the checks that ran uncalibrated (and why); with an oracle there is no such line."""
    alone = _evaluation(0.05, 0.95, 0.9)
    assert alone.uncalibrated == ("membership inference",)
    note = "not calibrated: membership inference. No oracle was given"
    assert note in alone.table() and alone.to_dict()["uncalibrated"] == ["membership inference"]
    assert "Not calibrated (no oracle), so they flag nothing: membership inference." in alone.verdict()
    judged = UnlearningEvaluation(0.05, 0.95, 0.9, 0.05, 0.95, None, {"loss": 0.9}, oracle=_evaluation(0.0, 1.0, 0.5))
    assert judged.uncalibrated == () and judged.calibration_note() is None
    assert "not calibrated" not in judged.table() and "Not calibrated" not in judged.verdict()
