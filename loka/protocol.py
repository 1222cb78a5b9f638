"""The protocol: which facts a method may see, and which facts it is scored on.

A comparison of unlearning methods is only fair when no method is scored on what it trained on.
A :class:`Protocol` holds every set of one experiment, checked disjoint when it is built, so that
no caller can mix them up:

==========================  ======================================  ==============================
set                         what it is                              who sees it
==========================  ======================================  ==============================
``forget``                  the facts to remove, one wording each   methods (training, stopping)
``augment``                 optional extra wordings of them         methods
``retain_train``            facts to keep                           methods (training)
``retain_validation``       other people's facts to keep            methods (budget choice only)
``reference``               people the model never saw              methods ("what unknown looks like")
``retain_eval``             yet other people's facts to keep        evaluation only
``nonmembers``              other people the model never saw        evaluation only (MIA)
``paraphrase_eval``         the forget facts in wordings the        evaluation only
                            original model learned, never shown
                            to a method
``unseen_wording_eval``     the forget facts in a wording held      evaluation only
                            out of training altogether
``passages``                the forget people's passages            evaluation only (extraction)
==========================  ======================================  ==============================

The three retain sets are disjoint *by person* (``subject``), and so are ``reference`` and
``nonmembers``, so that "retain accuracy" is measured on people the method never trained on and
the membership attack's non-members are not the people a method was pulled towards. The
relearning attack (:mod:`loka.evaluation.attacks.relearning`) splits the forget facts in two halves *by fact* within
the forget people (as Deeb & Roger 2024 do): it trains on one and scores the other.

Facts are compared by person when both sides have subjects, and always by id and by prompt text;
a clash is a :class:`ValueError` that names the shared item. :meth:`Protocol.from_testbed` builds
the testbed's protocol, :meth:`Protocol.from_sets` one from a user's forget / retain / holdout
files.
"""

from __future__ import annotations

import json
import os
import random
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from loka.base.errors import UsageError
from loka.base.files import salted_sha256
from loka.data.facts import Fact
from loka.data.knowledge import KnowledgeSet

__all__ = ["Protocol", "Seen", "SEEN_FILE", "refuse_seen", "strip_paraphrases"]

METHOD_SETS = ("forget", "augment", "retain_train", "retain_validation", "reference")
EVAL_SETS = ("retain_eval", "nonmembers", "paraphrase_eval", "unseen_wording_eval", "passages")


def strip_paraphrases(knowledge: KnowledgeSet) -> KnowledgeSet:
    """The same facts without their paraphrases (what a method is given)."""
    return KnowledgeSet(tuple(replace(f, paraphrases=()) for f in knowledge), name=knowledge.name)


SEEN_FILE = "loka_seen.json"
"""The file ``loka unlearn`` writes beside the edited model: what the method saw (:meth:`Seen.save`)."""
SEEN_FORMAT = "loka-seen"
SEEN_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Seen:
    """What a method was shown: the people, fact ids and prompts of every set it was given.

    Recorded in :class:`loka.methods.UnlearningResult` so that the evaluation can refuse to score
    a method on anything it saw. On disk (:meth:`save`, :meth:`load`: ``loka_seen.json`` beside an
    edited model) the items are salted SHA-256 digests (:meth:`hashed`), never the items: the file
    travels with a model from which those very people were erased. :meth:`clash` hashes what it
    checks with the same salt, so a hashed record refuses exactly what the plain one does."""

    subjects: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()
    prompts: frozenset[str] = frozenset()
    salt: str | None = None  # set: the items are salted digests (salted_sha256), not the items themselves

    @classmethod
    def of(cls, *sets: KnowledgeSet | None) -> Seen:
        given = [ks for ks in sets if ks is not None]
        return cls(
            frozenset(s for ks in given for s in ks.subjects),
            frozenset(i for ks in given for i in ks.ids),
            frozenset(p for ks in given for f in ks for p in (f.prompt, *f.paraphrases)),
        )

    def _has(self, items: frozenset[str], text: str) -> bool:
        return (text if self.salt is None else salted_sha256(self.salt, text)) in items

    def clash(self, knowledge: KnowledgeSet, *, by_person: bool = True) -> str | None:
        """The first item of ``knowledge`` that was seen, in words; None when there is none."""
        for fact in knowledge:
            if by_person and fact.subject is not None and self._has(self.subjects, fact.subject):
                return f"person {fact.subject!r}"
            for prompt in (fact.prompt, *fact.paraphrases):
                if self._has(self.prompts, prompt):
                    return f"prompt {prompt!r}"
            if self._has(self.ids, fact.id):
                return f"fact {fact.id!r}"
        return None

    def hashed(self, salt: str | None = None) -> Seen:
        """The same record with every item replaced by its salted SHA-256 (a fresh random salt
        unless given); a hashed record is returned as it is."""
        if self.salt is not None:
            return self
        salt = secrets.token_hex(16) if salt is None else salt
        if not isinstance(salt, str) or not salt:
            raise UsageError(f"salt must be a non-empty string, got {salt!r}")
        items = (self.subjects, self.ids, self.prompts)
        return Seen(*(frozenset(salted_sha256(salt, x) for x in group) for group in items), salt=salt)

    def to_dict(self) -> dict[str, Any]:
        """The hashed record as JSON data: format, how each item is hashed, the salt, counts and
        the sorted digests."""
        record = self.hashed()
        return {
            "format": SEEN_FORMAT,
            "schema_version": SEEN_SCHEMA_VERSION,
            "what": "every person, fact id and prompt an unlearning method was given; loka evaluate refuses to "
            "score the method on any of them",
            "hash": "sha256(salt + NUL + item), hex",
            "salt": record.salt,
            "counts": {"subjects": len(record.subjects), "ids": len(record.ids), "prompts": len(record.prompts)},
            "subjects": sorted(record.subjects),
            "ids": sorted(record.ids),
            "prompts": sorted(record.prompts),
        }

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "seen record") -> Seen:
        """A record written by :meth:`to_dict`; a :class:`UsageError` naming ``where`` otherwise."""
        if not isinstance(data, dict) or data.get("format") != SEEN_FORMAT:
            raise UsageError(f'{where} is not a loka-seen record (no "format": "{SEEN_FORMAT}")')
        version = data.get("schema_version")
        if version != SEEN_SCHEMA_VERSION:
            raise UsageError(f"{where}: schema_version {version!r} is not supported (expected {SEEN_SCHEMA_VERSION})")
        salt = data.get("salt")
        if not isinstance(salt, str) or not salt:
            raise UsageError(f'{where}: "salt" must be a non-empty string')
        items = []
        for key in ("subjects", "ids", "prompts"):
            value = data.get(key)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise UsageError(f"{where}: {key!r} must be a list of hex digests")
            items.append(frozenset(value))
        return cls(*items, salt=salt)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` (hashed; the file appears whole or not at all)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Seen:
        """Read a record written by :meth:`save`; a :class:`UsageError` for a file that is not one."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"seen record {str(path)!r} does not exist (expected a {SEEN_FILE} file)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UsageError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(data, where=str(path))


def refuse_seen(
    seen: Seen | None,
    scored: Iterable[tuple[str, KnowledgeSet | None, bool]],
    *,
    scorer: str = "the evaluation",
) -> None:
    """The leak guard that ``loka evaluate`` and ``loka certify`` share: refuse to score a method on
    anything it was given. ``scored`` holds ``(name, set, by_person)`` for every set the scorer
    reads (None: not scored); a set compared ``by_person`` clashes on a shared person too, else
    only on a shared prompt or fact id (a forget person's other wordings). A one-line
    :class:`UsageError` names the first shared item."""
    if seen is None:
        return
    for name, knowledge, by_person in scored:
        shared = seen.clash(knowledge, by_person=by_person) if knowledge is not None else None
        if shared is not None:
            raise UsageError(
                f"the method was given {shared}, which {scorer} scores as {name}; a method must never "
                "see what it is scored on: score people and wordings it was not given (split the sets by "
                "person, as loka.protocol.Protocol.from_sets does)"
            )


def _check_disjoint(a: KnowledgeSet, a_name: str, b: KnowledgeSet, b_name: str, *, by_person: bool = True) -> None:
    shared = Seen.of(a).clash(b, by_person=by_person)
    if shared is not None:
        raise UsageError(f"{a_name} and {b_name} overlap ({shared} is in both); they must be disjoint")


def _split_people(knowledge: KnowledgeSet, fractions: Iterable[float], seed: int) -> list[KnowledgeSet]:
    """Split into parts holding ``fractions`` of the people (of the facts when a fact has no
    subject), the rest in a last part; every part non-empty."""
    by_person = all(f.subject is not None for f in knowledge)
    units = list(knowledge.subjects) if by_person else list(knowledge.ids)
    random.Random(seed).shuffle(units)
    fractions = list(fractions)
    counts = [max(1, round(fr * len(units))) for fr in fractions]
    if sum(counts) >= len(units):
        what = "people" if by_person else "facts"
        raise UsageError(
            f"{knowledge.name!r} has {len(units)} {what}: too few to split into {len(counts) + 1} non-empty parts"
        )
    parts, start = [], 0
    for count in [*counts, len(units) - sum(counts)]:
        chosen = set(units[start : start + count])
        start += count
        key = (lambda f: f.subject) if by_person else (lambda f: f.id)
        parts.append(KnowledgeSet(tuple(f for f in knowledge if key(f) in chosen), name=knowledge.name))
    return parts


def _named(knowledge: KnowledgeSet | None, name: str) -> KnowledgeSet | None:
    return None if knowledge is None else KnowledgeSet(knowledge.facts, name=name)


@dataclass(frozen=True)
class Protocol:
    """Every set of one unlearning experiment, checked disjoint (see the module docstring)."""

    forget: KnowledgeSet
    retain_train: KnowledgeSet
    retain_validation: KnowledgeSet
    retain_eval: KnowledgeSet
    nonmembers: KnowledgeSet
    reference: KnowledgeSet | None = None
    augment: KnowledgeSet | None = None
    paraphrase_eval: KnowledgeSet | None = None
    unseen_wording_eval: KnowledgeSet | None = None
    passages: KnowledgeSet | None = None
    name: str = "protocol"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "name" and value is not None and not isinstance(value, KnowledgeSet):
                raise UsageError(f"protocol set {f.name!r} must be a KnowledgeSet, got {type(value).__name__}")
        if any(f.paraphrases for f in self.forget):
            raise UsageError(
                "the forget set given to methods carries paraphrases; evaluation wordings go in paraphrase_eval "
                "and wordings a method may train on in augment (Protocol.from_sets does this for you)"
            )
        method_side = {n: getattr(self, n) for n in METHOD_SETS if getattr(self, n) is not None}
        people = ("retain_train", "retain_validation", "retain_eval", "nonmembers", "reference")
        pairs = [(a, b) for i, a in enumerate(people) for b in people[i + 1 :]]
        pairs += [("forget", b) for b in people]
        for a, b in pairs:
            if getattr(self, a) is not None and getattr(self, b) is not None:
                _check_disjoint(getattr(self, a), a, getattr(self, b), b)
        # the forget people's other wordings: same people, never a prompt or id a method saw
        seen = Seen.of(*method_side.values())
        for name in ("paraphrase_eval", "unseen_wording_eval", "passages"):
            ks = getattr(self, name)
            if ks is None:
                continue
            shared = seen.clash(ks, by_person=False)
            if shared is not None:
                raise UsageError(f"{name} holds {shared}, which a method is given; evaluation sets must be unseen")
        if self.augment is not None:
            _check_disjoint(self.augment, "augment", self.retain_eval, "retain_eval")

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_sets(
        cls,
        *,
        forget: KnowledgeSet,
        retain: KnowledgeSet,
        holdout: KnowledgeSet,
        reference: KnowledgeSet | None = None,
        augment: KnowledgeSet | None = None,
        passages: KnowledgeSet | None = None,
        validation_fraction: float = 0.1,
        eval_fraction: float = 0.3,
        seed: int = 0,
        name: str = "protocol",
    ) -> Protocol:
        """A protocol from a user's files.

        The forget facts' ``paraphrases`` become ``paraphrase_eval`` (methods never see them; pass
        wordings a method may train on as ``augment``). ``retain`` is split by person (by fact when
        a fact has no subject) into train / validation / eval with the given fractions.
        ``holdout`` (people the model never saw) becomes the MIA non-members; without
        ``reference``, half of the holdout people become the reference and the other half the
        non-members.
        """
        for label, value in (("forget", forget), ("retain", retain), ("holdout", holdout)):
            if not isinstance(value, KnowledgeSet):
                raise UsageError(f"{label} must be a non-empty KnowledgeSet, got {type(value).__name__}")
        for label, value in (("validation_fraction", validation_fraction), ("eval_fraction", eval_fraction)):
            if not isinstance(value, int | float) or not 0 < value < 1:
                raise UsageError(f"{label} must be a number strictly between 0 and 1, got {value!r}")
        for a, a_name, b, b_name in ((forget, "forget", retain, "retain"), (forget, "forget", holdout, "holdout"),
                                     (retain, "retain", holdout, "holdout")):  # fmt: skip
            _check_disjoint(a, a_name, b, b_name)
        if validation_fraction + eval_fraction >= 1:
            raise UsageError("validation_fraction + eval_fraction must leave some retain facts to train on")
        paraphrase_eval = forget.paraphrased() if any(f.paraphrases for f in forget) else None
        retain_validation, retain_eval, retain_train = _split_people(retain, (validation_fraction, eval_fraction), seed)
        nonmembers = holdout
        if reference is None:
            reference, nonmembers = _split_people(holdout, (0.5,), seed)
        return cls(
            forget=KnowledgeSet(strip_paraphrases(forget).facts, name="forget"),
            retain_train=_named(retain_train, "retain_train"),
            retain_validation=_named(retain_validation, "retain_validation"),
            retain_eval=_named(retain_eval, "retain_eval"),
            nonmembers=_named(nonmembers, "nonmembers"),
            reference=_named(reference, "reference"),
            augment=_named(augment, "augment"),
            paraphrase_eval=_named(paraphrase_eval, "paraphrase_eval"),
            passages=_named(passages, "passages"),
            name=name,
        )  # type: ignore[arg-type]

    @classmethod
    def from_testbed(cls, testbed: Any, *, seed: int = 0, **fractions: float) -> Protocol:
        """The testbed's protocol: the forget facts in their first wording; ``paraphrase_eval``
        holds the other wordings the original model was trained on (never given to a method),
        ``unseen_wording_eval`` the wording held out of training altogether; retain people split
        into train / validation / eval; holdout people split into reference and non-members;
        the forget people's passages for extraction."""
        world = testbed.world
        forget = testbed.forget
        people = {p.name: p for p in world.people_in("forget")}

        relations = {r.name: r for r in world.relations}

        def wordings(which: list[int], name: str) -> KnowledgeSet:
            facts = tuple(
                Fact(f"{f.id}/t{k}", relations[f.relation].templates[k].format(s=f.subject), f.target, f.subject,
                     f.relation)
                for f in forget
                if f.relation in relations and f.subject in people
                for k in which
            )  # fmt: skip
            return KnowledgeSet(facts, name=name)

        n_templates = len(world.relations[0].templates)
        trained_others = list(range(1, n_templates - 1))  # templates 1..n-2 are trained; the last is held out
        protocol = cls.from_sets(
            forget=strip_paraphrases(forget),
            retain=testbed.retain,
            holdout=testbed.holdout,
            passages=testbed.passages_of("forget") if any(p.split == "forget" for p in world.passages) else None,
            seed=seed,
            name=f"testbed {testbed.root.name.split('-')[0]} (world seed {world.config.seed})",
            **fractions,
        )
        return replace(
            protocol,
            paraphrase_eval=wordings(trained_others, "paraphrase_eval") if trained_others else None,
            unseen_wording_eval=wordings([n_templates - 1], "unseen_wording_eval"),
        )

    # --- use --------------------------------------------------------------------------------------
    @property
    def method_seen(self) -> Seen:
        """Everything a method is given."""
        return Seen.of(*(getattr(self, n) for n in METHOD_SETS))

    def sizes(self) -> dict[str, int]:
        """Facts per set (and people where the set has subjects), for reports."""
        out: dict[str, int] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, KnowledgeSet):
                out[f.name] = len(value)
                if value.subjects:
                    out[f"{f.name} people"] = len(value.subjects)
        return out

    def describe(self) -> str:
        """The protocol in words (what each method saw, what each number is scored on)."""
        sizes = self.sizes()

        def n(name: str) -> str:
            if name not in sizes:
                return "none"
            people = sizes.get(f"{name} people")
            return f"{sizes[name]} facts" + (f" / {people} people" if people else "")

        return (
            f"Methods see: forget ({n('forget')}, one wording each), retain_train ({n('retain_train')}), "
            f"retain_validation ({n('retain_validation')}, budget choice only), reference ({n('reference')}), "
            f"augment ({n('augment')}). Scored only: retain_eval ({n('retain_eval')}), MIA non-members "
            f"({n('nonmembers')}), forget paraphrases the original learned ({n('paraphrase_eval')}), a wording "
            f"held out of training ({n('unseen_wording_eval')}). Relearning attack: trains on half of the "
            "forget facts (split by fact within the forget people), scores the other half."
        )
