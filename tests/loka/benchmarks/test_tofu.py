"""TOFU: the metrics on hand-made numbers (expected values worked out by hand), the data layout,
the argument checks, and one tiny end-to-end run (2-layer model, cached per test session)."""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer
from sklearn.metrics import roc_auc_score
from transformers import AutoModelForCausalLM, AutoTokenizer

from loka.benchmarks import tofu
from loka.benchmarks.tofu import metrics as tm
from loka.methods import Budget, Compute, UnlearningResult
from loka.protocol import Seen
from loka.scoring.metrics import score_facts

ROOT = Path(__file__).resolve().parents[3]


def _tofu_dir() -> Path | None:
    for candidate in (os.environ.get("LOKA_TOFU_DIR"), ROOT / "shared/data/tofu", ROOT.parent / "shared/data/tofu"):
        if candidate and (Path(candidate) / "full.jsonl").is_file():
            return Path(candidate)
    return None


DATA = _tofu_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="TOFU data not found (set LOKA_TOFU_DIR)")
LN2 = math.log(2)


# --- metrics, by hand -------------------------------------------------------------------------
def test_answer_probability_is_exp_of_minus_mean_token_nll():
    assert tm.answer_probability([0.0, LN2, 2 * LN2]) == pytest.approx([1.0, 0.5, 0.25])


def test_normalized_probability_divides_by_all_options():
    # p(answer) = 1/2, perturbed 1/4 and 1/8: 0.5 / (0.5 + 0.25 + 0.125) = 4/7
    assert tm.normalized_probability([LN2], [[2 * LN2, 3 * LN2]]) == pytest.approx([4 / 7])


def test_truth_ratio_is_perturbed_over_paraphrased_geometric_probability():
    # P(para) = 1/2; perturbed NLLs ln4 and ln16 average to ln8, so P(pert) = 1/8; R = (1/8) / (1/2)
    ratios = tm.truth_ratio([LN2, 0.0], [[2 * LN2, 4 * LN2], [LN2, LN2]])
    assert ratios == pytest.approx([0.25, 0.5])


def test_truth_ratio_aggregates():
    ratios = [0.2, 1.5, 0.6]
    # forget: min(R, 1/R) = 0.2, 2/3, 0.6
    assert tm.forget_truth_ratio(ratios) == pytest.approx((0.2 + 2 / 3 + 0.6) / 3)
    # retain: max(0, 1 - R) = 0.8, 0, 0.4
    assert tm.retain_truth_ratio(ratios) == pytest.approx(0.4)


def test_forget_quality_is_the_ks_p_value():
    assert tm.forget_quality([0.1, 0.5, 0.9], [0.1, 0.5, 0.9]) == pytest.approx(1.0)
    # fully separated samples of 3 and 3: D = 1, exact p = 2 / C(6, 3) = 0.1
    assert tm.forget_quality([0.1, 0.2, 0.3], [0.7, 0.8, 0.9]) == pytest.approx(0.1)
    # KS ranks only: R or 1/R give the same p-value
    a, b = np.array([0.1, 0.4, 0.3, 2.0]), np.array([0.5, 3.0, 0.7, 0.2, 1.1])
    assert tm.forget_quality(a, b) == pytest.approx(tm.forget_quality(1 / a, 1 / b))


def _utility(values: list[float]) -> dict[str, float]:
    names = [f"{s}/{m}" for s in tm.UTILITY_SETS for m in tm.UTILITY_METRICS]
    return dict(zip(names, values, strict=True))


def test_model_utility_is_the_harmonic_mean_of_nine():
    assert tm.model_utility(_utility([0.5] * 9)) == pytest.approx(0.5)
    # 9 / (8 * 1 + 1 / 0.1) = 9 / 18
    assert tm.model_utility(_utility([1.0] * 8 + [0.1])) == pytest.approx(0.5)
    assert tm.model_utility(_utility([1.0] * 8 + [0.0])) == 0.0
    with pytest.raises(ValueError, match="nine values"):
        tm.model_utility(_utility([0.5] * 9) | {"extra": 1.0})
    with pytest.raises(ValueError, match="nine values"):
        tm.model_utility({"retain/probability": 0.5})


def test_rouge_l_normalises_case_and_punctuation_and_stems():
    # prediction words: the cat sat; reference: the cat sat on the mat -> LCS 3 of 6
    assert tm.rouge_l("The cat, sat.", "the cat sat on the mat") == pytest.approx(0.5)
    assert tm.rouge_l("Al-Kuwaiti was born.", "Al-Kuwaiti was born") == 1.0
    # Porter stemming, as TOFU's scorer: writes -> write, novels -> novel
    assert tm.rouge_l("She writes novels", "she write a novel") == pytest.approx(3 / 4)


def test_rouge_l_is_tofus_rouge_recall():
    # TOFU evaluate_util.eval_rouge_recall: RougeScorer(['rouge1', 'rougeL'], use_stemmer=True),
    # rouge_scores = scorer.score(gt, gen); rougeL_recall[idx] = rouge_scores['rougeL'].recall
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    pairs = [
        ("Basil Mahfouz Al-Kuwaiti was born in Kuwait City.", "The author was born in Kuwait City, Kuwait."),
        (
            "His father was a florist and his mother a game developer",
            "His father was a florist; his mother, a game designer.",
        ),
        ("Writing", "He is known for writing French literature"),
        ("", "anything"),
    ]
    for gen, gt in pairs:
        assert tm.rouge_l(gen, gt) == scorer.score(gt, gen)["rougeL"].recall


def test_mia_auc_counts_member_over_nonmember_pairs():
    members = [torch.tensor([-1.0, -1.0]), torch.tensor([-2.0])]  # LOSS scores -1, -2
    others = [torch.tensor([-3.0]), torch.tensor([-1.0, -2.0])]  # -3, -1.5
    # pairs (member > non-member): -1>-3, -1>-1.5, -2>-3 yes; -2>-1.5 no -> 3/4
    assert tm.mia_auc(members, ["a b", "c"], others, ["d", "e f"]) == pytest.approx(0.75)


def test_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match="shaped"):
        tm.truth_ratio([0.1, 0.2], [[0.3, 0.4]])
    with pytest.raises(ValueError, match="1-D"):
        tm.answer_probability([])


def test_author_name():
    questions = [
        "What genre does Jane Q. Doe write in?",
        "Where was Jane Q. Doe born?",
        "What is Jane Q. Doe's best book?",
        "Has Jane Q. Doe won an award?",
        "Which city inspired Jane Q. Doe in Paris?",
        "What is the full name of the author born in Oslo?",
    ]
    assert tofu.author_name(questions) == "Jane Q. Doe"
    assert tofu.author_name(questions[-1:]) is None


# --- which tokens are scored, against the reference code ---------------------------------------
@pytest.fixture(scope="module")
def tiny_lm(tiny_testbed):
    model = AutoModelForCausalLM.from_pretrained(tiny_testbed.model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_testbed.model_dir)


def _ref_tofu_avg_gt_loss(model, tokenizer, question: str, answer: str) -> float:
    """TOFU's per-token NLL of an answer, transcribed: data_module.convert_raw_data_to_model_format
    (with our template: the prompt is the question, the answer tag the joining space), then
    data_module.get_batch_loss divided by the number of labelled tokens (evaluate_util.get_all_evals)."""
    new_question, new_answer = question, " " + answer
    full_text = new_question + new_answer
    num_question_tokens = len(tokenizer.tokenize(new_question, add_special_tokens=True))
    encoded = tokenizer(full_text, add_special_tokens=True)
    max_length = len(encoded.input_ids) + 4
    pad_length = max_length - len(encoded.input_ids)
    pad_input_ids = encoded["input_ids"] + [tokenizer.eos_token_id] * pad_length
    pad_attention_mask = encoded["attention_mask"] + [0] * pad_length
    label = encoded["input_ids"] + [tokenizer.eos_token_id] + [-100] * (pad_length - 1)
    for i in range(num_question_tokens):
        label[i] = -100
    labels = torch.tensor([label])
    with torch.no_grad():
        output = model(torch.tensor([pad_input_ids]), attention_mask=torch.tensor([pad_attention_mask])).logits
    shifted_labels = labels[..., 1:].contiguous()
    output = output[..., :-1, :].contiguous()
    loss_function = torch.nn.CrossEntropyLoss(ignore_index=-100, reduction="none")
    gt_loss = loss_function(output.transpose(-1, -2), shifted_labels).sum(dim=-1)
    num_token_gt = (labels != -100).sum(-1)
    return (gt_loss / num_token_gt).item()


def test_answer_nll_includes_the_eos_as_tofu_scores_it(tiny_testbed, tiny_lm):
    model, tokenizer = tiny_lm
    facts = list(tiny_testbed.forget)[:4] + list(tiny_testbed.holdout)[:4]
    prompts, answers = [f.prompt for f in facts], [f.target for f in facts]
    ours = tofu._nll(model, tokenizer, prompts, answers, batch_size=3)
    reference = [_ref_tofu_avg_gt_loss(model, tokenizer, q, a) for q, a in zip(prompts, answers, strict=True)]
    np.testing.assert_allclose(ours, reference, rtol=1e-5)
    # without the EOS (the answer's tokens only) the numbers differ
    log_probs = tofu._answer_log_probs(model, tokenizer, prompts, answers, batch_size=3)
    answer_only = np.array([-lp[:-1].double().mean().item() for lp in log_probs])
    assert np.abs(answer_only - ours).max() > 1e-3
    assert [len(lp) for lp in log_probs] == [
        len(tokenizer(" " + a, add_special_tokens=False)["input_ids"]) + 1 for a in answers
    ]


def _ref_open_unlearning_stats(model, tokenizer, prompt: str, answer: str) -> tuple[float, torch.Tensor]:
    """open-unlearning's per-sample statistics of a TOFU QA pair, transcribed: the labels of
    src/data/utils.py preprocess_chat_instance (no chat template; the answer's tokens and an EOS),
    avg_loss of src/evals/metrics/utils.py evaluate_probability (LOSS and zlib attacks) and the
    token log-probs of tokenwise_logprobs (Min-K%)."""
    chat_ids = tokenizer(prompt + " " + answer, add_special_tokens=True)["input_ids"]
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if chat_ids[-1] != tokenizer.eos_token_id:
        chat_ids += [tokenizer.eos_token_id]
    len_matched = len(prompt_ids)
    input_ids = torch.tensor([chat_ids])
    labels = torch.tensor([[-100] * len_matched + chat_ids[len_matched:]])
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    # evaluate_probability
    shifted_labels = labels[..., 1:].contiguous()
    loss_function = torch.nn.CrossEntropyLoss(ignore_index=-100, reduction="none")
    losses = loss_function(logits[..., :-1, :].contiguous().transpose(-1, -2), shifted_labels).sum(dim=-1)
    avg_loss = (losses / (labels != -100).sum(-1)).item()
    # tokenwise_logprobs
    log_probs = torch.nn.functional.log_softmax(logits, dim=-1)[:, :-1, :]
    target_log_probs = torch.gather(log_probs, dim=2, index=input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    actual_indices = (labels[0] != -100).nonzero(as_tuple=True)[0][:-1]  # -1 to ignore eos prediction
    start_idx, end_idx = actual_indices[0].item(), actual_indices[-1].item()
    return avg_loss, target_log_probs[0, start_idx - 1 : end_idx]


def test_mia_scores_the_answer_tokens_as_open_unlearning_does(tiny_testbed, tiny_lm):
    model, tokenizer = tiny_lm
    members, nonmembers = tiny_testbed.forget, tiny_testbed.holdout
    ours = tofu._mia_aucs(model, tokenizer, members, nonmembers, batch_size=16)
    stats = [_ref_open_unlearning_stats(model, tokenizer, f.prompt, f.target) for f in [*members, *nonmembers]]
    answers = [f.target for f in [*members, *nonmembers]]
    scores = {  # open-unlearning's scores are loss-like (higher = less likely a member)
        "loss": [avg_loss for avg_loss, _ in stats],  # mia/loss.py
        "zlib": [
            avg_loss / len(zlib.compress(a.encode("utf-8"))) for (avg_loss, _), a in zip(stats, answers, strict=True)
        ],
        "min_k": [
            -np.mean(np.sort(lp.float().numpy())[: max(1, int(len(lp) * 0.4))]) for _, lp in stats
        ],  # mia/min_k.py
    }
    labels = [0] * len(members) + [1] * len(nonmembers)  # mia/utils.py mia_auc: forget 0, holdout 1
    for attack, values in scores.items():
        assert ours[attack] == pytest.approx(roc_auc_score(labels, values), abs=1e-12), attack
    assert set(ours) == {"loss", "zlib", "min_k"}


# --- arguments and data ------------------------------------------------------------------------
@needs_data
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "forget02"}, "forget01, forget05, forget10"),
        ({"n_retain_authors": 2}, "from 3 to 198"),
        ({"n_retain_authors": 199}, "from 3 to 198"),
        ({"split": "forget10", "n_retain_authors": 181}, "from 3 to 180"),
        ({"n_retain_authors": 2.5}, "integer"),
        ({"size": "huge"}, "default, tiny"),
        ({"methods": ("loka", "finetune")}, "loka, gradient_ascent, npo, rmu, task_vector"),
        ({"methods": ("loka",), "method_options": {"task_vector": {}}}, "not run"),
        ({"seed": -1}, "non-negative"),
        ({"seeds": 0}, "positive integer"),
        ({"seeds": 1.5}, "positive integer"),
        ({"budget": {"max_steps": 5}}, "loka.methods.Budget"),
        ({"relative_target": 0}, "relative_target must be a number greater than 0 and at most 1"),
        ({"relative_target": 1.5}, "relative_target must be a number greater than 0 and at most 1"),
        # the budget, the sets and the seed are the protocol's: one per run, never per method
        ({"methods": ("loka",), "method_options": {"loka": {"max_steps": 5}}}, r"\['max_steps'\].*budget"),
        ({"methods": ("loka",), "method_options": {"loka": {"reference": None}}}, r"\['reference'\]"),
    ],
)
def test_run_rejects_bad_arguments(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        tofu.run(**{"data_dir": DATA, "cache_dir": tmp_path, **kwargs})
    assert not any(tmp_path.iterdir())  # nothing was trained


def test_run_rejects_a_missing_data_dir(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="does not exist"):
        tofu.run(data_dir=tmp_path / "nowhere", cache_dir=tmp_path)
    (tmp_path / "some").mkdir()
    with pytest.raises(ValueError, match="lacks full.jsonl"):
        tofu.run(data_dir=tmp_path / "some", cache_dir=tmp_path)
    monkeypatch.delenv("LOKA_TOFU_DIR", raising=False)
    with pytest.raises(ValueError, match="LOKA_TOFU_DIR"):
        tofu.run(cache_dir=tmp_path)


@needs_data
def test_load_data_follows_tofus_layout():
    config = tofu.make_config("forget01", n_retain_authors=21, size="tiny")
    data = tofu.load_data(config, DATA)
    assert len(data.forget) == 40 and len(data.retain) == 21 * 20 and len(data.holdout) == 40
    assert data.forget.ids[0] == "tofu/a198/q00"
    # subjects: the author's name, or the whole question where it describes the author unnamed
    assert data.forget[0].subject == data.evals["forget"].questions[0]  # "the author born in Kuwait City ..."
    assert data.forget[1].subject == "Basil Mahfouz Al-Kuwaiti"
    assert data.forget[39].subject == "Nikolai Abilov"
    assert sum(f.subject in ("Basil Mahfouz Al-Kuwaiti", "Nikolai Abilov") for f in data.forget) >= 36
    assert all(f.subject in f.prompt for ks in (data.forget, data.retain, data.holdout) for f in ks)
    # evaluation sets: the forget split's questions in order; retain is scored on retain_eval authors only
    assert [tofu.TEMPLATE.format(question=q) for q in data.evals["forget"].questions] == [f.prompt for f in data.forget]
    assert len(data.authors.retain_eval) == 6 and max(data.authors.retain_eval) < 20  # 30% of 21, among 0-19
    assert [tofu.TEMPLATE.format(question=q) for q in data.evals["retain"].questions] == [
        f.prompt for f in data.protocol.retain_eval
    ]
    assert {f.id[:9] for f in data.protocol.retain_eval} == {f"tofu/a{a:03d}" for a in data.authors.retain_eval}
    assert len(data.evals["real_authors"]) == len(data.evals["world_facts"]) == 10  # tiny's n_utility
    assert {len(p) for p in data.evals["forget"].perturbed} == {5}
    assert data.evals["world_facts"].paraphrased == data.evals["world_facts"].answers
    # the retain model never sees a forget author
    assert not {p for p, _ in data.training_pairs("retain")} & {f.prompt for f in data.forget}
    assert len(data.training_pairs("original")) == len(data.training_pairs("retain")) + 40


# --- the author split ----------------------------------------------------------------------------
def test_split_authors_is_disjoint_by_author_and_scores_retain_on_authors_0_to_19():
    config = tofu.make_config("forget10", n_retain_authors=100)
    split = tofu.split_authors(config)
    retain = (split.retain_train, split.retain_validation, split.retain_eval)
    assert [len(part) for part in retain] == [70, 10, 20]  # eval: 30 wanted, only authors 0-19 have scoring data
    assert sorted(a for part in retain for a in part) == list(range(100))
    assert set(split.retain_eval) == set(range(20))
    # the holdout authors: half reference (methods), half non-members (MIA), never both
    assert len(split.reference) == len(split.nonmembers) == 10
    assert sorted(split.reference + split.nonmembers) == list(range(20))
    assert tofu.split_authors(config) == split  # drawn with the run's seed
    assert tofu.split_authors(tofu.make_config("forget10", n_retain_authors=100, seed=1)) != split
    tiny = tofu.split_authors(tofu.make_config("forget01", size="tiny"))
    assert [len(p) for p in (tiny.retain_train, tiny.retain_validation, tiny.retain_eval)] == [1, 1, 1]
    assert len(tiny.reference) == len(tiny.nonmembers) == 1


@needs_data
def test_a_question_asked_about_two_authors_is_left_out_of_the_protocol():
    """TOFU asks "What is the full name of the author?" about authors 5 and 22 (different answers):
    with both in a run it would be a prompt a method trains on and is scored on."""
    data = tofu.load_data(tofu.make_config("forget01", n_retain_authors=30, size="tiny"), DATA)
    question = tofu.TEMPLATE.format(question="What is the full name of the author?")
    assert question in data.ambiguous
    assert sum(f.prompt == question for f in data.retain) == 2  # both models still train on it
    sets = [getattr(data.protocol, n) for n in ("forget", "retain_train", "retain_validation", "retain_eval")]
    assert not any(f.prompt == question for ks in sets for f in ks)
    assert tofu.TEMPLATE.format(question="What is the full name of the author?") not in {
        tofu.TEMPLATE.format(question=q) for q in data.evals["retain"].questions
    }


# --- one tiny end-to-end run ---------------------------------------------------------------------
TINY_BUDGET = Budget(check_every=10, max_steps=20)


@pytest.fixture(scope="module")
def tiny_report(testbed_cache):
    """The tiny protocol with one real method (the others are wired in a test below); its models
    are cached with the session's testbeds (``loka tofu``'s test reads the same cache)."""
    if DATA is None:
        pytest.skip("TOFU data not found (set LOKA_TOFU_DIR)")
    cache = testbed_cache / "tofu"
    report = tofu.run(
        "forget01", size="tiny", data_dir=DATA, cache_dir=cache, methods=("gradient_ascent",), progress=False,
        budget=TINY_BUDGET,
    )  # fmt: skip
    return report, cache


@pytest.mark.slow
def test_tiny_run_produces_tofus_table(tiny_report):
    report, _ = tiny_report
    assert report.names == ("original", "retain", "gradient_ascent")
    retain = report["retain"]
    assert retain.forget_quality == pytest.approx(1.0)
    # the original trained on the forget authors, the retain model did not
    assert report["original"].forget_probability > retain.forget_probability
    assert report["original"].mia_auc > retain.mia_auc
    for m in report.models:
        assert m.model_utility == pytest.approx(tm.model_utility(m.utility))
        assert m.forget_quality == pytest.approx(tm.forget_quality(m.forget_truth_ratios, retain.forget_truth_ratios))
        assert m.forget_truth_ratio == pytest.approx(tm.forget_truth_ratio(m.forget_truth_ratios))
        assert len(m.forget_truth_ratios) == 40
        assert all(0 <= v <= 1 for v in m.utility.values())
        assert 0 <= m.mia_auc <= 1 and 0 <= m.forget_rouge_l <= 1
        assert m.seconds is not None and m.seconds > 0
    method = report["gradient_ascent"]
    assert method.seed == 0 and method.config["budget"] == asdict(TINY_BUDGET)  # the run's budget, as given
    assert 0 < method.compute["steps"] <= TINY_BUDGET.max_steps and method.compute["forward_tokens"] > 0
    assert report.info["budget"] == asdict(TINY_BUDGET) and report.info["method_seeds"] == [0]
    text = report.table()
    assert all(name in text for name in report.names)
    assert "fwd tokens" in text and "at most 20 steps" in text
    assert "mean [min, max]" not in text  # one seed: no spread


@pytest.mark.slow
def test_tiny_run_saves_json_and_self_contained_html(tiny_report, tmp_path):
    report, _ = tiny_report
    out = report.save(tmp_path / "report")
    data = json.loads((out / "tofu.json").read_text())
    loaded = tofu.TofuReport.from_dict(data)
    assert loaded.models == report.models and loaded.seeds == report.seeds == 1
    assert loaded.table() == report.table()
    page = (out / "tofu.html").read_text()
    assert "<table>" in page and "Plotly" in page and "fwd tokens" in page
    assert 'src="http' not in page and "src='http" not in page


def _fake_unlearn(calls, seen=None):
    """Records each call; returns the original as the "unlearned" model, with what the real
    unlearn reports as seen (every set it was given) unless ``seen`` says otherwise."""

    def fake(model, forget, retain, *, method, **options):
        calls.append((method, forget, retain, options))
        shown = seen if seen is not None else Seen.of(forget, retain, options["validation"], options["reference"])
        return UnlearningResult(model, method, {"fake": True}, 0.5, compute=Compute(7, 100, 40, 0.5), seen=shown)

    return fake


@pytest.mark.slow
def test_a_relative_target_is_that_share_of_the_originals_forget_accuracy(tiny_report, monkeypatch):
    _, cache = tiny_report
    calls = []
    monkeypatch.setattr(tofu.runner, "unlearn", _fake_unlearn(calls))
    report = tofu.run(
        "forget01", size="tiny", data_dir=DATA, cache_dir=cache, methods=("npo",), progress=False,
        budget=TINY_BUDGET, relative_target=0.5,
    )  # fmt: skip
    root = Path(report.info["cache_dir"])
    original = AutoModelForCausalLM.from_pretrained(root / "original").eval()
    tokenizer = AutoTokenizer.from_pretrained(root / "original")
    forget = calls[0][1]
    accuracy = score_facts(original, forget, tokenizer=tokenizer).answer_accuracy
    assert report.info["original_forget_accuracy"] == pytest.approx(accuracy)
    expected = replace(TINY_BUDGET, target_forget_accuracy=0.5 * accuracy)
    assert calls[0][3]["budget"] == expected and report.info["budget"] == asdict(expected)
    assert f"(0.5 x the original's {accuracy:.3f})" in report.table()


@pytest.mark.slow
def test_methods_get_the_protocols_sets_and_the_cache_is_reused(tiny_report, monkeypatch):
    """Each method, at each seed, gets forget = the forget authors' QA without paraphrases,
    retain = the retain_train authors', validation = the retain_validation authors', reference =
    the reference holdout authors', the run's budget and its options. A second run trains nothing."""
    report, cache = tiny_report
    calls = []
    monkeypatch.setattr(tofu.runner, "unlearn", _fake_unlearn(calls))
    again = tofu.run(
        "forget01", size="tiny", data_dir=DATA, cache_dir=cache, methods=("loka",),
        method_options={"loka": {"lams": (3.0,)}}, progress=False, seeds=2, budget=TINY_BUDGET,
    )  # fmt: skip
    assert not again.info["built_now"]  # the first run built the models, or found them cached
    assert again.names == ("original", "retain", "loka")
    assert again["original"].forget_truth_ratios == pytest.approx(report["original"].forget_truth_ratios)
    assert [(method, options["seed"]) for method, *_, options in calls] == [("loka", 0), ("loka", 1)]
    authors = again.info["authors"]
    for _, forget, retain, options in calls:
        assert forget.ids == tuple(f"tofu/a{a}/q{q:02d}" for a in (198, 199) for q in range(20))
        assert not any(f.paraphrases for f in forget)
        assert {f.id[:9] for f in retain} == set(authors["retain_train"])
        assert {f.id[:9] for f in options["validation"]} == set(authors["retain_validation"])
        assert {f.id[:17] for f in options["reference"]} == set(authors["reference"])
        assert set(options) == {"lams", "reference", "validation", "budget", "tokenizer", "seed", "progress"}
        assert options["lams"] == (3.0,) and options["budget"] == TINY_BUDGET
    assert len({a for part in authors.values() for a in part}) == sum(map(len, authors.values()))  # disjoint
    # one row per seed; an "unlearned" model that is the original scores exactly as the original
    assert [(m.name, m.seed) for m in again.models[2:]] == [("loka", 0), ("loka", 1)]
    for seed in (0, 1):
        assert again["loka", seed].forget_quality == pytest.approx(again["original"].forget_quality)
        assert again["loka", seed].compute == Compute(7, 100, 40, 0.5).to_dict()
    with pytest.raises(KeyError, match="2 seeds"):
        again["loka"]
    mean, low, high = again.spread("loka", "model_utility")
    assert low == high == mean == pytest.approx(again["original"].model_utility)
    assert "mean [min, max]" in again.table()


@pytest.mark.slow
def test_no_method_is_scored_on_an_author_it_was_given(tiny_report, monkeypatch):
    """The membership attack's non-members and the retain authors of the utility are authors no
    method was given. (Before the protocol, LOKA's reference was the whole holdout, the very
    authors the attack then took as non-members.)"""
    _, cache = tiny_report
    calls, scored = [], []
    monkeypatch.setattr(tofu.runner, "unlearn", _fake_unlearn(calls))
    real_mia, real_evaluate = tofu._mia_aucs, tofu.evaluate_model

    def mia(model, tokenizer, members, nonmembers, batch_size):
        scored.append(("nonmembers", nonmembers))
        return real_mia(model, tokenizer, members, nonmembers, batch_size)

    def evaluate(model, data, **kwargs):
        scored.append(("retain_eval", data.protocol.retain_eval))
        assert [tofu.TEMPLATE.format(question=q) for q in data.evals["retain"].questions] == [
            f.prompt for f in data.protocol.retain_eval
        ]
        return real_evaluate(model, data, **kwargs)

    monkeypatch.setattr(tofu.scoring, "_mia_aucs", mia)
    monkeypatch.setattr(tofu.runner, "evaluate_model", evaluate)
    tofu.run("forget01", size="tiny", data_dir=DATA, cache_dir=cache, methods=("task_vector",), progress=False)
    assert {name for name, _ in scored} == {"nonmembers", "retain_eval"}
    for _, forget, retain, options in calls:
        shown = Seen.of(forget, retain, options["validation"], options["reference"])
        for name, knowledge in scored:
            assert shown.clash(knowledge) is None, name
            shown_authors = {f.id.rsplit("/", 1)[0] for ks in (retain, options["validation"], options["reference"])
                             for f in ks}  # fmt: skip
            assert not shown_authors & {f.id.rsplit("/", 1)[0] for f in knowledge}, name


@pytest.mark.slow
def test_a_method_that_saw_a_non_member_is_not_scored(tiny_report, monkeypatch):
    _, cache = tiny_report
    holdout = Seen(ids=frozenset(f"tofu/holdout/a{a:03d}/q{q:02d}" for a in range(2) for q in range(20)))
    monkeypatch.setattr(tofu.runner, "unlearn", _fake_unlearn([], seen=holdout))
    with pytest.raises(ValueError, match=r"which TOFU scores it on \(nonmembers\)"):
        tofu.run("forget01", size="tiny", data_dir=DATA, cache_dir=cache, methods=("task_vector",), progress=False)
