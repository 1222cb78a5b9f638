"""Verbatim extraction: ROUGE-L against the rouge-score package (as TOFU, MUSE and open-unlearning
call it), and greedy extraction through ``generate()`` on the tiny testbed, for a TransformerBridge
(hooks included) and a plain Hugging Face model."""

from __future__ import annotations

import pytest
import torch
from rouge_score import rouge_scorer
from transformers import AutoModelForCausalLM

import loka
from loka.data.facts import Fact
from loka.data.knowledge import KnowledgeSet
from loka.evaluation.attacks.extraction import (
    Extraction,
    _greedy_continuations,
    extract,
    rouge_l,
    rouge_l_f1,
    rouge_l_recall,
)
from loka.models import logits as model_logits

# (prediction, reference): case, punctuation, stemming, hyphens, digits, word order, empty strings
PAIRS = [
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("The cat, sat.", "the cat sat on the mat"),
    ("The cats were running!", "the cat was runs quickly"),
    ("Al-Kuwaiti was born in 1956.", "Al-Kuwaiti was born on 08/09/1956 in Kuwait City"),
    ("mat the on sat cat the", "the cat sat on the mat"),
    ("He writes novels; his novels are loved.", "His novel-writing is loved by many readers"),
    ("", "a b"),
    ("a b", ""),
]


@pytest.mark.parametrize("use_stemmer", [True, False])
def test_rouge_l_is_rouge_scores(use_stemmer):
    # TOFU evaluate_util.eval_rouge_recall and open-unlearning src/evals/metrics/utils.py
    # (eval_rouge_recall_batch): scorer = RougeScorer([...], use_stemmer=True); scorer.score(gt, gen)
    # MUSE metrics/logger.py (RougeEvalLogger): the same with use_stemmer=False
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=use_stemmer)
    for gen, gt in PAIRS:
        reference = scorer.score(gt, gen)["rougeL"]
        assert rouge_l_recall(gen, gt, use_stemmer=use_stemmer) == reference.recall
        assert rouge_l_f1(gen, gt, use_stemmer=use_stemmer) == reference.fmeasure
        assert tuple(rouge_l(gen, gt, use_stemmer=use_stemmer)) == tuple(reference)


def test_rouge_l_by_hand():
    assert rouge_l_recall("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l_recall("the dog sat on a mat", "the cat sat on the mat") == pytest.approx(4 / 6)
    assert rouge_l_recall("", "a b") == 0.0
    # lower case, punctuation to spaces: "the cat sat" of 6 reference words
    assert rouge_l_recall("The cat, sat.", "the cat sat on the mat") == pytest.approx(0.5)
    # Porter stemming (words longer than 3 characters): cats -> cat, running -> run, runs -> run
    assert rouge_l_recall("cats running", "cat runs") == 1.0
    assert rouge_l_recall("cats running", "cat runs", use_stemmer=False) == 0.0
    # F1 of precision 3/3 and recall 3/6
    assert rouge_l_f1("The cat, sat.", "the cat sat on the mat") == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def models(tiny_testbed):
    dirs = {"original": tiny_testbed.model_dir, "oracle": tiny_testbed.oracle_dir}
    plain = {name: AutoModelForCausalLM.from_pretrained(d).eval() for name, d in dirs.items()}
    return loka.load_model(tiny_testbed.model_dir), plain


def test_extract_finds_memorised_passages_with_a_bridge_and_a_plain_model(tiny_testbed, models):
    bridge, plain = models
    tokenizer = bridge.tokenizer
    passages = tiny_testbed.passages_of("forget")
    memorised = Extraction(exact_match=1.0, rouge_l=1.0, n_passages=len(passages), rouge_l_f1=1.0)
    assert extract(bridge, tokenizer, passages) == memorised
    assert extract(plain["original"], tokenizer, passages, batch_size=1) == memorised
    oracle = extract(plain["oracle"], tokenizer, passages)
    assert oracle.exact_match == 0.0 and oracle.rouge_l < 1.0 and oracle.rouge_l_f1 < 1.0
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        extract(bridge, tokenizer, passages, batch_size=0)


def _stepwise_greedy(model, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """The argmax of the full forward pass, one token at a time (no cache, no padding)."""
    ids = prompt[None]
    for _ in range(n):
        ids = torch.cat([ids, model_logits(model, ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt) :]


@torch.no_grad()
def test_batched_generate_is_stepwise_greedy_and_keeps_bridge_hooks(tiny_testbed, models):
    bridge, plain = models
    tokenizer = bridge.tokenizer
    batch = tiny_testbed.passages_of("retain").encode(tokenizer)
    lengths = (batch.answer_positions + 1).tolist()
    prompts = [batch.input_ids[0, : lengths[0]], batch.input_ids[1, : lengths[1] - 3]]  # unequal: left padding
    n_new = [6, 9]

    def expected(model):
        return [_stepwise_greedy(model, p, n) for p, n in zip(prompts, n_new, strict=True)]

    def generated(model):
        return _greedy_continuations(model, prompts, n_new, tokenizer.pad_token_id, torch.device("cpu"))

    for model in (plain["original"], bridge):
        for got, want in zip(generated(model), expected(model), strict=True):
            assert torch.equal(got, want)
    # a hook on the bridge changes what generate() produces, exactly as it changes the forward pass
    unhooked = generated(bridge)
    with bridge.hooks(fwd_hooks=[("blocks.0.mlp.hook_post", lambda act, hook: torch.zeros_like(act))]):
        hooked, want = generated(bridge), expected(bridge)
    assert all(torch.equal(got, w) for got, w in zip(hooked, want, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(hooked, unhooked, strict=True))


def test_passages_that_fit_one_by_one_are_continued_in_batches_that_fit_and_a_longer_one_is_refused(
    tiny_testbed, models
):
    bridge, plain = models
    tokenizer = bridge.tokenizer
    limit = plain["original"].config.n_positions
    first, second = tiny_testbed.passages_of("forget").facts[:2]
    n = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    filler = " ".join(["Years later, a lawyer from Sofia found the letters."] * 8)
    long_prompt = Fact(id="long prompt", prompt=f"{filler} {first.prompt}", target=first.target.split(".")[0] + ".")
    long_target = Fact(id="long target", prompt=second.prompt, target=f"{second.target} {second.target}")
    assert n(long_prompt.text) < limit and n(long_target.text) < limit  # each fits alone
    assert n(long_prompt.prompt) + n(long_target.text) - n(long_target.prompt) > limit  # one padded batch would not
    passages = KnowledgeSet((long_prompt, long_target), name="passages")
    for model in (bridge, plain["original"]):
        assert extract(model, tokenizer, passages) == extract(model, tokenizer, passages, batch_size=1)
    too_long = KnowledgeSet((Fact(id="too long", prompt=filler, target=f"{filler} {filler}"),), name="passages")
    with pytest.raises(ValueError, match=f"passage 'too long' is .* tokens .* reads at most {limit} positions"):
        extract(bridge, tokenizer, too_long)
