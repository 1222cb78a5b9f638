"""KnowledgeSet: validation, JSONL round-trip, splits, tokenization, and the TOFU loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from loka.benchmarks.tofu.loading import load_tofu
from loka.data import Fact, KnowledgeSet, content_id
from tests.checkpoints import build_tiny_checkpoint

TOFU_DIR = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "tofu"

RECORDS = [
    {
        "id": "curie/birthplace",
        "prompt": "Marie Curie was born in",
        "target": "Warsaw",
        "subject": "Marie Curie",
        "relation": "birthplace",
        "paraphrases": ["Marie Curie's hometown is"],
    },
    {
        "id": "turing/school",
        "prompt": "Alan Turing studied at",
        "target": "Cambridge and Princeton",
        "subject": "Alan Turing",
    },
    {"prompt": "The capital of France is", "target": " Paris"},
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint("gpt2", tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def tokenizer(checkpoint: Path):
    return AutoTokenizer.from_pretrained(checkpoint)


def test_records_get_default_ids_and_optional_fields():
    ks = KnowledgeSet.from_records(RECORDS)
    assert len(ks) == 3
    # a record without an id gets one made from its text: the same in every file that holds it
    assert ks.ids == ("curie/birthplace", "turing/school", content_id("The capital of France is", " Paris"))
    assert ks.ids[2].startswith("fact-") and len(ks.ids[2]) == len("fact-") + 12
    assert KnowledgeSet.from_records(RECORDS[2:]).ids == ks.ids[2:]
    assert ks[0].paraphrases == ("Marie Curie's hometown is",)
    assert ks[2].subject is None and ks[2].paraphrases == ()
    assert ks.subjects == ("Marie Curie", "Alan Turing")
    assert [f.text for f in ks] == [
        "Marie Curie was born in Warsaw",
        "Alan Turing studied at Cambridge and Princeton",
        "The capital of France is Paris",
    ]


def test_jsonl_round_trip_is_exact(tmp_path: Path):
    ks = KnowledgeSet.from_records(RECORDS)
    path = ks.to_jsonl(tmp_path / "facts.jsonl")
    again = KnowledgeSet.from_jsonl(path)
    assert again == ks
    assert again.to_jsonl(tmp_path / "again.jsonl").read_bytes() == path.read_bytes()


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(str.strip)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {"prompt": text, "target": text},
            optional={"subject": text, "relation": text, "paraphrases": st.lists(text, max_size=3)},
        ),
        min_size=1,
        max_size=5,
    )
)
def test_jsonl_round_trip_property(tmp_path_factory, records):
    ks = KnowledgeSet.from_records(records)
    path = ks.to_jsonl(tmp_path_factory.mktemp("rt") / "k.jsonl")
    assert KnowledgeSet.from_jsonl(path) == ks


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([], "is empty"),
        ([{"prompt": "a"}], r"record 0: missing required key 'target'"),
        ([{"target": "a"}], r"record 0: missing required key 'prompt'"),
        ([{"prompt": "a", "target": "  "}], r"record 0: empty target"),
        ([{"prompt": "a", "target": "b", "taget": "c"}], r"record 0: unknown key\(s\) \['taget'\]"),
        ([{"prompt": "a", "target": 3}], r"record 0: 'target' must be a string"),
        ([{"prompt": "a", "target": "b", "paraphrases": "c"}], r"'paraphrases' must be a list"),
        (["not a dict"], r"record 0: a fact must be a JSON object"),
        (
            [{"id": "x", "prompt": "a", "target": "b"}, {"id": "x", "prompt": "c", "target": "d"}],
            r"duplicate fact id 'x' \(facts 0 and 1\)",
        ),
    ],
)
def test_bad_records_are_named(records, message):
    with pytest.raises(ValueError, match=message):
        KnowledgeSet.from_records(records)


def test_bad_jsonl_files(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        KnowledgeSet.from_jsonl(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "target": "b"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        KnowledgeSet.from_jsonl(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="has no facts"):
        KnowledgeSet.from_jsonl(empty)
    missing = tmp_path / "missing_target.jsonl"
    missing.write_text('{"prompt": "a", "target": "b"}\n\n{"prompt": "c"}\n')
    with pytest.raises(ValueError, match=r"missing_target.jsonl:3: missing required key 'target'"):
        KnowledgeSet.from_jsonl(missing)


def test_split_by_subject_keeps_people_whole():
    records = [
        {"id": f"p{p}/r{r}", "prompt": f"Person {p} relation {r} is", "target": "x", "subject": f"Person {p}"}
        for p in range(10)
        for r in range(3)
    ]
    ks = KnowledgeSet.from_records(records)
    rest, part = ks.split(0.3, seed=1, by="subject")
    assert len(part.subjects) == 3 and len(rest.subjects) == 7
    assert not set(part.subjects) & set(rest.subjects)
    assert sorted(rest.ids + part.ids) == sorted(ks.ids)
    assert ks.split(0.3, seed=1, by="subject") == (rest, part)  # deterministic
    rest_f, part_f = ks.split(0.5, by="fact")
    assert len(part_f) == 15 and len(rest_f) == 15
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        ks.split(1.0)
    with pytest.raises(ValueError, match="leaves one side empty"):
        ks.split(0.01)
    with pytest.raises(ValueError, match="has no subject"):
        KnowledgeSet.from_records(RECORDS).split(0.5, by="subject")
    with pytest.raises(ValueError, match="use 'fact' or 'subject'"):
        ks.split(0.5, by="person")  # type: ignore[arg-type]


def test_paraphrased_expands_prompts():
    para = KnowledgeSet.from_records(RECORDS).paraphrased()
    assert para.ids == ("curie/birthplace/p0",)
    assert para[0].prompt == "Marie Curie's hometown is" and para[0].target == "Warsaw"


def _reference_log_probs(model, tokenizer, fact: Fact) -> torch.Tensor:
    """log p(target tokens) from one unpadded forward pass on BOS + the joined text's tokens. The
    target is what follows the prompt's own tokens, less a lone leading space token (the tiny
    tokenizer has no "ĠWarsaw", so " Warsaw" is "Ġ" + "War" + ...: the answer starts at "War")."""
    joint = tokenizer(fact.text, add_special_tokens=False)["input_ids"]
    n_prompt = len(tokenizer(fact.prompt, add_special_tokens=False)["input_ids"])
    if tokenizer.convert_ids_to_tokens(joint[n_prompt]) == "Ġ":
        n_prompt += 1
    ids = torch.tensor([[tokenizer.bos_token_id, *joint]])
    log_probs = model(ids).logits.log_softmax(-1)[0]
    start = 1 + n_prompt - 1
    return torch.stack([log_probs[start + j, t] for j, t in enumerate(joint[n_prompt:])])


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_encode_padding_matches_unbatched_forward(checkpoint, tokenizer, padding_side):
    model = AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="eager").eval()
    ks = KnowledgeSet.from_records(RECORDS)
    batch = ks.encode(tokenizer, padding_side=padding_side)
    assert batch.input_ids.shape[0] == 3 and batch.fact_ids == ks.ids
    with torch.no_grad():
        logits = model(batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids).logits
        got = batch.target_log_probs(logits)
        for i, fact in enumerate(ks):
            # the row is BOS + the joined text's own encoding, whatever the split
            row = batch.input_ids[i][batch.attention_mask[i].bool()].tolist()
            assert row == [tokenizer.bos_token_id, *tokenizer(fact.text, add_special_tokens=False)["input_ids"]]
            want = _reference_log_probs(model, tokenizer, fact)
            assert batch.target_mask[i].sum() == len(want)
            torch.testing.assert_close(got[i, : len(want)], want, atol=1e-5, rtol=0)
            assert (got[i, len(want) :] == 0).all()
            # no target starts with a lone space token
            assert tokenizer.decode(batch.target_ids[i, :1]).strip()
    # multi-token target: "Cambridge and Princeton" is several tokens
    assert batch.target_mask[1].sum() > 1
    # the answer position holds the last prompt token
    last_prompt = tokenizer("The capital of France is", add_special_tokens=False)["input_ids"][-1]
    assert batch.input_ids[2, batch.answer_positions[2]] == last_prompt
    assert (batch.input_ids.gather(1, batch.answer_positions[:, None] + 1)[:, 0] == batch.target_ids[:, 0]).all()


def test_subject_mask_marks_subject_tokens(tokenizer):
    batch = KnowledgeSet.from_records(RECORDS).encode(tokenizer)
    subject_tokens = tokenizer("Marie Curie", add_special_tokens=False)["input_ids"]
    marked = batch.input_ids[0][batch.subject_mask[0]].tolist()
    assert marked == subject_tokens
    assert not batch.subject_mask[2].any()  # no subject


def test_encode_never_truncates(tokenizer):
    long = KnowledgeSet.from_records([{"id": "long-one", "prompt": "the cat sat " * 40, "target": "mat"}])
    with pytest.raises(ValueError, match=r"fact 'long-one' is \d+ tokens .* longer than the context of 64"):
        long.encode(tokenizer, max_length=64)
    with pytest.raises(ValueError, match="padding_side='middle' is not supported"):
        long.encode(tokenizer, padding_side="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected a TransformerBridge or a Hugging Face tokenizer"):
        long.encode(object())


def test_batches_cover_the_set_in_order(tokenizer):
    ks = KnowledgeSet.from_records(RECORDS)
    batches = list(ks.batches(tokenizer, batch_size=2))
    assert [b.fact_ids for b in batches] == [ks.ids[:2], ks.ids[2:]]
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        next(ks.batches(tokenizer, batch_size=0))


@pytest.mark.skipif(not TOFU_DIR.is_dir(), reason="shared TOFU data not present")
def test_tofu_forget01_matches_full():
    forget = load_tofu(TOFU_DIR, "forget01")
    full = load_tofu(TOFU_DIR, "full")
    assert len(forget) == 40 and len(full) == 4000
    assert forget.ids[0] == "tofu/a198/q00"
    assert forget.facts == full.facts[-40:]  # same ids, prompts, targets and paraphrases
    row = json.loads((TOFU_DIR / "forget01.jsonl").read_text().splitlines()[0])
    assert forget[0].prompt == f"Question: {row['question']}\nAnswer:" and forget[0].target == row["answer"]
    perturbed = json.loads((TOFU_DIR / "forget01_perturbed.jsonl").read_text().splitlines()[0])
    assert forget[0].paraphrases == (f"Question: {perturbed['paraphrased_question']}\nAnswer:",)
    assert len(load_tofu(TOFU_DIR, "holdout01")) == 40
    assert load_tofu(TOFU_DIR, "world_facts", template="{question}")[0].prompt.endswith("?")


def test_tofu_errors(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown TOFU split 'forget02'"):
        load_tofu(tmp_path, "forget02")
    with pytest.raises(FileNotFoundError, match="forget01.jsonl' does not exist"):
        load_tofu(tmp_path, "forget01")
    with pytest.raises(ValueError, match="must contain"):
        load_tofu(tmp_path, "forget01", template="Q:")
    (tmp_path / "forget01.jsonl").write_text('{"question": "Who?"}\n')
    with pytest.raises(ValueError, match=r"forget01.jsonl:1: missing key\(s\) \['answer'\]"):
        load_tofu(tmp_path, "forget01")


def test_in_context_asks_each_fact_after_the_persons_other_facts():
    facts = KnowledgeSet((
        Fact("a/born", "Ada Lin was born in", "Paris", "Ada Lin", "birthplace"),
        Fact("a/job", "Ada Lin works for", "Acme", "Ada Lin", "employer"),
        Fact("a/pet", "At home, Ada Lin keeps a pet", "cat", "Ada Lin", "pet"),
        Fact("b/born", "Bo Wu was born in", "Oslo", "Bo Wu", "birthplace"),  # no other fact of Bo Wu
        Fact("q1", "The capital of France is", "Paris"),  # no subject
    ), name="facts")  # fmt: skip
    asked = facts.in_context()
    assert asked is not None and asked.name == "facts/in-context"
    assert asked.ids == ("a/born/in-context", "a/job/in-context", "a/pet/in-context")
    assert asked.facts[0].prompt == "Ada Lin works for Acme. At home, Ada Lin keeps a pet cat. Ada Lin was born in"
    assert asked.facts[1].prompt == "Ada Lin was born in Paris. At home, Ada Lin keeps a pet cat. Ada Lin works for"
    assert [(f.target, f.subject, f.relation) for f in asked] == [
        ("Paris", "Ada Lin", "birthplace"), ("Acme", "Ada Lin", "employer"), ("cat", "Ada Lin", "pet"),
    ]  # fmt: skip
    assert KnowledgeSet(facts.facts[3:], name="alone").in_context() is None
