"""Knowledge sets: the facts to forget, the facts to keep, and the facts never seen.

Everything in loka talks about knowledge as *facts*: a ``prompt`` (the text before the answer)
and a ``target`` (the answer, possibly several tokens), optionally with the ``subject`` the fact
is about (a name inside the prompt), its ``relation`` and ``paraphrases`` (other prompts with the
same answer, used to check that an edit generalises beyond the exact wording). A
:class:`KnowledgeSet` is an immutable, validated collection of facts with unique ids; it is what
attribution scores, what methods forget or retain, and what evaluation measures.

The model reads a fact as ``prompt`` followed by ``target``: the two are joined with one space
unless the prompt already ends with whitespace or the target already starts with it. The joined
text is tokenized once and split where the prompt ends, so the target tokens are exactly the
tokens the tokenizer gives that text after the prompt's: a byte-level BPE (GPT-2, NeoX) gives
``" Paris"`` as one token either way, and a SentencePiece-style tokenizer (Llama, Mistral: a
``"▁"`` word prefix) gives ``"▁Paris"``, where encoding ``" Paris"`` on its own would start with
a lone ``"▁"`` and every answer-position score would score a space. A target never starts with
a whitespace-only token: one that the tokenizer splits off (Llama's ``"▁"`` before digits) is
read as the prompt's last token. :meth:`KnowledgeSet.encode` turns facts into a
:class:`FactBatch`: token ids with padding on either side, and for every target token the position
whose logits predict it. Nothing is ever truncated: a fact longer than the context is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from loka.errors import UsageError

__all__ = [
    "Fact",
    "FactBatch",
    "KnowledgeSet",
    "Prompts",
    "content_id",
    "encode_facts",
    "split_fact",
    "token_log_probs",
    "load_tofu",
    "TOFU_SPLITS",
]

PaddingSide = Literal["left", "right"]
_FIELDS = ("id", "prompt", "target", "subject", "relation", "paraphrases")


@dataclass(frozen=True)
class Fact:
    """One piece of knowledge: ``prompt`` followed by ``target`` is what the model knows."""

    id: str
    prompt: str
    target: str
    subject: str | None = None
    relation: str | None = None
    paraphrases: tuple[str, ...] = ()

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict; optional fields are written only when set."""
        record: dict[str, Any] = {"id": self.id, "prompt": self.prompt, "target": self.target}
        if self.subject is not None:
            record["subject"] = self.subject
        if self.relation is not None:
            record["relation"] = self.relation
        if self.paraphrases:
            record["paraphrases"] = list(self.paraphrases)
        return record

    @property
    def text(self) -> str:
        """The prompt and target joined the way the model reads them."""
        return self.prompt + _joined_target(self.prompt, self.target)


def content_id(prompt: str, target: str) -> str:
    """``fact-`` + 12 hex digits of SHA-256 over prompt and target: the id of a record that has none.
    The same question-answer pair gets the same id in every file; different pairs never collide
    (in practice), unlike a per-file counter."""
    return "fact-" + hashlib.sha256(f"{prompt}\x00{target}".encode()).hexdigest()[:12]


def _joined_target(prompt: str, target: str) -> str:
    if not prompt or prompt[-1].isspace() or target[:1].isspace():
        return target
    return " " + target


def _fact_from_record(record: Any, where: str) -> Fact:
    if not isinstance(record, Mapping):
        raise UsageError(f"{where}: a fact must be a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(_FIELDS))
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {unknown}; allowed keys are {list(_FIELDS)}")
    for key in ("prompt", "target"):
        if key not in record:
            raise UsageError(f"{where}: missing required key {key!r}")
        if not isinstance(record[key], str):
            raise UsageError(f"{where}: {key!r} must be a string, got {type(record[key]).__name__}")
    if not record["prompt"].strip():
        raise UsageError(f"{where}: empty prompt")
    if not record["target"].strip():
        raise UsageError(f"{where}: empty target")
    for key in ("id", "subject", "relation"):
        value = record.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise UsageError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    paraphrases = record.get("paraphrases") or []
    if not isinstance(paraphrases, list | tuple) or not all(isinstance(p, str) and p.strip() for p in paraphrases):
        raise UsageError(f"{where}: 'paraphrases' must be a list of non-empty strings")
    subject = record.get("subject")
    return Fact(
        id=record.get("id") or "",
        prompt=record["prompt"],
        target=record["target"],
        subject=subject,
        relation=record.get("relation"),
        paraphrases=tuple(paraphrases),
    )


def token_log_probs(logits: Float[Tensor, "... d_vocab"], ids: Int[Tensor, ...]) -> Float[Tensor, ...]:
    """log p(each of ``ids``) under the logits row beside it: log-softmax over the vocabulary (in
    float32), read at the id. The one place loka turns logits into token log-probabilities."""
    return logits.float().log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


@dataclass(frozen=True)
class FactBatch:
    """Facts tokenized for one forward pass.

    ``input_ids`` holds BOS (optional) + prompt + target for every fact. The logits at
    ``prediction_positions[i, j]`` predict ``target_ids[i, j]``; entries where ``target_mask`` is
    False are padding (their position repeats the last real one). ``subject_mask`` marks the
    prompt tokens that overlap the fact's subject (all False when there is none). With left
    padding, pass ``attention_mask`` and ``position_ids`` to the model.
    """

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    target_ids: Int[Tensor, "batch target"]
    target_mask: Bool[Tensor, "batch target"]
    prediction_positions: Int[Tensor, "batch target"]
    subject_mask: Bool[Tensor, "batch pos"]
    fact_ids: tuple[str, ...]
    padding_side: PaddingSide

    def __len__(self) -> int:
        return len(self.fact_ids)

    @property
    def answer_positions(self) -> Int[Tensor, " batch"]:
        """The last prompt token of each fact: the position that predicts the first target token."""
        return self.prediction_positions[:, 0]

    @property
    def position_ids(self) -> Int[Tensor, "batch pos"]:
        """Positions that ignore left padding (what an HF model needs with a left-padded batch)."""
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)

    def target_logits(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, "batch target d_vocab"]:
        """The logits rows that predict each target token."""
        index = self.prediction_positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
        return logits.gather(1, index)

    def target_log_softmax(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, "batch target d_vocab"]:
        """log-softmax (float32) of the logits at every position that predicts a target token."""
        return self.target_logits(logits).float().log_softmax(-1)

    def target_log_probs(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, "batch target"]:
        """log p(target token j | prompt, earlier target tokens); 0 on padding entries."""
        return token_log_probs(self.target_logits(logits), self.target_ids) * self.target_mask

    def target_correct(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Bool[Tensor, "batch target"]:
        """Whether the top-1 prediction equals each target token (True on padding entries)."""
        hit = self.target_logits(logits).argmax(-1) == self.target_ids
        return hit | ~self.target_mask

    def rows(self, rows: Int[Tensor, " rows"]) -> FactBatch:
        """The batch of rows ``rows`` (in that order)."""
        picked = rows.tolist()
        return replace(
            self,
            input_ids=self.input_ids[rows],
            attention_mask=self.attention_mask[rows],
            target_ids=self.target_ids[rows],
            target_mask=self.target_mask[rows],
            prediction_positions=self.prediction_positions[rows],
            subject_mask=self.subject_mask[rows],
            fact_ids=tuple(self.fact_ids[i] for i in picked),
        )

    def to(self, device: str | torch.device) -> FactBatch:
        return replace(
            self,
            **{
                name: getattr(self, name).to(device)
                for name in (
                    "input_ids",
                    "attention_mask",
                    "target_ids",
                    "target_mask",
                    "prediction_positions",
                    "subject_mask",
                )
            },
        )


@dataclass(frozen=True)
class KnowledgeSet:
    """An immutable, non-empty collection of facts with unique ids.

    Build one with :meth:`from_records` or :meth:`from_jsonl`; facts without an ``id`` get an id
    made from their text (:func:`content_id`), so that two files without ids never share an id
    unless they share a fact. Iterating yields :class:`Fact` objects.
    """

    facts: tuple[Fact, ...]
    name: str = field(default="knowledge", compare=False)

    def __post_init__(self) -> None:
        if not self.facts:
            raise UsageError(f"KnowledgeSet {self.name!r} is empty: it needs at least one fact")
        seen: dict[str, int] = {}
        for index, fact in enumerate(self.facts):
            if not isinstance(fact, Fact):
                raise UsageError(f"{self.name} fact {index}: expected a Fact, got {type(fact).__name__}")
            if fact.id in seen:
                raise UsageError(
                    f"{self.name}: duplicate fact id {fact.id!r} (facts {seen[fact.id]} and {index}); "
                    "ids must be unique"
                )
            seen[fact.id] = index

    # construction and persistence -----------------------------------------------------------
    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], *, name: str = "records") -> KnowledgeSet:
        return cls._from_located(((f"{name} record {i}", r) for i, r in enumerate(records)), name)

    @classmethod
    def _from_located(cls, located: Iterable[tuple[str, Any]], name: str) -> KnowledgeSet:
        """Validate (where, record) pairs; facts without an id get :func:`content_id`."""
        facts, given = [], set()
        for where, record in located:
            fact = _fact_from_record(record, where)
            given.add(fact.id)
            facts.append(fact)
        taken: set[str] = {i for i in given if i}
        for index, fact in enumerate(facts):
            if not fact.id:
                fact_id, copy = content_id(fact.prompt, fact.target), 1
                while fact_id in taken:  # the same question-answer pair twice in one file
                    copy += 1
                    fact_id = f"{content_id(fact.prompt, fact.target)}-{copy}"
                taken.add(fact_id)
                facts[index] = replace(fact, id=fact_id)
        return cls(tuple(facts), name=name)

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike[str]) -> KnowledgeSet:
        """Read one JSON object per line (blank lines are skipped)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"knowledge file {str(path)!r} does not exist (expected a .jsonl file)")
        located = []
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    located.append((f"{path}:{number}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise UsageError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not located:
            raise UsageError(f"knowledge file {str(path)!r} has no facts")
        return cls._from_located(located, path.stem)

    def to_jsonl(self, path: str | os.PathLike[str]) -> Path:
        """Write one JSON object per fact; the file appears whole or not at all."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", encoding="utf-8") as out:
            for fact in self.facts:
                out.write(json.dumps(fact.to_record(), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        return path

    # collection protocol ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.facts)

    def __iter__(self) -> Iterator[Fact]:
        return iter(self.facts)

    def __getitem__(self, index: int) -> Fact:
        return self.facts[index]

    def __add__(self, other: KnowledgeSet) -> KnowledgeSet:
        return KnowledgeSet(self.facts + other.facts, name=f"{self.name}+{other.name}")

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(fact.id for fact in self.facts)

    @property
    def subjects(self) -> tuple[str, ...]:
        """Distinct subjects in first-seen order (facts without one are skipped)."""
        return tuple(dict.fromkeys(f.subject for f in self.facts if f.subject is not None))

    @property
    def relations(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.relation for f in self.facts if f.relation is not None))

    def filter(self, keep: Callable[[Fact], bool], *, name: str | None = None) -> KnowledgeSet:
        return KnowledgeSet(tuple(f for f in self.facts if keep(f)), name=name or self.name)

    def split(
        self, fraction: float, *, seed: int = 0, by: Literal["fact", "subject"] = "fact"
    ) -> tuple[KnowledgeSet, KnowledgeSet]:
        """Randomly split into (rest, part) where part holds ``fraction`` of the facts or subjects.

        ``by="subject"`` keeps all facts of one subject on the same side (use it for validation
        splits, so that validation people are people the method never saw).
        """
        if by not in ("fact", "subject"):
            raise UsageError(f"split by={by!r} is not supported; use 'fact' or 'subject'")
        if not 0 < fraction < 1:
            raise UsageError(f"split fraction must be strictly between 0 and 1, got {fraction}")
        if by == "subject":
            missing = next((f.id for f in self.facts if f.subject is None), None)
            if missing is not None:
                raise UsageError(f"cannot split {self.name!r} by subject: fact {missing!r} has no subject")
            units = list(self.subjects)
        else:
            units = list(self.ids)
        n_part = round(fraction * len(units))
        if not 0 < n_part < len(units):
            raise UsageError(
                f"splitting {len(units)} {by}s of {self.name!r} with fraction {fraction} leaves one side empty"
            )
        part = set(random.Random(seed).sample(units, n_part))
        key = (lambda f: f.subject) if by == "subject" else (lambda f: f.id)
        rest = KnowledgeSet(tuple(f for f in self.facts if key(f) not in part), name=f"{self.name}/rest")
        chosen = KnowledgeSet(tuple(f for f in self.facts if key(f) in part), name=f"{self.name}/part")
        return rest, chosen

    def paraphrased(self) -> KnowledgeSet:
        """One fact per paraphrase prompt (id ``{id}/p{j}``), same target, subject and relation."""
        facts = tuple(
            Fact(f"{f.id}/p{j}", prompt, f.target, f.subject, f.relation)
            for f in self.facts
            for j, prompt in enumerate(f.paraphrases)
        )
        if not facts:
            raise UsageError(f"KnowledgeSet {self.name!r} has no paraphrases")
        return KnowledgeSet(facts, name=f"{self.name}/paraphrased")

    # tokenization --------------------------------------------------------------------------
    def encode(
        self,
        model_or_tokenizer: Any,
        *,
        padding_side: PaddingSide = "right",
        prepend_bos: bool = True,
        max_length: int | None = None,
    ) -> FactBatch:
        """Tokenize every fact into one :class:`FactBatch` (see :func:`encode_facts`)."""
        return encode_facts(
            self.facts,
            model_or_tokenizer,
            padding_side=padding_side,
            prepend_bos=prepend_bos,
            max_length=max_length,
        )

    def batches(self, model_or_tokenizer: Any, batch_size: int = 32, **encode_options: Any) -> Iterator[FactBatch]:
        """Consecutive :class:`FactBatch` es of at most ``batch_size`` facts, in order."""
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        for start in range(0, len(self.facts), batch_size):
            yield encode_facts(self.facts[start : start + batch_size], model_or_tokenizer, **encode_options)


@dataclass(frozen=True)
class Prompts:
    """Every prompt of some facts (each fact's prompt = variant 0, then its paraphrases), as facts
    of their own (id ``{fact id}#{variant}``), with the (relation, variant) of each: what an edit
    that must hold in every wording reads."""

    knowledge: KnowledgeSet
    groups: tuple[tuple[str | None, int], ...]  # (relation, variant) per prompt

    @classmethod
    def of(cls, facts: KnowledgeSet) -> Prompts:
        prompts, groups = [], []
        for fact in facts:
            for variant, prompt in enumerate((fact.prompt, *fact.paraphrases)):
                prompts.append(Fact(f"{fact.id}#{variant}", prompt, fact.target, fact.subject, fact.relation))
                groups.append((fact.relation, variant))
        return cls(KnowledgeSet(tuple(prompts), name=f"{facts.name}/prompts"), tuple(groups))

    def batches(self, model: Any, batch_size: int = 64) -> Iterator[tuple[slice, FactBatch]]:
        """``(rows, batch)`` pairs in order, each batch on the model's input device
        (:func:`loka.models.input_device`)."""
        from loka.models.forward import input_device

        device = input_device(model)
        for start, batch in zip(
            range(0, len(self.knowledge), batch_size), self.knowledge.batches(model, batch_size), strict=True
        ):
            yield slice(start, start + len(batch)), batch.to(device)


def _resolve_tokenizer(model_or_tokenizer: Any, max_length: int | None) -> tuple[Any, int | None]:
    """Accept a TransformerBridge (uses its tokenizer and n_ctx) or a tokenizer."""
    if hasattr(model_or_tokenizer, "cfg") and hasattr(model_or_tokenizer, "tokenizer"):
        tokenizer = model_or_tokenizer.tokenizer
        if tokenizer is None:
            raise UsageError("the model has no tokenizer; pass one explicitly")
        return tokenizer, max_length or getattr(model_or_tokenizer.cfg, "n_ctx", None)
    if not callable(getattr(model_or_tokenizer, "encode", None)):
        raise UsageError(
            f"expected a TransformerBridge or a Hugging Face tokenizer, got {type(model_or_tokenizer).__name__}"
        )
    if max_length is None:
        limit = getattr(model_or_tokenizer, "model_max_length", None)
        max_length = limit if isinstance(limit, int) and limit < 1_000_000 else None
    return model_or_tokenizer, max_length


def _is_blank(text: str) -> bool:
    return not text.strip()


def split_fact(tokenizer: Any, fact: Fact) -> tuple[list[int], list[int], list[tuple[int, int]] | None]:
    """``(prompt ids, target ids, prompt offsets)`` of ``fact``: its joined text (:attr:`Fact.text`)
    tokenized once (no special tokens) and split where the prompt ends.

    With a fast tokenizer the prompt is the run of leading tokens that end within the prompt's
    characters: exactly ``tokenizer(prompt)`` whenever that is a prefix of the joined encoding (a
    prompt that does not end in whitespace, with a byte-level or SentencePiece-style tokenizer);
    a token that straddles the boundary (a prompt's trailing space that the tokenizer reads as the
    start of the answer's first word) belongs to the target. A whitespace-only first target token (a lone ``"▁"`` or
    ``" "``) moves to the prompt while more target tokens follow. The offsets (character spans in
    the prompt, for subject positions) are ``None`` for a slow tokenizer, which is split by its
    prompt-alone encoding where that is a prefix of the joined one, and otherwise tokenizes the
    target on its own.
    """
    text, boundary = fact.text, len(fact.prompt)
    if getattr(tokenizer, "is_fast", False):
        joined = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(joined["input_ids"]), [tuple(o) for o in joined["offset_mapping"]]
        cut = next((i for i, (_, end) in enumerate(offsets) if end > boundary), len(ids))
        while cut < len(ids) - 1 and _is_blank(text[offsets[cut][0] : offsets[cut][1]]):
            cut += 1
        if 0 < cut < len(ids):
            return ids[:cut], ids[cut:], offsets[:cut]
        prompt = tokenizer(fact.prompt, add_special_tokens=False, return_offsets_mapping=True)
        target = tokenizer(text[boundary:], add_special_tokens=False)["input_ids"]
        return list(prompt["input_ids"]), list(target), [tuple(o) for o in prompt["offset_mapping"]]
    prompt_ids = list(tokenizer(fact.prompt, add_special_tokens=False)["input_ids"])
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if ids[: len(prompt_ids)] == prompt_ids and len(ids) > len(prompt_ids):
        cut = len(prompt_ids)
        while cut < len(ids) - 1 and _is_blank(tokenizer.decode(ids[cut : cut + 1])):
            cut += 1
        return ids[:cut], ids[cut:], None
    return prompt_ids, list(tokenizer(text[boundary:], add_special_tokens=False)["input_ids"]), None


def encode_facts(
    facts: Sequence[Fact],
    model_or_tokenizer: Any,
    *,
    padding_side: PaddingSide = "right",
    prepend_bos: bool = True,
    max_length: int | None = None,
) -> FactBatch:
    """Tokenize facts: ``[BOS] + tokens(prompt + joined target)``, split where the prompt ends
    (:func:`split_fact`), so the target ids are the tail of the joined text's encoding.

    Raises ValueError naming the fact when prompt + target exceed ``max_length`` (default: the
    model's context, or the tokenizer's ``model_max_length``), when a target tokenizes to nothing,
    when BOS is asked for and the tokenizer has none, or when a fact has a subject and the
    tokenizer cannot give character offsets (a slow tokenizer).
    """
    if padding_side not in ("left", "right"):
        raise UsageError(f"padding_side={padding_side!r} is not supported; use 'left' or 'right'")
    if not facts:
        raise UsageError("no facts to encode")
    tokenizer, max_length = _resolve_tokenizer(model_or_tokenizer, max_length)
    bos = []
    if prepend_bos:
        if tokenizer.bos_token_id is None:
            raise UsageError("prepend_bos=True but the tokenizer has no BOS token; pass prepend_bos=False")
        bos = [tokenizer.bos_token_id]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    rows, targets, subject_flags = [], [], []
    for fact in facts:
        prompt, target, offsets = split_fact(tokenizer, fact)
        if not target:
            raise UsageError(f"fact {fact.id!r}: target {fact.target!r} tokenizes to no tokens")
        ids = bos + prompt + target
        if max_length is not None and len(ids) > max_length:
            raise UsageError(
                f"fact {fact.id!r} is {len(ids)} tokens (BOS + prompt + target), longer than the "
                f"context of {max_length}; shorten or drop it (nothing is truncated)"
            )
        flags = [False] * len(ids)
        start = fact.prompt.find(fact.subject) if fact.subject else -1
        if start >= 0:
            if offsets is None:
                raise UsageError(
                    f"fact {fact.id!r}: subject positions need a fast tokenizer (character offsets); "
                    "load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
                )
            end = start + len(fact.subject)
            for i, (a, b) in enumerate(offsets):
                flags[len(bos) + i] = a < end and b > start
        rows.append(ids)
        targets.append(target)
        subject_flags.append(flags)

    n, width = len(rows), max(map(len, rows))
    n_target = max(map(len, targets))
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    subject_mask = torch.zeros((n, width), dtype=torch.bool)
    target_ids = torch.full((n, n_target), pad_id, dtype=torch.long)
    target_mask = torch.zeros((n, n_target), dtype=torch.bool)
    positions = torch.zeros((n, n_target), dtype=torch.long)
    for i, (ids, target, flags) in enumerate(zip(rows, targets, subject_flags, strict=True)):
        offset = width - len(ids) if padding_side == "left" else 0
        span = slice(offset, offset + len(ids))
        input_ids[i, span] = torch.tensor(ids)
        attention_mask[i, span] = 1
        subject_mask[i, span] = torch.tensor(flags)
        first = offset + len(ids) - len(target) - 1  # the last prompt token predicts target[0]
        target_ids[i, : len(target)] = torch.tensor(target)
        target_mask[i, : len(target)] = True
        positions[i] = first + torch.arange(n_target).clamp(max=len(target) - 1)
    return FactBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        target_ids=target_ids,
        target_mask=target_mask,
        prediction_positions=positions,
        subject_mask=subject_mask,
        fact_ids=tuple(f.id for f in facts),
        padding_side=padding_side,
    )


# TOFU ---------------------------------------------------------------------------------------
# Offsets of each split inside `full` (TOFU's layout: forget splits are the last authors).
_TOFU_OFFSETS = {
    "full": 0,
    "retain90": 0,
    "retain95": 0,
    "retain99": 0,
    "forget01": 3960,
    "forget05": 3800,
    "forget10": 3600,
    "retain_perturbed": 0,
    "forget01_perturbed": 3960,
    "forget05_perturbed": 3800,
    "forget10_perturbed": 3600,
}
TOFU_SPLITS = tuple(_TOFU_OFFSETS) + ("holdout01", "holdout05", "holdout10", "real_authors", "world_facts")
_TOFU_QUESTIONS_PER_AUTHOR = 20


def load_tofu(
    directory: str | os.PathLike[str],
    split: str,
    *,
    template: str = "Question: {question}\nAnswer:",
) -> KnowledgeSet:
    """Read one TOFU split (Maini et al. 2024) from a directory of its JSONL files.

    ``question`` becomes the prompt through ``template``, ``answer`` the target. Facts get ids
    ``tofu/a{author}/q{k}`` that are the same in every split drawn from ``full`` (so a forget
    fact has the same id in ``forget01`` and ``full``); holdout and utility sets get their own.
    Paraphrased questions found in any ``*_perturbed.jsonl`` file of the directory become the
    facts' paraphrases.
    """
    if split not in TOFU_SPLITS:
        raise UsageError(f"unknown TOFU split {split!r}; choose one of {', '.join(TOFU_SPLITS)}")
    if "{question}" not in template:
        raise UsageError(f"template {template!r} must contain '{{question}}'")
    directory = Path(directory)
    path = directory / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"TOFU split {split!r} not found: {str(path)!r} does not exist")

    def read(p: Path) -> list[dict[str, Any]]:
        with p.open(encoding="utf-8") as lines:
            return [json.loads(line) for line in lines if line.strip()]

    paraphrased: dict[str, str] = {}
    for extra in sorted(directory.glob("*_perturbed.jsonl")):
        for row in read(extra):
            if row.get("paraphrased_question"):
                paraphrased.setdefault(row["question"], row["paraphrased_question"])
    records = []
    for i, row in enumerate(read(path)):
        missing = {"question", "answer"} - set(row)
        if missing:
            raise UsageError(f"{path}:{i + 1}: missing key(s) {sorted(missing)}")
        if split in _TOFU_OFFSETS:
            author, k = divmod(_TOFU_OFFSETS[split] + i, _TOFU_QUESTIONS_PER_AUTHOR)
            fact_id = f"tofu/a{author:03d}/q{k:02d}"
        elif split.startswith("holdout"):
            author, k = divmod(i, _TOFU_QUESTIONS_PER_AUTHOR)
            fact_id = f"tofu/holdout/a{author:03d}/q{k:02d}"
        else:
            fact_id = f"tofu/{split}/{i:03d}"
        para = paraphrased.get(row["question"])
        records.append(
            {
                "id": fact_id,
                "prompt": template.format(question=row["question"]),
                "target": row["answer"],
                **({"paraphrases": [template.format(question=para)]} if para else {}),
            }
        )
    return KnowledgeSet.from_records(records, name=f"tofu-{split}")
