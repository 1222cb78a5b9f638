"""TOFU on a CPU: the benchmark unlearning papers report, scaled down, with its own metrics.

TOFU (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs", arXiv:2401.06121)
fine-tunes a model on 200 fictitious authors x 20 QA pairs, asks a method to forget the last 2,
10 or 20 authors (``forget01`` / ``forget05`` / ``forget10``), and compares the result with a
*retain model* trained on everything except those authors. Its table has two headline numbers:

- **forget quality**: the KS-test p-value between the forget-set truth ratios of the unlearned
  model and of the retain model (high = indistinguishable from never having seen the authors);
- **model utility**: the harmonic mean of probability, ROUGE-L and truth ratio on the retain
  authors, on real authors and on world facts (nine numbers; see :mod:`loka.benchmarks.tofu_metrics`).

Here the protocol is scaled to a CPU. A pretrained LLM cannot be fine-tuned on two cores, so
:func:`run` trains a small GPT-2 *from scratch* (the testbed's recipe: :mod:`loka.testbed.training`)
on the forget split's authors, the first ``n_retain_authors`` other authors and the real-authors
and world-facts QA (the *original*), and the same recipe with the same seed on the same data minus
the forget authors (the *retain model*). Both are cached as Hugging Face directories under
``$LOKA_CACHE_DIR/tofu`` (else ``~/.cache/loka/tofu``), named by a hash of the whole config and
the data files' hashes, so a second run skips training.

**Who sees what** (a :class:`loka.protocol.Protocol`, checked disjoint when it is built; the split
is drawn by *author*, with the run's ``seed``, :func:`split_authors`). TOFU's own code fine-tunes
on the retain authors it then scores utility on, and gives its membership attack the same holdout
authors a method may use; a number measured on what a method was shown says how well it fits, not
how well it unlearns. So:

=======================  ===============================================  ==========================
set                      authors                                          used by
=======================  ===============================================  ==========================
forget                   the split's forget authors, first wording only   methods; scored (forget)
retain_train             60% of the retain authors                        methods (training)
retain_validation        10% of the retain authors                        methods (budget choice)
retain_eval              30% of the retain authors, drawn from authors    scored only: the "retain"
                         0-19 (the only ones ``retain_perturbed`` covers)  third of model utility
reference                half of the split's holdout authors              methods ("unknown person")
non-members              the other half of the holdout authors            scored only (MIA)
real authors, world      TOFU's utility QA (both models train on it)      scored only (utility)
facts
=======================  ===============================================  ==========================

Both trained models know every retain author; a method trains on the retain_train authors only, so
the retain part of the utility is measured on authors whose knowledge the method had no signal to
protect. The split is the same for every method and every method seed; each method runs under one
:class:`loka.methods.Budget` (``run(budget=...)``: check forget accuracy on the forget prompts
every ``check_every`` steps, stop at ``target_forget_accuracy`` or ``max_steps``), and the table
shows what each spent (:class:`loka.methods.Compute`: optimizer steps, forward tokens, seconds).
After every method :func:`run` checks what the method was shown (``UnlearningResult.seen``) and
refuses to score it on a retain_eval or non-member author it saw.

| column | set | definition |
|---|---|---|
| forget quality | forget | KS p-value of truth ratios vs the retain model |
| model utility | retain_eval, real authors, world facts | hmean of 9 numbers |
| forget ROUGE-L | forget | ROUGE-L recall of the greedy answer |
| forget prob. | forget | mean of ``exp(-nll)`` of the answer (its tokens and the EOS after them, as TOFU) |
| forget TR | forget | ``mean(min(R, 1/R))`` |
| MIA AUC | forget vs non-members | LOSS attack (Yeom et al. 2018) on the answer tokens + EOS, sklearn's ROC AUC |
| retain ROUGE-L | retain_eval | ROUGE-L recall of the greedy answer |

**Seeds** (``run(seeds=k)``): each method runs with seeds ``seed``, ``seed + 1``, ...,
``seed + k - 1`` on the same two trained models and the same author split; every seed is one row.
With ``k > 1`` the report adds each method's mean [min, max] *over its seeds* of forget quality,
model utility and MIA AUC. That range says how much a method's result moves from one run of it to
the next; it is not a confidence interval, and it does not cover another draw of authors or of the
trained models (forget quality is one KS p-value per model, so a per-author interval does not exist).

What differs from the paper: models trained from scratch never reach a pretrained model's
fluency, so absolute numbers (real authors and world facts above all: the model knows only the QA
it was trained on) are not comparable with the paper's Llama/Phi numbers; the *relations* between
rows are what the benchmark measures. The retain set of the utility is TOFU's ``retain_perturbed``
(authors 0-19, which carry paraphrased and perturbed answers) restricted to the retain_eval
authors, and the MIA's non-members are half of TOFU's holdout authors (see above).
Questions are read through ``"Question: {question}\\nAnswer:"`` (no chat template).
ROUGE-L is rouge-score's with Porter stemming, as in TOFU's code (:func:`loka.benchmarks.tofu_metrics.rouge_l`).
Membership attacks score the answer's tokens only, as open-unlearning's TOFU attacks do (``mia_aucs``
also holds zlib and Min-40%).

Sizes (``size=``), with wall times measured on 2 CPU cores shared with other jobs (load 2-5):

- ``"default"``: a 4-layer GPT-2 (d_model 128, d_mlp 512, vocab 2048 byte-level BPE trained on the
  run's texts, n_ctx 512; 1.1M parameters) trained on the 2 / 10 / 20 forget authors, 10 retain
  authors (6 retain_train, 1 retain_validation, 3 retain_eval) and all 100 real-authors + 117
  world-facts QA (457 QA for forget01), 30 epochs, batch 32, lr 3e-3, loss on every token.
  forget01: the two models train in parallel in about 6 min (10-13 min on a busier machine); the
  original model answers its training QA (greedy ROUGE-L recall 0.95 on forget, 0.97 on
  retain_eval) and the retain model does not know the forget authors (0.04). Under the default
  budget (load 6-7 on 2 cores, one seed): LOKA about 4 min (most of it attribution), gradient
  ascent and task vector about 20 s each, scoring one model about 20 s; the whole run 16 min, 6
  once the models are cached. Timings and the table: ``python bench/tofu.py``.
- ``"tiny"`` (tests): a 2-layer GPT-2 (d_model 64, vocab 1024), 3 retain authors (one in each
  retain set), 10 real-authors and 10 world-facts QA, 8 epochs, trained in this process; it learns
  little (ROUGE-L near 0), which is enough to check the plumbing; about 15 s to build.

Every method runs with its own defaults unless ``method_options`` says otherwise; the sets, the
seed and the budget are the protocol's, not options.

>>> report = run("forget01", seeds=3)      # doctest: +SKIP
>>> print(report.table())                  # doctest: +SKIP
>>> report.save("out/tofu")                # doctest: +SKIP  (tofu.json + tofu.html)
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from loka.benchmarks import tofu_metrics as tm
from loka.data import Fact, KnowledgeSet, load_tofu
from loka.membership import DEFAULT_MIN_K
from loka.methods import Budget, unlearn
from loka.models import hf_model, load_model, plain_copy, quiet_transformers
from loka.models import logits as model_logits
from loka.protocol import Protocol, Seen, strip_paraphrases
from loka.testbed import default_cache_dir, worker
from loka.testbed.training import ModelConfig, TrainConfig, train_tokenizer

__all__ = [
    "SPLITS",
    "SIZES",
    "METHODS",
    "TofuConfig",
    "TofuData",
    "TofuScores",
    "TofuReport",
    "EvalSet",
    "AuthorSplit",
    "author_name",
    "make_config",
    "split_authors",
    "load_data",
    "evaluate_model",
    "run",
    "cache_dir_default",
]

logger = logging.getLogger(__name__)

Split = Literal["forget01", "forget05", "forget10"]
Size = Literal["default", "tiny"]
MethodName = Literal["loka", "gradient_ascent", "task_vector"]
SPLITS: tuple[Split, ...] = ("forget01", "forget05", "forget10")
SIZES: tuple[Size, ...] = ("default", "tiny")
METHODS: tuple[MethodName, ...] = ("loka", "gradient_ascent", "task_vector")
# bump when the recipe changes in a way the config does not capture (2: the saved tokenizer adds
# BOS itself, loka.testbed.training.train_tokenizer; the weights are trained as before)
RECIPE_VERSION = 2
VALIDATION_FRACTION = 0.1  # of the retain authors: retain_validation (a method's budget choice)
EVAL_FRACTION = 0.3  # of the retain authors: retain_eval (scored only)
MIN_RETAIN_AUTHORS = 3  # one each for retain_train, retain_validation, retain_eval

N_AUTHORS = 200
QA_PER_AUTHOR = 20
N_PERTURBED_AUTHORS = 20  # retain_perturbed covers authors 0-19
TEMPLATE = "Question: {question}\nAnswer:"
_N_FORGET_AUTHORS = {"forget01": 2, "forget05": 10, "forget10": 20}
_HOLDOUT = {"forget01": "holdout01", "forget05": "holdout05", "forget10": "holdout10"}
_FILES = (
    "full",
    "forget01_perturbed",
    "forget05_perturbed",
    "forget10_perturbed",
    "retain_perturbed",
    "real_authors_perturbed",
    "world_facts_perturbed",
    "holdout01",
    "holdout05",
    "holdout10",
)


def cache_dir_default() -> Path:
    """``$LOKA_CACHE_DIR/tofu`` if set, else ``~/.cache/loka/tofu`` (the testbed cache's sibling)."""
    return default_cache_dir().parent / "tofu"


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TofuConfig:
    """Everything that determines the two trained models; its hash names the cache directory.

    ``n_utility`` is how many real-authors and how many world-facts questions are used (the
    first ones of each; ``None``: all 100 and 117). ``data`` holds the SHA-256 of each data file.
    """

    split: Split
    n_retain_authors: int
    n_utility: int | None
    model: ModelConfig
    train: TrainConfig
    vocab_size: int
    template: str = TEMPLATE
    data: tuple[tuple[str, str], ...] = ()

    @property
    def n_forget_authors(self) -> int:
        return _N_FORGET_AUTHORS[self.split]

    @property
    def forget_authors(self) -> tuple[int, ...]:
        return tuple(range(N_AUTHORS - self.n_forget_authors, N_AUTHORS))

    @property
    def retain_authors(self) -> tuple[int, ...]:
        return tuple(range(self.n_retain_authors))

    def key(self) -> str:
        blob = json.dumps({"recipe": RECIPE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(
        n_retain_authors=10,
        n_utility=None,
        model=ModelConfig(n_layers=4, d_model=128, n_heads=4, d_mlp=512, vocab_size=2048, n_ctx=512),
        train=TrainConfig(epochs=30, batch_size=32, lr=3e-3, passage_repeats=1),
        vocab_size=2048,
    ),
    "tiny": dict(
        n_retain_authors=3,
        n_utility=10,
        model=ModelConfig(n_layers=2, d_model=64, n_heads=4, d_mlp=256, vocab_size=1024, n_ctx=512),
        train=TrainConfig(epochs=8, batch_size=16, lr=5e-3, passage_repeats=1),
        vocab_size=1024,
    ),
}


def _data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    if data_dir is None:
        data_dir = os.environ.get("LOKA_TOFU_DIR")
        if not data_dir:
            raise ValueError("no TOFU data directory: pass data_dir= or set LOKA_TOFU_DIR to a directory of TOFU JSONL")
    path = Path(data_dir)
    missing = [f"{name}.jsonl" for name in _FILES if not (path / f"{name}.jsonl").is_file()]
    if not path.is_dir() or missing:
        what = "does not exist" if not path.is_dir() else f"lacks {', '.join(missing)}"
        raise ValueError(
            f"TOFU data directory {str(path)!r} {what}; it must hold TOFU's JSONL files ({_FILES[0]}.jsonl, ...)"
        )
    return path


def _file_hashes(directory: Path) -> tuple[tuple[str, str], ...]:
    out = []
    for name in _FILES:
        with (directory / f"{name}.jsonl").open("rb") as f:
            out.append((name, hashlib.file_digest(f, "sha256").hexdigest()))
    return tuple(out)


def make_config(
    split: str, *, n_retain_authors: int | None = None, size: str = "default", seed: int = 0, data_hashes: Any = ()
) -> TofuConfig:
    """The config of a run, with every argument checked (ValueError says what is allowed)."""
    if split not in SPLITS:
        raise ValueError(f"unknown TOFU split {split!r}; choose one of {', '.join(SPLITS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    preset = dict(_PRESETS[size])
    most = N_AUTHORS - _N_FORGET_AUTHORS[split]
    if n_retain_authors is None:
        n_retain_authors = preset["n_retain_authors"]
    low = MIN_RETAIN_AUTHORS
    if (
        not isinstance(n_retain_authors, int)
        or isinstance(n_retain_authors, bool)
        or not low <= n_retain_authors <= most
    ):
        raise ValueError(
            f"n_retain_authors must be an integer from {low} to {most} for {split} (the retain authors are split "
            f"into retain_train, retain_validation and retain_eval), got {n_retain_authors!r}"
        )
    preset.update(n_retain_authors=n_retain_authors, train=replace(preset["train"], seed=seed))
    return TofuConfig(split=split, data=tuple(data_hashes), **preset)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
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
        raise ValueError(f"{len(authors)} retain authors are too few to split into train, validation and eval")
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
        raise ValueError(f"TOFU {name}: every question must have the same number of perturbed answers, got {counts}")
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
    directory = _data_dir(data_dir)
    template = config.template
    full_rows = _read(directory / "full.jsonl")
    if len(full_rows) != N_AUTHORS * QA_PER_AUTHOR:
        raise ValueError(f"TOFU full.jsonl must have {N_AUTHORS * QA_PER_AUTHOR} rows, got {len(full_rows)}")
    full = _with_subjects(load_tofu(directory, "full", template=template), full_rows)
    forget_ids = {f"tofu/a{a:03d}/" for a in config.forget_authors}
    retain_ids = {f"tofu/a{a:03d}/" for a in config.retain_authors}
    forget = full.filter(lambda f: f.id[:10] in forget_ids, name=f"tofu-{config.split}")
    retain = full.filter(lambda f: f.id[:10] in retain_ids, name="tofu-retain")

    holdout_name = _HOLDOUT[config.split]
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
        raise ValueError(f"TOFU {config.split}_perturbed.jsonl does not match the last authors of full.jsonl")
    evals["forget"] = _eval_set("forget", forget_rows, paraphrased=True)
    retain_rows = _read(directory / "retain_perturbed.jsonl")
    if len(retain_rows) != N_PERTURBED_AUTHORS * QA_PER_AUTHOR:
        raise ValueError(f"TOFU retain_perturbed.jsonl must have {N_PERTURBED_AUTHORS * QA_PER_AUTHOR} rows")
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
        raise ValueError(f"TOFU {holdout_name}.jsonl must hold {config.n_forget_authors} authors, got {len(held)}")

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


# --------------------------------------------------------------------------------------------
# Building (training) the two models, cached
# --------------------------------------------------------------------------------------------
def _build(config: TofuConfig, data: TofuData, root: Path, *, progress: bool, workers: bool = True) -> None:
    """Train the original and the retain model at once, each in its own single-threaded worker
    process (``python -m loka.testbed.worker``), in a temporary directory renamed into place.
    ``workers=False`` trains them one after the other in this process (for tiny models, where
    starting two interpreters costs more than the training)."""
    start = time.perf_counter()
    with worker.build_directory(root) as (tmp, jobs):
        tokenizer = train_tokenizer(data.all_text(), config.vocab_size)
        tokenizer.save_pretrained(tmp / "tokenizer")
        longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in data.all_text()) + 2
        if longest > config.model.n_ctx:
            raise ValueError(f"a TOFU text is {longest} tokens, longer than n_ctx={config.model.n_ctx}")
        logs = {}
        for position, name in enumerate(("original", "retain")):
            spec = worker.job(
                tmp, name, data.training_pairs(name), [], config.model, config.train,  # type: ignore[arg-type]
                progress=progress, position=position, desc=f"TOFU {name} model",
            )  # fmt: skip
            if workers:
                jobs[name] = worker.start(tmp, name, spec)
            else:
                worker.train(spec)
                logs[name] = json.loads((tmp / name / "train_log.json").read_text())
        for name, process in jobs.items():
            logs[name] = worker.finish(tmp, name, process, f"the TOFU {name} model")
        shutil.rmtree(tmp / "tokenizer")
        info = {
            "config": asdict(config),
            "recipe_version": RECIPE_VERSION,
            "build_seconds": round(time.perf_counter() - start, 2),
            "training": logs,
            "n_training_qa": {
                "original": len(data.training_pairs("original")),
                "retain": len(data.training_pairs("retain")),
            },
        }
        (tmp / "build.json").write_text(json.dumps(info, indent=2))
    logger.info("built TOFU models %s in %.1f s", root, time.perf_counter() - start)


# --------------------------------------------------------------------------------------------
# Scoring one model
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TofuScores:
    """TOFU's numbers for one model (see :mod:`loka.benchmarks.tofu_metrics` for definitions).

    ``forget_quality`` is None until a retain model's truth ratios are given; ``utility`` holds
    the nine numbers of the model utility (``"retain/probability"``, ...); ``forget_truth_ratios``
    the per-question ``R`` on the forget set (what the KS test compares); ``seconds`` the
    method's wall time (training time for the original and the retain model); ``seed`` the
    method's seed and ``compute`` its :class:`loka.methods.Compute` as a dict (None for the
    original and the retain model).
    """

    name: str
    model_utility: float
    forget_rouge_l: float
    forget_probability: float
    forget_truth_ratio: float
    mia_auc: float
    utility: Mapping[str, float]
    mia_aucs: Mapping[str, float]
    forget_truth_ratios: tuple[float, ...]
    forget_quality: float | None = None
    seconds: float | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    seed: int | None = None
    compute: Mapping[str, float] | None = None

    @property
    def retain_rouge_l(self) -> float:
        return self.utility["retain/rouge_l"]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["utility"] = dict(self.utility)
        out["mia_aucs"] = dict(self.mia_aucs)
        out["forget_truth_ratios"] = list(self.forget_truth_ratios)
        out["config"] = _jsonable(self.config)
        out["compute"] = None if self.compute is None else dict(self.compute)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TofuScores:
        values = dict(data)
        values["forget_truth_ratios"] = tuple(values["forget_truth_ratios"])
        return cls(**values)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, KnowledgeSet):
        return f"KnowledgeSet({value.name!r}, {len(value)} facts)"
    return repr(value)


@torch.no_grad()
def _answer_log_probs(
    model: Any, tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], batch_size: int
) -> list[torch.Tensor]:
    """log p(token | BOS + prompt, earlier tokens) of each answer's tokens and of the EOS after them.

    These are the tokens TOFU scores: its labels are the answer's tokens followed by one EOS, the
    question's tokens masked out (``data_module.convert_raw_data_to_model_format``, summed by
    ``get_batch_loss`` and divided by the number of labelled tokens in ``evaluate_util``).
    open-unlearning labels TOFU answers the same way (``src/data/utils.py``,
    ``preprocess_chat_instance`` appends the EOS). One float32 CPU tensor per answer, in order.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; TOFU scores the EOS after each answer")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(answers[i]))  # less padding
    facts = KnowledgeSet(tuple(Fact(f"q{i}", prompts[i], answers[i]) for i in order))
    device = next(model.parameters()).device
    out: list[torch.Tensor] = [torch.empty(0)] * len(order)
    done = 0
    for batch in facts.batches(tokenizer, batch_size):
        lengths = batch.attention_mask.sum(-1)  # right padding: the real tokens are [0, length)
        n_answer = batch.target_mask.sum(-1)
        rows = torch.arange(len(batch))
        ids = torch.cat([batch.input_ids, batch.input_ids[:, :1]], dim=1)
        ids[rows, lengths] = eos
        mask = torch.cat([batch.attention_mask, torch.zeros_like(batch.attention_mask[:, :1])], dim=1)
        mask[rows, lengths] = 1
        logits = model_logits(model, ids.to(device), attention_mask=mask.to(device))
        picked = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None].to(device)).squeeze(-1).float().cpu()
        for i in range(len(batch)):
            end = int(lengths[i])  # picked[:, p] scores ids[:, p + 1]; the EOS sits at ids[:, end]
            out[order[done + i]] = picked[i, end - int(n_answer[i]) - 1 : end]
        done += len(batch)
    return out


def _nll(model: Any, tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], batch_size: int) -> np.ndarray:
    """TOFU's ``avg_gt_loss``: the mean NLL over each answer's tokens and the EOS after them."""
    log_probs = _answer_log_probs(model, tokenizer, prompts, answers, batch_size)
    return np.array([-lp.double().mean().item() for lp in log_probs])


def _mia_aucs(
    model: Any, tokenizer: Any, members: KnowledgeSet, nonmembers: KnowledgeSet, batch_size: int
) -> dict[str, float]:
    """open-unlearning's membership attacks on TOFU (``configs/eval/tofu_metrics/mia_*.yaml``):
    ``members`` (the forget QA) against ``nonmembers`` (QA of authors never trained on; in
    :func:`run` the holdout authors no method was given), scoring the *answer's* tokens only. Its LOSS and zlib
    attacks average the loss over the answer tokens and the EOS (``evaluate_probability``); its
    Min-K% drops the EOS (``tokenwise_logprobs``: "-1 to ignore eos prediction"), with k = 0.4.
    zlib normalises by the compressed answer text (open-unlearning decodes the answer's label
    tokens, which gives the same text up to the joining space). AUCs in
    :func:`loka.membership.membership_auc`'s orientation (1 = members found)."""
    sets = (members, nonmembers)
    scored = [
        _answer_log_probs(model, tokenizer, [f.prompt for f in ks], [f.target for f in ks], batch_size) for ks in sets
    ]
    texts = [[f.target for f in ks] for ks in sets]
    aucs = {attack: tm.mia_auc(scored[0], texts[0], scored[1], texts[1], attack=attack) for attack in ("loss", "zlib")}
    no_eos = [[lp[:-1] for lp in per_set] for per_set in scored]
    aucs["min_k"] = tm.mia_auc(no_eos[0], texts[0], no_eos[1], texts[1], attack="min_k", k=DEFAULT_MIN_K)
    return aucs


@torch.no_grad()
def _greedy(
    model: Any, tokenizer: Any, prompts: Sequence[str], references: Sequence[str], batch_size: int
) -> list[str]:
    """Greedy answers (stopping at EOS), each up to its reference's length + 16 tokens."""
    device = next(model.parameters()).device
    n_ctx = hf_model(model).config.n_positions
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        rows = [[tokenizer.bos_token_id, *tokenizer(p, add_special_tokens=False)["input_ids"]] for p in chunk]
        width = max(map(len, rows))
        chunk_references = references[start : start + batch_size]
        longest = max(len(tokenizer(" " + r, add_special_tokens=False)["input_ids"]) for r in chunk_references)
        budget = longest + 16
        budget = max(1, min(budget, n_ctx - width))
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        generated = hf_model(model).generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=budget,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        sequences = getattr(generated, "sequences", generated)  # a GenerateOutput in recent transformers
        out += tokenizer.batch_decode(sequences[:, width:], skip_special_tokens=True)
    return out


def evaluate_model(
    model: Any,
    data: TofuData,
    *,
    tokenizer: Any = None,
    name: str = "model",
    template: str = TEMPLATE,
    retain_model_ratios: Sequence[float] | None = None,
    batch_size: int = 64,
) -> TofuScores:
    """Score one model (a TransformerBridge or an HF causal LM) on every TOFU set of ``data``.

    ``retain_model_ratios`` (the retain model's ``forget_truth_ratios``) turns on forget quality.
    """
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("this model has no tokenizer attached; pass tokenizer=...")
    plain = plain_copy(model)  # an HF model: generate() and a faster forward than the bridge's hooks
    utility: dict[str, float] = {}
    forget: dict[str, Any] = {}
    for set_name, ev in data.evals.items():
        prompts = [template.format(question=q) for q in ev.questions]
        k = len(ev.perturbed[0])
        nll = _nll(plain, tokenizer, prompts, ev.answers, batch_size)
        same = ev.paraphrased == ev.answers  # real authors / world facts: TOFU's "paraphrase" is the answer
        para = nll if same else _nll(plain, tokenizer, prompts, ev.paraphrased, batch_size)
        flat = [p for ps in ev.perturbed for p in ps]
        pert = _nll(plain, tokenizer, [p for p in prompts for _ in range(k)], flat, batch_size).reshape(len(ev), k)
        prob = tm.normalized_probability(nll, pert) if ev.normalized_probability else tm.answer_probability(nll)
        ratios = tm.truth_ratio(para, pert)
        answers = _greedy(plain, tokenizer, prompts, ev.answers, batch_size)
        rouge = float(np.mean([tm.rouge_l(a, r) for a, r in zip(answers, ev.answers, strict=True)]))
        if set_name == "forget":
            forget = dict(probability=float(prob.mean()), rouge_l=rouge, ratios=ratios)
        else:
            utility[f"{set_name}/probability"] = float(prob.mean())
            utility[f"{set_name}/rouge_l"] = rouge
            utility[f"{set_name}/truth_ratio"] = tm.retain_truth_ratio(ratios)
    aucs = _mia_aucs(plain, tokenizer, data.forget, data.protocol.nonmembers, batch_size)
    ratios = forget["ratios"]
    return TofuScores(
        name=name,
        model_utility=tm.model_utility(utility),
        forget_rouge_l=forget["rouge_l"],
        forget_probability=forget["probability"],
        forget_truth_ratio=tm.forget_truth_ratio(ratios),
        mia_auc=aucs["loss"],
        utility=utility,
        mia_aucs=aucs,
        forget_truth_ratios=tuple(float(r) for r in ratios),
        forget_quality=None if retain_model_ratios is None else tm.forget_quality(ratios, retain_model_ratios),
    )


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------
_COLUMNS = (  # (title, attribute, format of the value)
    ("forget quality", "forget_quality", "{:.2e}"),
    ("utility", "model_utility", "{:.3f}"),
    ("forget R-L", "forget_rouge_l", "{:.3f}"),
    ("forget prob", "forget_probability", "{:.3f}"),
    ("forget TR", "forget_truth_ratio", "{:.3f}"),
    ("MIA AUC", "mia_auc", "{:.3f}"),
    ("retain R-L", "retain_rouge_l", "{:.3f}"),
)
_SPREAD_COLUMNS = (_COLUMNS[0], _COLUMNS[1], _COLUMNS[5])  # forget quality, utility, MIA AUC
_COMPUTE_TITLES = ("steps", "fwd tokens", "seconds")
_NOTES = (
    "forget quality: KS-test p-value, forget truth ratios vs the retain model's (higher = closer to it)\n"
    "utility: hmean of prob., ROUGE-L and truth ratio on retain_eval authors (no method trained on them), "
    "real authors, world facts\n"
    "R-L: ROUGE-L recall of the greedy answer; TR: truth ratio; MIA: LOSS on answers, forget vs non-member "
    "holdout authors (no method was given them)\n"
    "steps, fwd tokens, seconds: each method's compute under the shared budget (tokens through forward passes, "
    "checks included); seconds of training for the original and the retain model"
)


def _tokens(n: float) -> str:
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def _cells(m: TofuScores) -> list[str]:
    """The table's cells of one row: model, seed, the TOFU columns, then compute."""
    values = ["-" if getattr(m, key) is None else fmt.format(getattr(m, key)) for _, key, fmt in _COLUMNS]
    compute = m.compute or {}
    return [
        m.name,
        "-" if m.seed is None else str(m.seed),
        *values,
        str(int(compute["steps"])) if "steps" in compute else "-",
        _tokens(compute["forward_tokens"]) if "forward_tokens" in compute else "-",
        "-" if m.seconds is None else f"{m.seconds:.1f}",
    ]


def _spread(values: Sequence[float], fmt: str) -> str:
    """``mean [min, max]`` of the values, each written with ``fmt``."""
    return f"{fmt.format(float(np.mean(values)))} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in (header, *rows)) + 2 for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return cells[0].ljust(widths[0]) + "".join(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))

    return [line(header), "-" * sum(widths), *(line(r) for r in rows)]


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for t in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


@dataclass(frozen=True)
class TofuReport:
    """TOFU's table for the original model, the retain model and each method at each seed.

    ``models`` are in row order (original, retain, then each method's seeds); ``seeds`` is how many
    seeds each method ran with; ``info`` holds the config, the author split, the budget, the cache
    directory, training logs and wall times. ``report["loka"]`` is a method's row when it ran with
    one seed; ``report["loka", 1]`` the row of seed 1; :meth:`runs` every row of a method.
    """

    split: str
    size: str
    n_retain_authors: int
    seed: int
    models: tuple[TofuScores, ...]
    info: Mapping[str, Any] = field(default_factory=dict)
    seeds: int = 1

    def runs(self, name: str) -> tuple[TofuScores, ...]:
        """Every row of model ``name`` (one per seed for a method)."""
        rows = tuple(m for m in self.models if m.name == name)
        if not rows:
            raise KeyError(f"no model {name!r} in the report; models are {list(self.names)}")
        return rows

    def __getitem__(self, key: str | tuple[str, int]) -> TofuScores:
        if isinstance(key, tuple):
            name, seed = key
            for m in self.runs(name):
                if m.seed == seed:
                    return m
            raise KeyError(f"{name!r} has no row for seed {seed}; its seeds are {[m.seed for m in self.runs(name)]}")
        rows = self.runs(key)
        if len(rows) > 1:
            raise KeyError(f"{key!r} ran with {len(rows)} seeds; ask for report[{key!r}, seed] or report.runs({key!r})")
        return rows[0]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.name for m in self.models))

    def spread(self, name: str, attribute: str) -> tuple[float, float, float]:
        """(mean, min, max) of one column over the rows (seeds) of ``name``."""
        values = [getattr(m, attribute) for m in self.runs(name)]
        if any(v is None for v in values):
            raise ValueError(f"{name!r} has no {attribute}")
        return float(np.mean(values)), float(min(values)), float(max(values))

    def _header(self) -> str:
        authors = self.info.get("authors", {})
        counts = {k: len(v) for k, v in authors.items()}
        split = (
            f"; retain authors {counts['retain_train']} train / {counts['retain_validation']} validation / "
            f"{counts['retain_eval']} eval; holdout authors {counts['reference']} reference / "
            f"{counts['nonmembers']} non-member"
            if counts
            else ""
        )
        seeds = self.info.get("method_seeds", [self.seed])
        budget = self.info.get("budget")
        line = (
            f"TOFU {self.split} ({self.size}: {len(self.info.get('forget_authors', [])) or '?'} forget authors"
            f"{split}; method seeds {', '.join(map(str, seeds))})"
        )
        if budget:
            line += (
                f"\nbudget for every method: stop at forget accuracy <= {budget['target_forget_accuracy']} "
                f"(checked every {budget['check_every']} steps), at most {budget['max_steps']} steps"
            )
        return line

    def _spread_rows(self) -> list[list[str]]:
        rows = []
        for name in self.names:
            runs = self.runs(name)
            if len(runs) < 2:
                continue
            rows.append([
                name, str(len(runs)),
                *(_spread([getattr(m, key) for m in runs], fmt) for _, key, fmt in _SPREAD_COLUMNS),
            ])  # fmt: skip
        return rows

    def table(self) -> str:
        """TOFU's table as text: one row per model and seed with each method's compute; with more
        than one seed, each method's mean [min, max] over its seeds."""
        header = ["model", "seed", *(t for t, _, _ in _COLUMNS), *_COMPUTE_TITLES]
        lines = [self._header(), *_text_table(header, [_cells(m) for m in self.models])]
        spread = self._spread_rows()
        if spread:
            lines += ["", "over each method's seeds: mean [min, max] (run-to-run spread, not a confidence interval)"]
            lines += _text_table(["model", "seeds", *(t for t, _, _ in _SPREAD_COLUMNS)], spread)
        lines.append(_NOTES)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": "TOFU (Maini et al. 2024), scaled to a CPU",
            "split": self.split,
            "size": self.size,
            "n_retain_authors": self.n_retain_authors,
            "seed": self.seed,
            "seeds": self.seeds,
            "models": [m.to_dict() for m in self.models],
            "info": _jsonable(self.info),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TofuReport:
        return cls(
            split=data["split"],
            size=data["size"],
            n_retain_authors=data["n_retain_authors"],
            seed=data["seed"],
            models=tuple(TofuScores.from_dict(m) for m in data["models"]),
            info=data.get("info", {}),
            seeds=data.get("seeds", 1),
        )

    def plot(self) -> Any:
        """TOFU's figure: model utility against forget quality (log scale), one point per model
        and seed, one colour per model."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for name in self.names:
            runs = [m for m in self.runs(name) if m.forget_quality is not None]
            if not runs:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[max(m.forget_quality, 1e-300) for m in runs],  # type: ignore[arg-type]
                    y=[m.model_utility for m in runs],
                    mode="markers+text",
                    name=name,
                    text=[name if m.seed is None else f"{name} (seed {m.seed})" for m in runs],
                    textposition="top center",
                    marker={"size": 12},
                )
            )
        fig.update_layout(
            title=f"TOFU {self.split}: model utility vs forget quality",
            xaxis={"title": "forget quality (KS-test p-value, log scale)", "type": "log"},
            yaxis={"title": "model utility"},
            template="plotly_white",
        )
        return fig

    def html(self) -> str:
        """A self-contained HTML report: the tables, the figure (plotly inlined) and the run."""
        header = ["model", "seed", *(t for t, _, _ in _COLUMNS), *_COMPUTE_TITLES]
        main = _html_table(header, [_cells(m) for m in self.models])
        spread = self._spread_rows()
        spread_html = (
            "<h2>Over each method's seeds: mean [min, max]</h2><p>The run-to-run spread of a method, not a "
            "confidence interval.</p>" + _html_table(["model", "seeds", *(t for t, _, _ in _SPREAD_COLUMNS)], spread)
            if spread
            else ""
        )
        utility_names = [f"{s}/{k}" for s in tm.UTILITY_SETS for k in tm.UTILITY_METRICS]
        parts = _html_table(
            ["model", "seed", *utility_names],
            [[m.name, "-" if m.seed is None else str(m.seed), *(f"{m.utility[n]:.3f}" for n in utility_names)]
             for m in self.models],
        )  # fmt: skip
        figure = self.plot().to_html(include_plotlyjs=True, full_html=False)
        style = (
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
        )
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in _NOTES.splitlines())
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>TOFU {html.escape(self.split)}</title><style>{style}</style></head><body>"
            f"<h1>TOFU {html.escape(self.split)} ({html.escape(self.size)}, "
            f"{self.n_retain_authors} retain authors)</h1>"
            f"<pre>{html.escape(self._header())}</pre>{main}<ul>{notes}</ul>{spread_html}"
            f"<h2>Model utility, its nine parts</h2>{parts}"
            f"{figure}"
            f"<h2>Run</h2><pre>{html.escape(json.dumps(_jsonable(self.info), indent=1))}</pre>"
            "</body></html>"
        )

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``tofu.json`` and ``tofu.html`` into ``directory`` (created if needed); returns it."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tofu.json").write_text(json.dumps(self.to_dict(), indent=1))
        (out / "tofu.html").write_text(self.html(), encoding="utf-8")
        return out


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------
# set by the protocol (the same for every method), never a method option
_PROTOCOL_OPTIONS = frozenset(
    {"validation", "reference", "augment", "budget", "seed", "progress", "tokenizer", "method",
     "target_forget_accuracy", "check_every", "max_steps"}
)  # fmt: skip


def _check_unseen(method: str, seen: Seen, protocol: Protocol) -> None:
    """Refuse to score a method on a retain_eval or non-member author it was shown."""
    for name in ("retain_eval", "nonmembers"):
        shared = seen.clash(getattr(protocol, name))
        if shared is not None:
            raise ValueError(
                f"{method} was given {shared}, which TOFU scores it on ({name}); a method may see only forget, "
                "retain_train, retain_validation and reference"
            )


def run(
    split: str = "forget01",
    *,
    n_retain_authors: int | None = None,
    size: str = "default",
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    methods: Sequence[str] = METHODS,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
    seed: int = 0,
    seeds: int = 1,
    budget: Budget | None = None,
) -> TofuReport:
    """Run TOFU's protocol on a CPU-sized model and return its table (see the module docstring).

    ``split``: ``"forget01"`` | ``"forget05"`` | ``"forget10"`` (2 / 10 / 20 forget authors).
    ``n_retain_authors``: how many other authors (the first ones of ``full``) both models train
    on (default: 10, or 3 for ``size="tiny"``; from 3 to 200 minus the forget authors).
    ``data_dir``: TOFU's JSONL files (default ``$LOKA_TOFU_DIR``). ``cache_dir``: where the trained
    models are kept (default :func:`cache_dir_default`). ``methods``: any of ``"loka"``,
    ``"gradient_ascent"``, ``"task_vector"``, in row order. ``method_options``: per-method options
    passed to :func:`loka.methods.unlearn` (e.g. ``{"gradient_ascent": {"lr": 1e-4}}``); the sets,
    seed and budget are the protocol's and cannot be set there. ``seed``: the models' training
    seed, the author split's seed and the first method seed; ``seeds``: how many method seeds
    (``seed``, ``seed + 1``, ...) each method runs with. ``budget``: the stopping rule every method
    follows (default ``Budget()``).
    """
    start = time.perf_counter()
    directory = _data_dir(data_dir)
    config = make_config(split, n_retain_authors=n_retain_authors, size=size, seed=seed)
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or len(set(methods)) != len(methods):
        raise ValueError(f"methods must be distinct names among {', '.join(METHODS)}; got {list(methods)}")
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ValueError(f"seeds must be a positive integer (how many method seeds), got {seeds!r}")
    if budget is None:
        budget = Budget()
    elif not isinstance(budget, Budget):
        raise ValueError(f"budget must be a loka.methods.Budget, got {type(budget).__name__}")
    method_options = dict(method_options or {})
    stray = sorted(set(method_options) - set(methods))
    if stray:
        raise ValueError(f"method_options names method(s) {stray} that are not run; methods are {list(methods)}")
    for method, options in method_options.items():
        fixed = sorted(set(options) & _PROTOCOL_OPTIONS)
        if fixed:
            raise ValueError(
                f"method_options for {method!r} set {fixed}: every method gets the protocol's sets, seeds and "
                "budget (pass run(budget=Budget(...)), run(seed=..., seeds=...))"
            )
    config = replace(config, data=_file_hashes(directory))
    data = load_data(config, directory)
    protocol = data.protocol
    cache = Path(cache_dir) if cache_dir is not None else cache_dir_default()
    root = cache / f"{size}-{split}-r{config.n_retain_authors}-{config.key()}"
    built_now = not (root / "build.json").is_file()
    if built_now:
        _build(config, data, root, progress=progress, workers=size != "tiny")
    build = json.loads((root / "build.json").read_text())
    build_seconds = time.perf_counter() - start

    tokenizer = AutoTokenizer.from_pretrained(root / "original")
    with quiet_transformers():
        retain_model = AutoModelForCausalLM.from_pretrained(root / "retain").eval()
        # LOKA reads the model through TransformerLens hooks; the other methods take a plain HF model
        original = (
            load_model(root / "original")
            if "loka" in methods
            else AutoModelForCausalLM.from_pretrained(root / "original").eval()
        )
    models: list[TofuScores] = []
    timings: dict[str, float] = {}
    method_seeds = list(range(seed, seed + seeds))
    bar = tqdm(total=2 + len(methods) * seeds, disable=not progress, desc=f"TOFU {split}", leave=False)
    t = time.perf_counter()
    retain_scores = evaluate_model(retain_model, data, tokenizer=tokenizer, name="retain", template=config.template)
    reference_ratios = retain_scores.forget_truth_ratios
    retain_scores = replace(
        retain_scores,
        forget_quality=tm.forget_quality(reference_ratios, reference_ratios),
        seconds=build["training"]["retain"]["seconds"],
    )
    timings["evaluate retain"] = time.perf_counter() - t
    bar.update()
    t = time.perf_counter()
    original_scores = evaluate_model(
        original,
        data,
        tokenizer=tokenizer,
        name="original",
        template=config.template,
        retain_model_ratios=reference_ratios,
    )
    models += [replace(original_scores, seconds=build["training"]["original"]["seconds"]), retain_scores]
    timings["evaluate original"] = time.perf_counter() - t
    bar.update()
    for method in methods:
        for method_seed in method_seeds:
            bar.set_postfix(method=method, seed=method_seed)
            result = unlearn(
                original,
                protocol.forget,
                protocol.retain_train,
                method=method,  # type: ignore[arg-type]
                validation=protocol.retain_validation,
                reference=protocol.reference,
                budget=budget,
                seed=method_seed,
                progress=False,
                tokenizer=tokenizer,
                **method_options.get(method, {}),
            )
            _check_unseen(method, result.seen, protocol)
            t = time.perf_counter()
            scores = evaluate_model(
                result.model,
                data,
                tokenizer=tokenizer,
                name=method,
                template=config.template,
                retain_model_ratios=reference_ratios,
            )
            timings[f"evaluate {method} seed {method_seed}"] = time.perf_counter() - t
            compute = None if result.compute is None else result.compute.to_dict()
            models.append(
                replace(
                    scores, seconds=result.seconds, config=_jsonable(result.config), seed=method_seed, compute=compute
                )
            )
            del result
            bar.update()
    bar.close()
    info = {
        "config": asdict(config),
        "cache_dir": str(root),
        "data_dir": str(directory),
        "forget_authors": list(config.forget_authors),
        "authors": {  # who is in which protocol set (fact-id prefixes)
            "retain_train": [f"tofu/a{a:03d}" for a in data.authors.retain_train],
            "retain_validation": [f"tofu/a{a:03d}" for a in data.authors.retain_validation],
            "retain_eval": [f"tofu/a{a:03d}" for a in data.authors.retain_eval],
            "reference": [f"tofu/holdout/a{a:03d}" for a in data.authors.reference],
            "nonmembers": [f"tofu/holdout/a{a:03d}" for a in data.authors.nonmembers],
        },
        "protocol": protocol.sizes(),
        "budget": asdict(budget),
        "method_seeds": method_seeds,
        "n_qa": {
            "forget": len(data.forget),
            "retain": len(data.retain),
            "utility": len(data.utility),
            "holdout": len(data.holdout),
            **{f"eval {k}": len(v) for k, v in data.evals.items()},
        },
        "training": build["training"],
        "built_now": built_now,
        "seconds": {
            "build or load": round(build_seconds, 2),
            **{k: round(v, 2) for k, v in timings.items()},
            **{f"unlearn {m.name} seed {m.seed}": round(m.seconds, 2) for m in models[2:] if m.seconds is not None},
            "total": round(time.perf_counter() - start, 2),
        },
    }
    return TofuReport(
        split=split,
        size=size,
        n_retain_authors=config.n_retain_authors,
        seed=seed,
        models=tuple(models),
        info=info,
        seeds=seeds,
    )
