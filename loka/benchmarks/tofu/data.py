"""TOFU's data: the knowledge sets and evaluation sets of a run, the author split, and author names.

:func:`load_data` reads TOFU's JSONL files into the sets of one :class:`~loka.benchmarks.tofu.config.TofuConfig`
and its :class:`loka.protocol.Protocol`; :func:`split_authors` draws which retain and holdout
authors go to which protocol set; :func:`author_name` finds the author a block of questions is
about (the subject that attribution and LOKA read).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from loka.base.errors import UsageError
from loka.benchmarks.tofu.config import (
    EVAL_FRACTION,
    HOLDOUT_FILES,
    N_AUTHORS,
    N_PERTURBED_AUTHORS,
    QA_PER_AUTHOR,
    VALIDATION_FRACTION,
    TofuConfig,
    data_directory,
)
from loka.benchmarks.tofu.loading import load_tofu
from loka.data.facts import Fact
from loka.data.knowledge import KnowledgeSet
from loka.protocol import Protocol, strip_paraphrases

__all__ = ["EvalSet", "AuthorSplit", "TofuData", "author_name", "split_authors", "load_data"]


@dataclass(frozen=True)
class EvalSet:
    """The questions of one TOFU evaluation set, with everything its metrics read.

    ``paraphrased`` is the paraphrased answer (forget, retain) or the answer itself (real authors,
    world facts, as TOFU does); ``perturbed`` holds the wrong answers, the same number per question.
    """

    name: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    paraphrased: tuple[str, ...]
    perturbed: tuple[tuple[str, ...], ...]
    normalized_probability: bool  # TOFU normalises p over the options on real authors / world facts

    def __len__(self) -> int:
        return len(self.questions)


@dataclass(frozen=True)
class AuthorSplit:
    """Which authors each protocol set holds, by TOFU author number (0-199 in ``full``; the
    holdout files number their own authors from 0). See the module docstring."""

    retain_train: tuple[int, ...]
    retain_validation: tuple[int, ...]
    retain_eval: tuple[int, ...]
    reference: tuple[int, ...]
    nonmembers: tuple[int, ...]


def split_authors(config: TofuConfig) -> AuthorSplit:
    """Split the retain authors into retain_train / retain_validation / retain_eval
    (:data:`VALIDATION_FRACTION`, :data:`EVAL_FRACTION`, the rest; at least one author each) and
    the split's holdout authors into reference / non-members (half each, the non-members taking the
    odd one), drawn with the run's seed (``config.train.seed``). retain_eval authors are drawn
    among authors 0-19, the only ones ``retain_perturbed`` holds scoring data for. By author, not
    by ``Fact.subject``: a question that describes its author without naming them is its own
    subject, so a split by subject would put one author on both sides."""
    rng = random.Random(config.train.seed)
    authors = list(config.retain_authors)
    scorable = [a for a in authors if a < N_PERTURBED_AUTHORS]
    n_eval = min(max(1, round(EVAL_FRACTION * len(authors))), len(scorable))
    n_validation = max(1, round(VALIDATION_FRACTION * len(authors)))
    if n_eval + n_validation >= len(authors):
        raise UsageError(f"{len(authors)} retain authors are too few to split into train, validation and eval")
    retain_eval = set(rng.sample(scorable, n_eval))
    rest = [a for a in authors if a not in retain_eval]
    rng.shuffle(rest)
    holdout = list(range(config.n_forget_authors))  # each holdout file has as many authors as its forget split
    rng.shuffle(holdout)
    half = len(holdout) // 2
    return AuthorSplit(
        retain_train=tuple(sorted(rest[n_validation:])),
        retain_validation=tuple(sorted(rest[:n_validation])),
        retain_eval=tuple(sorted(retain_eval)),
        reference=tuple(sorted(holdout[:half])),
        nonmembers=tuple(sorted(holdout[half:])),
    )


@dataclass(frozen=True)
class TofuData:
    """The knowledge sets and evaluation sets of one configuration, and its protocol."""

    forget: KnowledgeSet  # forget authors' QA, with TOFU's paraphrased questions (methods get protocol.forget)
    retain: KnowledgeSet  # every retain author's QA (both models train on all of it)
    utility: KnowledgeSet  # real authors + world facts QA that both models train on
    holdout: KnowledgeSet  # QA of authors never trained on (split into reference and MIA non-members)
    evals: Mapping[str, EvalSet]  # "forget", "retain" (retain_eval authors only), "real_authors", "world_facts"
    protocol: Protocol  # what a method is given and what is only scored (module docstring)
    authors: AuthorSplit
    # retain_perturbed rows of every trained retain author: the tokenizer is trained on them (not on
    # the retain_eval authors' rows alone), so that the cached models do not depend on the split
    retain_perturbed: EvalSet | None = None
    ambiguous: tuple[str, ...] = ()  # prompts asked about two authors, left out of every protocol set

    def training_pairs(self, which: Literal["original", "retain"]) -> list[tuple[str, str]]:
        """(prompt, answer) pairs the model trains on; the answer carries its joining space."""
        sets = (self.forget, self.retain, self.utility) if which == "original" else (self.retain, self.utility)
        return [(f.prompt, f.text[len(f.prompt) :]) for ks in sets for f in ks]

    def all_text(self) -> list[str]:
        """Every text that will be tokenized (the tokenizer is trained on it)."""
        texts = [f.text for ks in (self.forget, self.retain, self.utility, self.holdout) for f in ks]
        for name, ev in self.evals.items():
            ev = self.retain_perturbed if name == "retain" and self.retain_perturbed is not None else ev
            texts += list(ev.questions) + list(ev.paraphrased) + [p for ps in ev.perturbed for p in ps]
        return texts


def _author(fact: Fact) -> str:
    return fact.id.rsplit("/", 1)[0]  # "tofu/a017/q03" -> "tofu/a017"; "tofu/holdout/a000/q00" -> "tofu/holdout/a000"


def _read(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


_QUESTION_WORDS = frozenset(
    "What When Which How Can Who In Is Has Does Did The Where Why Could Are Was Have Do Would Author Apart "
    "Besides Aside Given Tell Please For Beyond Outside Other Considering Regarding As On With To From "
    "Describe Name Of Were A An Any Might Will Should Since Within".split()
)


def _word(token: str) -> str:
    token = token.rstrip('?,:;!"')
    if len(token) > 2 and token.endswith("."):  # a full stop, not an initial ("Q.")
        token = token[:-1]
    for suffix in ("'s", "\u2019s"):
        if token.endswith(suffix):
            token = token[: -len(suffix)]
    return token


def author_name(questions: Sequence[str]) -> str | None:
    """The author a block of TOFU questions is about: the longest capitalised phrase (up to 6
    words, e.g. ``"Elsie Marais Van der Westhuizen"``) found in at least half as many questions
    as the most frequent one. ``None`` when no phrase occurs in 5 questions or more."""
    counts: dict[str, int] = {}
    for question in questions:
        words = [_word(w) for w in question.split()]
        seen = set()
        for i, first in enumerate(words):
            if not first.lstrip('("')[:1].isupper() or first in _QUESTION_WORDS:
                continue
            for j in range(i + 1, min(len(words), i + 6) + 1):
                phrase = " ".join(words[i:j])
                if words[j - 1].lstrip('("')[:1].isupper() and phrase in question:
                    seen.add(phrase)
        for phrase in seen:
            counts[phrase] = counts.get(phrase, 0) + 1
    if not counts or max(counts.values()) < 5:
        return None
    top = max(counts.values())
    return max((p for p, c in counts.items() if 2 * c >= top), key=lambda p: (len(p.split()), counts[p], p))


def _with_subjects(knowledge: KnowledgeSet, rows: Sequence[Mapping[str, Any]]) -> KnowledgeSet:
    """Give every fact a subject that occurs in its prompt: its author's name (see
    :func:`author_name`), or, for a question that describes the author without naming them
    ("the author born in Kuwait City ... on 08/09/1956"), the whole question."""
    facts = []
    for start in range(0, len(rows), QA_PER_AUTHOR):
        block = rows[start : start + QA_PER_AUTHOR]
        name = author_name([r["question"] for r in block])
        for fact, row in zip(knowledge.facts[start : start + QA_PER_AUTHOR], block, strict=True):
            subject = name if name is not None and name in row["question"] else row["question"]
            facts.append(replace(fact, subject=subject))
    return KnowledgeSet(tuple(facts), name=knowledge.name)


def _eval_set(name: str, rows: Sequence[Mapping[str, Any]], *, paraphrased: bool) -> EvalSet:
    counts = {len(r["perturbed_answer"]) for r in rows}
    if len(counts) != 1:
        raise UsageError(f"TOFU {name}: every question must have the same number of perturbed answers, got {counts}")
    return EvalSet(
        name=name,
        questions=tuple(r["question"] for r in rows),
        answers=tuple(r["answer"] for r in rows),
        paraphrased=tuple(r["paraphrased_answer"] if paraphrased else r["answer"] for r in rows),
        perturbed=tuple(tuple(r["perturbed_answer"]) for r in rows),
        normalized_probability=not paraphrased,
    )


def load_data(config: TofuConfig, data_dir: str | os.PathLike[str]) -> TofuData:
    """Read the sets of ``config`` from a directory of TOFU JSONL files (see its README)."""
    directory = data_directory(data_dir)
    template = config.template
    full_rows = _read(directory / "full.jsonl")
    if len(full_rows) != N_AUTHORS * QA_PER_AUTHOR:
        raise UsageError(f"TOFU full.jsonl must have {N_AUTHORS * QA_PER_AUTHOR} rows, got {len(full_rows)}")
    full = _with_subjects(load_tofu(directory, "full", template=template), full_rows)
    forget_ids = {f"tofu/a{a:03d}/" for a in config.forget_authors}
    retain_ids = {f"tofu/a{a:03d}/" for a in config.retain_authors}
    forget = full.filter(lambda f: f.id[:10] in forget_ids, name=f"tofu-{config.split}")
    retain = full.filter(lambda f: f.id[:10] in retain_ids, name="tofu-retain")

    holdout_name = HOLDOUT_FILES[config.split]
    holdout_rows = _read(directory / f"{holdout_name}.jsonl")
    holdout = _with_subjects(load_tofu(directory, holdout_name, template=template), holdout_rows)

    n = config.n_utility
    utility_facts: list[Fact] = []
    evals: dict[str, EvalSet] = {}
    for name in ("real_authors", "world_facts"):
        rows = _read(directory / f"{name}_perturbed.jsonl")[:n]
        utility_facts += [
            Fact(f"tofu/{name}/{i:03d}", template.format(question=r["question"]), r["answer"])
            for i, r in enumerate(rows)
        ]
        evals[name] = _eval_set(name, rows, paraphrased=False)
    utility = KnowledgeSet(tuple(utility_facts), name="tofu-utility")

    forget_rows = _read(directory / f"{config.split}_perturbed.jsonl")
    same = [(r["question"], r["answer"]) for r in forget_rows] == [
        (r["question"], r["answer"]) for r in full_rows[len(full_rows) - len(forget) :]
    ]
    if not same:
        raise UsageError(f"TOFU {config.split}_perturbed.jsonl does not match the last authors of full.jsonl")
    evals["forget"] = _eval_set("forget", forget_rows, paraphrased=True)
    retain_rows = _read(directory / "retain_perturbed.jsonl")
    if len(retain_rows) != N_PERTURBED_AUTHORS * QA_PER_AUTHOR:
        raise UsageError(f"TOFU retain_perturbed.jsonl must have {N_PERTURBED_AUTHORS * QA_PER_AUTHOR} rows")
    n_perturbed = min(config.n_retain_authors, N_PERTURBED_AUTHORS) * QA_PER_AUTHOR
    retain_perturbed = _eval_set("retain", retain_rows[:n_perturbed], paraphrased=True)

    # A question asked, word for word, about two authors of this run (TOFU has one: "What is the
    # full name of the author?", authors 5 and 22) names neither; in two protocol sets it would be
    # a prompt a method is given and scored on, so it is left out of every protocol set.
    owners: dict[str, set[str]] = {}
    for fact in (*forget, *retain, *holdout):
        for prompt in (fact.prompt, *fact.paraphrases):
            owners.setdefault(prompt, set()).add(_author(fact))
    ambiguous = {prompt for prompt, who in owners.items() if len(who) > 1}
    authors = split_authors(config)
    scored = [
        r
        for a in authors.retain_eval
        for r in retain_rows[a * QA_PER_AUTHOR : (a + 1) * QA_PER_AUTHOR]
        if template.format(question=r["question"]) not in ambiguous
    ]
    evals["retain"] = _eval_set("retain", scored, paraphrased=True)
    held = sorted({_author(f) for f in holdout})
    if len(held) != config.n_forget_authors:
        raise UsageError(f"TOFU {holdout_name}.jsonl must hold {config.n_forget_authors} authors, got {len(held)}")

    def of(knowledge: KnowledgeSet, numbers: Sequence[int], prefix: str, name: str) -> KnowledgeSet:
        keep = {f"{prefix}a{a:03d}" for a in numbers}
        return knowledge.filter(lambda f: _author(f) in keep and not ambiguous & {f.prompt, *f.paraphrases}, name=name)

    protocol = Protocol(
        forget=strip_paraphrases(forget.filter(lambda f: not ambiguous & {f.prompt, *f.paraphrases}, name="forget")),
        retain_train=of(retain, authors.retain_train, "tofu/", "retain_train"),
        retain_validation=of(retain, authors.retain_validation, "tofu/", "retain_validation"),
        retain_eval=of(retain, authors.retain_eval, "tofu/", "retain_eval"),
        reference=of(holdout, authors.reference, "tofu/holdout/", "reference"),
        nonmembers=of(holdout, authors.nonmembers, "tofu/holdout/", "nonmembers"),
        name=f"TOFU {config.split} (seed {config.train.seed})",
    )
    return TofuData(
        forget=forget, retain=retain, utility=utility, holdout=holdout, evals=evals, protocol=protocol,
        authors=authors, retain_perturbed=retain_perturbed, ambiguous=tuple(sorted(ambiguous)),
    )  # fmt: skip
