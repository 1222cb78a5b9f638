"""bench/qa_case.py's request from SQuAD: the shipped paragraphs, the split by paragraph, passages
that rejoin to their paragraph, facts without subjects, a protocol whose sets are disjoint."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

from loka.protocol import Protocol

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("qa_case", ROOT / "bench" / "qa_case.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_squad_paragraphs_split_into_a_subject_less_request_and_a_protocol():
    qa = _bench()
    kept = qa.paragraphs(qa.DATA, max_context=800, max_answer_words=4)
    assert (len(kept), sum(len(p["qas"]) for p in kept)) == (116, 505)  # what docs/without-subjects.md reports
    assert all(len(p["context"]) <= 800 and len(p["qas"]) >= 3 for p in kept)
    assert all(len(q["answer"].split()) <= 4 for p in kept for q in p["qas"])
    order = list(range(len(kept)))
    random.Random(0).shuffle(order)
    forget, holdout, retain = ([kept[i] for i in order[a:b]] for a, b in ((0, 6), (6, 22), (22, None)))
    passages = qa.passage_facts(forget)
    for fact, paragraph in zip(passages, forget, strict=True):
        assert fact.text == paragraph["context"] and fact.prompt and fact.target
    facts = qa.question_facts(forget, "forget")
    assert len(facts) == 25 and all(f.subject is None and f.prompt.startswith("Question: ") for f in facts)
    protocol = Protocol.from_sets(
        forget=facts, retain=qa.question_facts(retain, "retain"), holdout=qa.question_facts(holdout, "holdout"),
        passages=passages,
    )  # fmt: skip
    assert protocol.sizes()["retain_train"] == 249 and protocol.sizes()["retain_validation"] == 41
    one_sentence = {"id": "x/0", "context": "no full stop here at all", "qas": []}
    assert qa.passage_facts([one_sentence]).facts[0].text == one_sentence["context"]
