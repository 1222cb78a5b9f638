"""Fact encoding under real tokenizer families: byte-level BPE (GPT-2, NeoX) and SentencePiece-style.

A SentencePiece-style tokenizer (Llama, Mistral) marks a word start with ``"▁"`` and adds one to
the start of every text it encodes, so ``" Paris"`` encoded on its own is ``["▁", "▁Paris"]``
(Llama-2's token 29871 problem): a target tokenized apart from its prompt would begin with a lone
space, and first-token accuracy and every answer-position objective would score that space. loka
tokenizes the joined text once and splits it where the prompt ends. The tokenizers here are
trained offline in-process, in the two layouts hub checkpoints use: Llama-2's (a normalizer that
prepends ``"▁"`` and replaces spaces) and the Metaspace pre-tokenizer (newer Llama/Mistral), both
with digits split one by one as Llama does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

from loka.data import Fact, KnowledgeSet, split_fact
from loka.models import load_model
from loka.scoring.metrics import score_facts
from loka.testbed.training import train_tokenizer
from tests.checkpoints import build_tokenizer

WORDS = (
    "The capital of France is Paris . The capital of Poland is Warsaw . Marie Curie was born in Warsaw in 1867 . "
    "Alan Turing studied at Cambridge and Princeton . Ada Lovelace wrote the first published algorithm ."
).split()
CORPUS = [" ".join(WORDS[i : i + 8]) for i in range(len(WORDS))] * 10

FACTS = KnowledgeSet.from_records(
    [
        {"id": "paris", "prompt": "The capital of France is", "target": "Paris", "subject": "France"},
        {"id": "warsaw", "prompt": "Marie Curie was born in", "target": "Warsaw", "subject": "Marie Curie"},
        {"id": "year", "prompt": "Marie Curie was born in", "target": "1867", "subject": "Marie Curie"},
        {"id": "multi", "prompt": "Alan Turing studied at", "target": "Cambridge and Princeton"},
        {"id": "spaced", "prompt": "The capital of Poland is ", "target": "Warsaw"},
        {"id": "given", "prompt": "The capital of France is", "target": " Paris"},
    ]
)


def sentencepiece_tokenizer(layout: str) -> PreTrainedTokenizerFast:
    """A tiny BPE tokenizer with a ``"▁"`` word prefix, trained on :data:`CORPUS`, in Llama-2's
    layout (``"llama2"``) or the Metaspace pre-tokenizer's (``"metaspace"``); ``<s>`` is BOS and is
    added by ``tokenizer(text)``, ``</s>`` is EOS and padding."""
    digits = pre_tokenizers.Digits(individual_digits=True)
    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([metaspace, digits])
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    if layout == "llama2":
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tokenizer.pre_tokenizer = digits
        tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    else:
        tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


def make_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    if kind == "byte_level":
        return train_tokenizer(CORPUS, 400, add_bos=False)  # GPT-2's scheme, on the same corpus
    if kind == "byte_level_tiny":
        return build_tokenizer()  # the tiny checkpoints' tokenizer: " Warsaw" is "Ġ" + "War" + ...
    return sentencepiece_tokenizer(kind)


@pytest.fixture(scope="module", params=["llama2", "metaspace", "byte_level", "byte_level_tiny"])
def tokenizer(request: pytest.FixtureRequest) -> PreTrainedTokenizerFast:
    return make_tokenizer(request.param)


def _is_space(tokenizer, token_id: int) -> bool:
    return tokenizer.convert_ids_to_tokens(token_id) in ("▁", "Ġ")


def test_target_ids_are_the_tail_of_the_joint_encoding(tokenizer) -> None:
    batch = FACTS.encode(tokenizer)
    bos = tokenizer.bos_token_id
    for i, fact in enumerate(FACTS):
        joint = tokenizer(fact.text, add_special_tokens=False)["input_ids"]
        n = int(batch.target_mask[i].sum())
        row = batch.input_ids[i][batch.attention_mask[i].bool()].tolist()
        assert row == [bos, *joint], fact.id  # the model reads the joined text's own encoding
        assert batch.target_ids[i, :n].tolist() == joint[-n:], fact.id
        assert not _is_space(tokenizer, int(batch.target_ids[i, 0])), fact.id
        assert batch.input_ids[i, batch.answer_positions[i] + 1] == batch.target_ids[i, 0]
        assert tokenizer.decode(batch.target_ids[i, :n]).strip() == fact.target.strip(), fact.id
        # the prompt keeps every character of the prompt (a lone space may join it, nothing else)
        prompt_text = tokenizer.decode(row[1 : batch.answer_positions[i] + 1])
        assert prompt_text.strip() == fact.prompt.strip(), fact.id


@pytest.mark.parametrize(("kind", "word"), [("llama2", "▁Paris"), ("metaspace", "▁Paris"), ("byte_level", "ĠParis")])
def test_paris_is_one_word_token(kind: str, word: str) -> None:
    tokenizer = make_tokenizer(kind)
    for fact in (FACTS[0], FACTS[5]):  # target "Paris" and target " Paris"
        batch = KnowledgeSet((fact,)).encode(tokenizer)
        assert tokenizer.convert_ids_to_tokens(batch.target_ids[0].tolist()) == [word]


def test_split_moves_a_split_off_space_into_the_prompt() -> None:
    """Llama-2's layout encodes " Paris" alone as a lone "▁" + "▁Paris", and splits digits off a
    "▁": the answer "1867" starts at "1", and the "▁" before it is the prompt's last token."""
    tokenizer = sentencepiece_tokenizer("llama2")
    alone = tokenizer.convert_ids_to_tokens(tokenizer(" Paris", add_special_tokens=False)["input_ids"])
    assert alone == ["▁", "▁Paris"]  # what encoding the target separately would have scored
    prompt, target, offsets = split_fact(tokenizer, FACTS[2])
    assert tokenizer.convert_ids_to_tokens(target) == ["1", "8", "6", "7"]
    assert tokenizer.convert_ids_to_tokens(prompt)[-2:] == ["▁in", "▁"]
    assert offsets is not None and len(offsets) == len(prompt)


def test_subject_mask_with_sentencepiece() -> None:
    tokenizer = sentencepiece_tokenizer("llama2")
    batch = FACTS.encode(tokenizer)
    marked = tokenizer.convert_ids_to_tokens(batch.input_ids[1][batch.subject_mask[1]].tolist())
    assert marked == ["▁Marie", "▁Curie"]


@pytest.fixture(scope="module")
def paris_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with the Llama-2-layout tokenizer whose every next-token prediction is "▁Paris":
    residual coordinate 0 is +100 from the embedding on, the final norm keeps only it, and the
    unembedding reads it into "▁Paris" alone."""
    tokenizer = sentencepiece_tokenizer("llama2")
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id, **special,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    paris = tokenizer.convert_tokens_to_ids("▁Paris")
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 100.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[paris, 0] = 1.0
    out = tmp_path_factory.mktemp("paris-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_first_token_accuracy_scores_the_word_not_the_space(paris_llama: Path) -> None:
    model = load_model(paris_llama)
    tokenizer = AutoTokenizer.from_pretrained(paris_llama)
    assert tokenizer.convert_ids_to_tokens(tokenizer(" Paris", add_special_tokens=False)["input_ids"])[0] == "▁"
    paris = KnowledgeSet((Fact("paris", "The capital of France is", "Paris"),))
    scores = score_facts(model, paris)
    assert scores.first_token_accuracy == 1.0 and bool(scores.first_token_correct[0])
    assert scores.n_target_tokens.tolist() == [1.0]
    warsaw = KnowledgeSet((Fact("warsaw", "The capital of Poland is", "Warsaw"),))
    assert score_facts(model, warsaw).first_token_accuracy == 0.0
