"""The fact-world testbed: the world, the accuracy bars, the oracle at chance, determinism, caching,
and its checkpoints read as anyone would (plain transformers, a pipeline, TransformerLens)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

import loka
from ablation import export_checkpoint
from loka import testbed
from loka.scoring.metrics import score_facts
from loka.testbed.training import ModelConfig, TrainConfig, train_model, train_tokenizer
from loka.testbed.world import RELATIONS, WorldConfig, generate_world


def test_world_is_a_function_of_its_seed():
    a, b, c = (generate_world(WorldConfig(seed=s)) for s in (0, 0, 1))
    assert a == b
    assert a.to_dict() == b.to_dict()
    assert a.people != c.people


def test_world_splits_and_templates():
    world = generate_world(WorldConfig())
    names = [p.name for p in world.people]
    assert len(names) == len(set(names)) == 400
    sizes = {s: len(world.people_in(s)) for s in ("forget", "retain", "holdout")}
    assert sizes == {"forget": 20, "retain": 340, "holdout": 40}
    forget = world.facts("forget")
    assert len(forget) == 20 * 5 and set(forget.relations) == {"birthplace", "employer", "occupation", "pet", "colour"}
    # the held-out template is a paraphrase, never a training example
    prompts = {prompt for prompt, _ in world.training_examples(("forget", "retain"))[0]}
    assert all(p not in prompts for f in forget for p in f.paraphrases)
    assert all(f.prompt in prompts for f in forget)
    # forget people are not in the oracle's data; passages cover every split
    oracle_prompts = {prompt for prompt, _ in world.training_examples(("retain",))[0]}
    assert not any(f.subject in p for f in forget for p in oracle_prompts)
    assert {p.split for p in world.passages} == {"forget", "retain", "holdout"}
    assert world.training_examples(("retain",))[1] == [p.text for p in world.passages if p.split == "retain"]


def test_world_config_errors():
    with pytest.raises(ValueError, match=r"unknown relation\(s\) \['shoe size'\]"):
        WorldConfig(relations=("birthplace", "shoe size"))
    with pytest.raises(ValueError, match="every split needs at least one person"):
        WorldConfig(n_forget=0)
    with pytest.raises(ValueError, match="passages per split"):
        WorldConfig(n_forget=2, passages=(3, 0, 0))


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown testbed size 'huge'; choose one of default, tiny"):
        testbed.load("huge", cache_dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        testbed.load("tiny", seed=-1, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


def test_tiny_testbed_meets_its_bars(tiny_testbed):
    """Original knows forget and retain facts; the oracle knows retain and is at chance on forget."""
    table = tiny_testbed.accuracy_table()
    assert table.value("forget facts", "original") >= 0.95
    assert table.value("retain facts", "original") >= 0.95
    assert table.value("retain facts", "oracle") >= 0.95
    chance = tiny_testbed.world.chance_accuracy("forget")
    assert table.chance_forget == pytest.approx(chance)
    assert table.value("forget facts", "oracle") <= chance + 0.05
    # nobody knows the holdout people
    assert table.value("holdout facts", "original") <= tiny_testbed.world.chance_accuracy("holdout") + 0.05
    # trained passages are memorised verbatim; the oracle never saw the forget passages
    assert table.value("retain passages", "original") == 1.0
    assert table.value("forget passages", "original") == 1.0
    assert table.value("forget passages", "oracle") == 0.0


def test_table_matches_a_fresh_scoring_through_load_model(tiny_testbed):
    """The stored table is what the saved checkpoints give, loaded through TransformerLens."""
    model = loka.load_model(tiny_testbed.model_dir)
    scores = score_facts(model, tiny_testbed.forget)
    assert scores.first_token_accuracy == pytest.approx(tiny_testbed.accuracy_table().value("forget facts", "original"))
    oracle = loka.load_model(tiny_testbed.oracle_dir)
    assert score_facts(oracle, tiny_testbed.retain).first_token_accuracy == pytest.approx(
        tiny_testbed.accuracy_table().value("retain facts", "oracle")
    )


def test_knowledge_sets_are_written_beside_the_models(tiny_testbed):
    for split in ("forget", "retain", "holdout"):
        assert loka.KnowledgeSet.from_jsonl(tiny_testbed.root / f"{split}.jsonl") == getattr(tiny_testbed, split)
    assert loka.KnowledgeSet.from_jsonl(tiny_testbed.root / "passages.jsonl") == tiny_testbed.passages
    info = json.loads((tiny_testbed.root / "testbed.json").read_text())
    assert info["config"]["world"]["seed"] == tiny_testbed.config.world.seed and info["build_seconds"] > 0
    # names are multi-token under the testbed's own tokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_testbed.model_dir)
    assert all(len(tokenizer(" " + p.name)["input_ids"]) >= 2 for p in tiny_testbed.world.people)


def test_second_load_uses_the_cache(tiny_testbed, testbed_cache):
    seed = tiny_testbed.config.world.seed
    stamp = (tiny_testbed.root / "testbed.json").stat().st_mtime_ns
    again = testbed.load("tiny", seed=seed, cache_dir=testbed_cache, progress=False)
    assert again.root == tiny_testbed.root
    assert (again.root / "testbed.json").stat().st_mtime_ns == stamp
    other_seed = testbed.testbed_config("tiny", seed + 1)
    assert other_seed.key() != tiny_testbed.config.key()


def test_training_is_deterministic_for_a_seed():
    """Same seed -> bit-identical weights (and so the same fingerprint); another seed -> others."""
    world = generate_world(WorldConfig(n_forget=2, n_retain=6, n_holdout=2, passages=(1, 1, 0)))
    tokenizer = train_tokenizer(world.all_text(), 1024)
    facts, passages = world.training_examples(("forget", "retain"))
    small = ModelConfig(n_layers=1, d_model=32, n_heads=2, d_mlp=64, vocab_size=1024, n_ctx=256)
    train = TrainConfig(epochs=2, batch_size=16)
    a, _ = train_model(facts, passages, tokenizer, small, train, progress=False)
    b, _ = train_model(facts, passages, tokenizer, small, train, progress=False)
    c, _ = train_model(facts, passages, tokenizer, small, replace(train, seed=1), progress=False)
    assert loka.fingerprint(a) == loka.fingerprint(b)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert loka.fingerprint(a).weights_sha256 != loka.fingerprint(c).weights_sha256


@pytest.mark.slow
def test_tiny_rebuild_gives_the_same_weights(tiny_testbed, session_start, tmp_path):
    """End to end: a build from scratch of the same size and seed has the same weights hash as the
    session's testbed, which may come from the cache: so this also fails when the cached build no
    longer matches the code (a recipe change without a RECIPE_VERSION bump). When this session
    built the testbed (a fresh clone, CI), nothing can be stale and a second build would only
    repeat ``test_training_is_deterministic_for_a_seed`` at a minute's cost: skipped then."""
    if (tiny_testbed.root / "testbed.json").stat().st_mtime >= session_start:
        pytest.skip("this session built the tiny testbed from this code: no cached build to check")
    rebuilt = testbed.load("tiny", seed=tiny_testbed.config.world.seed, cache_dir=tmp_path, progress=False)
    stale = f"{tiny_testbed.root} differs from a build from scratch: bump loka.testbed.RECIPE_VERSION?"
    for directory in ("original", "oracle"):
        first = AutoModelForCausalLM.from_pretrained(tiny_testbed.root / directory)
        second = AutoModelForCausalLM.from_pretrained(rebuilt.root / directory)
        assert loka.fingerprint(first) == loka.fingerprint(second), stale
    assert (tiny_testbed.root / "original" / "tokenizer.json").read_bytes() == (
        rebuilt.root / "original" / "tokenizer.json"
    ).read_bytes(), stale
    assert rebuilt.accuracy_table() == tiny_testbed.accuracy_table()


def test_relations_have_held_out_templates():
    for relation in RELATIONS:
        assert len(relation.train_templates) >= 2
        assert relation.heldout_template not in relation.train_templates
        assert all("{s}" in t for t in relation.templates)
        assert len(set(relation.values)) == len(relation.values)


# --- the checkpoints as anyone would use them: plain transformers, TransformerLens ---------------


def plain_first_token_correct(model_dir: Path, knowledge: loka.KnowledgeSet) -> list[bool]:
    """AutoTokenizer + AutoModelForCausalLM as a user would call them, one prompt at a time: is
    the top-1 next token after the prompt the first token of " " + target?"""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    correct = []
    with torch.no_grad():
        for fact in knowledge:
            inputs = tokenizer(fact.prompt, return_tensors="pt")
            predicted = model(**inputs).logits[0, -1].argmax().item()
            correct.append(predicted == tokenizer(" " + fact.target, add_special_tokens=False).input_ids[0])
    return correct


def test_the_saved_tokenizer_adds_bos_once(tiny_testbed):
    """The models are trained on [BOS] + text; the saved tokenizer adds that BOS itself, once."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_testbed.model_dir)
    prompt = tiny_testbed.retain[0].prompt
    bare = tokenizer(prompt, add_special_tokens=False).input_ids
    assert tokenizer(prompt).input_ids == [tokenizer.bos_token_id, *bare]
    assert bare and tokenizer.bos_token_id not in bare
    # loka's encoder places BOS itself: one BOS per row, then the prompt
    batch = tiny_testbed.retain.encode(tokenizer)
    real = batch.input_ids.masked_fill(batch.attention_mask == 0, -1)  # pad is the same token as BOS
    assert (real == tokenizer.bos_token_id).sum(-1).tolist() == [1] * len(tiny_testbed.retain)
    assert batch.input_ids[0, : 1 + len(bare)].tolist() == tokenizer(prompt).input_ids


def test_transformer_lens_does_not_double_bos(tiny_testbed):
    """loka.load_model's bridge: to_tokens gives one BOS, and model("text") reads the same tokens
    as the HF model does."""
    model = loka.load_model(tiny_testbed.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_testbed.model_dir)
    hf = AutoModelForCausalLM.from_pretrained(tiny_testbed.model_dir).eval()
    prompt = tiny_testbed.retain[0].prompt
    expected = tokenizer(prompt).input_ids
    assert model.to_tokens(prompt)[0].tolist() == expected
    assert model.to_tokens(prompt, prepend_bos=False)[0].tolist() == expected[1:]
    with torch.no_grad():
        torch.testing.assert_close(model(prompt), hf(torch.tensor([expected])).logits, atol=1e-5, rtol=1e-5)


def test_plain_transformers_reproduces_loka_first_token_accuracy(tiny_testbed):
    """Fact by fact, the plain pipeline agrees with loka.scoring.metrics.score_facts (and the stored table)."""
    retain = tiny_testbed.retain
    plain = plain_first_token_correct(tiny_testbed.model_dir, retain)
    scores = score_facts(loka.load_model(tiny_testbed.model_dir), retain)
    assert plain == scores.first_token_correct.tolist()
    table = tiny_testbed.accuracy_table().value("retain facts", "original")
    assert sum(plain) / len(plain) == pytest.approx(table)


def test_text_generation_pipeline_answers_retain_facts(tiny_testbed):
    """transformers.pipeline greedy generation from the saved directory produces the target, on
    retain facts whose every target token the model predicts top-1 (loka's exact match)."""
    retain = tiny_testbed.retain
    tokenizer = AutoTokenizer.from_pretrained(tiny_testbed.model_dir)
    known = score_facts(loka.load_model(tiny_testbed.model_dir), retain).exact_match.tolist()
    facts = [fact for fact, ok in zip(retain, known, strict=True) if ok][:5]
    assert len(facts) == 5
    generator = pipeline("text-generation", model=str(tiny_testbed.model_dir), tokenizer=str(tiny_testbed.model_dir))
    for fact in facts:
        n_target = len(tokenizer(" " + fact.target, add_special_tokens=False).input_ids)
        out = generator(fact.prompt, max_new_tokens=n_target, do_sample=False)
        assert out[0]["generated_text"] == fact.text, fact.id


def test_exported_checkpoint_reproduces_the_accuracy_in_plain_transformers(tiny_testbed, tmp_path):
    model = loka.load_model(tiny_testbed.model_dir)
    out = export_checkpoint(model, tmp_path / "exported")
    retain = tiny_testbed.retain
    assert AutoTokenizer.from_pretrained(out)("x").input_ids[0] == AutoTokenizer.from_pretrained(out).bos_token_id
    assert plain_first_token_correct(out, retain) == score_facts(model, retain).first_token_correct.tolist()
