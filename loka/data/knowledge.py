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

import json
import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from loka.base.errors import UsageError
from loka.data.encoding import FactBatch, PaddingSide, encode_facts
from loka.data.facts import Fact, content_id, fact_from_record
from loka.models.forward import input_device

__all__ = ["KnowledgeSet", "Prompts"]


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
            fact = fact_from_record(record, where)
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
    def json_summary(self) -> str:
        """How a JSON record names this set (:func:`loka.base.files.json_default`): its name and size."""
        return f"KnowledgeSet({self.name!r}, {len(self)} facts)"

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

    def in_context(self) -> KnowledgeSet | None:
        """Each fact asked after the same person's other facts of this set (their texts, joined by
        ". "; id ``{id}/in-context``): the in-context attack, which gives the model everything else
        it should have forgotten about the person before the question. Facts without a subject or
        without another fact of their person are left out (None if none is left)."""
        texts: dict[str, list[tuple[str, str]]] = {}
        for fact in self.facts:
            if fact.subject is not None:
                texts.setdefault(fact.subject, []).append((fact.id, fact.text))
        facts = []
        for fact in self.facts:
            others = [text for id_, text in texts.get(fact.subject, []) if id_ != fact.id]  # none for no subject
            if others:
                prompt = ". ".join(others) + ". " + fact.prompt
                facts.append(Fact(f"{fact.id}/in-context", prompt, fact.target, fact.subject, fact.relation))
        return KnowledgeSet(tuple(facts), name=f"{self.name}/in-context") if facts else None

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
        device = input_device(model)
        for start, batch in zip(
            range(0, len(self.knowledge), batch_size), self.knowledge.batches(model, batch_size), strict=True
        ):
            yield slice(start, start + len(batch)), batch.to(device)
