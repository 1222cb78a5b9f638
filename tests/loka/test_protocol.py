"""The protocol: no method sees what it is scored on; each former leak is refused by construction."""

from __future__ import annotations

import hashlib
import json

import pytest

import loka
from loka.base.errors import UsageError
from loka.data import KnowledgeSet
from loka.evaluation import evaluate
from loka.methods import Budget, unlearn
from loka.protocol import SEEN_FILE, Protocol, Seen
from loka.scoring.metrics import score_facts


@pytest.fixture(scope="module")
def protocol(tiny_testbed):
    return Protocol.from_testbed(tiny_testbed)


@pytest.fixture(scope="module")
def model(tiny_testbed):
    return loka.load_model(tiny_testbed.model_dir)


def test_testbed_protocol_sets_are_disjoint_by_person(protocol, tiny_testbed):
    people = {
        name: set(getattr(protocol, name).subjects)
        for name in ("forget", "retain_train", "retain_validation", "retain_eval", "reference", "nonmembers")
    }
    names = list(people)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not people[a] & people[b], (a, b)
    assert people["retain_train"] | people["retain_validation"] | people["retain_eval"] == set(
        tiny_testbed.retain.subjects
    )
    assert people["reference"] | people["nonmembers"] == set(tiny_testbed.holdout.subjects)
    # the evaluation wordings are the forget people's, and none is a prompt a method is given
    assert set(protocol.paraphrase_eval.subjects) == people["forget"]
    seen = protocol.method_seen
    for name in ("paraphrase_eval", "unseen_wording_eval"):
        assert seen.clash(getattr(protocol, name), by_person=False) is None
    assert not any(f.paraphrases for f in protocol.forget)


def test_paraphrase_eval_uses_wordings_the_original_learned(protocol, tiny_testbed):
    """The old paraphrase check used a wording the original never learned, so it could not tell
    erased from kept; the protocol's paraphrase set is one the original knows and the oracle does not."""
    templates = {r.name: r.templates for r in tiny_testbed.world.relations}
    trained = {t.format(s=f.subject) for f in protocol.forget for t in templates[f.relation][1:-1]}
    assert {f.prompt for f in protocol.paraphrase_eval} == trained
    held_out = {templates[f.relation][-1].format(s=f.subject) for f in protocol.forget}
    assert {f.prompt for f in protocol.unseen_wording_eval} == held_out
    original = score_facts(loka.load_model(tiny_testbed.model_dir), protocol.paraphrase_eval).first_token_accuracy
    oracle = score_facts(loka.load_model(tiny_testbed.oracle_dir), protocol.paraphrase_eval).first_token_accuracy
    assert original > oracle + 0.3  # the original knows these wordings; the oracle never saw the people


def test_a_method_that_saw_the_evaluation_paraphrases_is_not_scored(protocol, model):
    """A method given the forget facts with their evaluation paraphrases (the old LOKA input)
    cannot raise the paraphrase score: the evaluation refuses to score it."""
    with_paraphrases = Seen.of(protocol.forget, protocol.paraphrase_eval)
    with pytest.raises(ValueError, match="which the evaluation scores as forget paraphrases"):
        evaluate(model, protocol=protocol, seen=with_paraphrases, probe=False, relearn=False)


def test_reference_that_overlaps_the_mia_nonmembers_is_refused(protocol, tiny_testbed, model):
    with pytest.raises(ValueError, match="nonmembers and reference overlap"):
        Protocol.from_sets(
            forget=protocol.forget, retain=tiny_testbed.retain, holdout=protocol.nonmembers,
            reference=protocol.nonmembers,
        )  # fmt: skip
    seen = Seen.of(protocol.forget, protocol.retain_train, protocol.nonmembers)  # reference = non-members
    with pytest.raises(ValueError, match="which the evaluation scores as MIA non-members"):
        evaluate(model, protocol=protocol, seen=seen, probe=False, relearn=False)


def test_retain_scored_only_on_people_no_method_trained_on(protocol, model):
    result = unlearn(
        model, protocol.forget, protocol.retain_train, method="gradient_ascent",
        validation=protocol.retain_validation, budget=Budget(max_steps=2, check_every=1), progress=False,
    )  # fmt: skip
    assert result.seen.clash(protocol.retain_eval) is None
    evaluate(result.model, protocol=protocol, seen=result.seen, probe=False, relearn=False)  # allowed
    trained_on_eval = unlearn(
        model, protocol.forget, protocol.retain_eval, method="gradient_ascent",
        validation=protocol.retain_validation, budget=Budget(max_steps=2, check_every=1), progress=False,
    )  # fmt: skip
    with pytest.raises(ValueError, match="which the evaluation scores as retain"):
        evaluate(trained_on_eval.model, protocol=protocol, seen=trained_on_eval.seen, probe=False, relearn=False)


def test_records_without_ids_do_not_collide_across_files(tmp_path):
    """MUSE-style question-answer files without ids: two files used to both start at 'fact-0'."""
    forget, retain = tmp_path / "forget.jsonl", tmp_path / "retain.jsonl"
    forget.write_text("".join(json.dumps({"prompt": f"Q{i}?", "target": f"A{i}"}) + "\n" for i in range(4)))
    retain.write_text("".join(json.dumps({"prompt": f"R{i}?", "target": f"B{i}"}) + "\n" for i in range(12)))
    a, b = KnowledgeSet.from_jsonl(forget), KnowledgeSet.from_jsonl(retain)
    assert not set(a.ids) & set(b.ids)
    assert KnowledgeSet.from_jsonl(forget).ids == a.ids  # stable across reads
    protocol = Protocol.from_sets(forget=a, retain=b, holdout=_holdout())
    assert len(protocol.retain_train) + len(protocol.retain_validation) + len(protocol.retain_eval) == 12
    # the same pair in both files is a real overlap, and is named
    both = KnowledgeSet.from_records([{"prompt": "Q0?", "target": "A0"}, {"prompt": "R9?", "target": "B9"}])
    with pytest.raises(ValueError, match="forget and retain overlap .*'Q0\\?' is in both"):
        Protocol.from_sets(forget=a, retain=both, holdout=_holdout())


def _holdout() -> KnowledgeSet:
    return KnowledgeSet.from_records([{"prompt": f"H{i}?", "target": f"C{i}"} for i in range(4)])


def test_protocol_refuses_bad_input(protocol, tiny_testbed):
    with pytest.raises(ValueError, match="carries paraphrases"):
        Protocol(tiny_testbed.forget, protocol.retain_train, protocol.retain_validation, protocol.retain_eval,
                 protocol.nonmembers)  # fmt: skip
    with pytest.raises(ValueError, match="retain_train and retain_eval overlap"):
        Protocol(protocol.forget, protocol.retain_train, protocol.retain_validation, protocol.retain_train,
                 protocol.nonmembers)  # fmt: skip
    with pytest.raises(ValueError, match="forget and retain_train overlap"):
        Protocol(protocol.forget, protocol.retain_train + protocol.forget, protocol.retain_validation,
                 protocol.retain_eval, protocol.nonmembers)  # fmt: skip
    with pytest.raises(ValueError, match="holds .* which a method is given"):
        Protocol(protocol.forget, protocol.retain_train, protocol.retain_validation, protocol.retain_eval,
                 protocol.nonmembers, augment=protocol.paraphrase_eval,
                 paraphrase_eval=protocol.paraphrase_eval)  # fmt: skip
    with pytest.raises(ValueError, match="validation_fraction must be a number strictly between 0 and 1"):
        Protocol.from_sets(forget=protocol.forget, retain=tiny_testbed.retain, holdout=tiny_testbed.holdout,
                           validation_fraction=1.5)  # fmt: skip
    with pytest.raises(ValueError, match="too few to split"):
        Protocol.from_sets(forget=protocol.forget, retain=_holdout().split(0.5)[1], holdout=tiny_testbed.holdout)
    with pytest.raises(ValueError, match="holdout must be a non-empty KnowledgeSet, got list"):
        Protocol.from_sets(forget=protocol.forget, retain=tiny_testbed.retain, holdout=[])


def test_seen_saved_as_salted_hashes_refuses_exactly_what_the_plain_record_does(protocol, tiny_testbed, tmp_path):
    """``loka_seen.json`` holds salted SHA-256 digests (no person, id or prompt in the clear), and
    the record read back refuses the same sets, naming the same item, as the one in memory."""
    seen = Seen.of(protocol.forget, protocol.retain_train, protocol.reference)
    path = seen.save(tmp_path / SEEN_FILE)
    text = path.read_text()
    assert not any(name in text for name in tiny_testbed.forget.subjects + protocol.retain_train.subjects)
    assert not any(f.prompt in text or f.id in text for f in protocol.forget)
    data = json.loads(text)
    salt = data["salt"]
    person = protocol.forget[0].subject
    assert hashlib.sha256(f"{salt}\0{person}".encode()).hexdigest() in data["subjects"]
    assert data["counts"] == {"subjects": len(seen.subjects), "ids": len(seen.ids), "prompts": len(seen.prompts)}
    loaded = Seen.load(path)
    for ks in (tiny_testbed.forget, protocol.retain_train, protocol.retain_eval, protocol.reference,
               protocol.nonmembers, protocol.paraphrase_eval):  # fmt: skip
        for by_person in (True, False):
            assert loaded.clash(ks, by_person=by_person) == seen.clash(ks, by_person=by_person)
    assert loaded.clash(protocol.retain_eval) is None and loaded.clash(protocol.reference) is not None
    assert Seen.load(path).salt == salt and seen.hashed(salt) == loaded and loaded.hashed() is loaded
    assert seen.save(tmp_path / "again.json").read_text() != text  # a fresh salt per record


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "not valid JSON"),
        ('{"format": "loka-edit"}', "is not a loka-seen record"),
        ('{"format": "loka-seen", "schema_version": 9}', "schema_version 9 is not supported"),
        ('{"format": "loka-seen", "schema_version": 1, "salt": "ab", "subjects": [1], "ids": [], "prompts": []}',
         "'subjects' must be a list of hex digests"),
    ],
)  # fmt: skip
def test_a_bad_seen_file_is_a_one_line_error(tmp_path, content, message):
    (tmp_path / "seen.json").write_text(content)
    with pytest.raises(UsageError, match=message):
        Seen.load(tmp_path / "seen.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Seen.load(tmp_path / "missing.json")
