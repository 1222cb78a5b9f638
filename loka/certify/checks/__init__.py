"""The checks of a certificate, one module per family, each a small function of the edited model
(and the sets) that returns :class:`loka.certify.result.Check` values without verdicts:
``direct`` (answers, other wordings, in context), ``membership`` (LOSS, zlib, Min-K%, Min-K%++,
ratio to BEFORE, dataset inference), ``relearning`` (forget half vs reference half; retain only),
``quantization`` (8 and 4 bits), ``readout`` (logit lens, probe), ``extraction`` (verbatim
passages), ``collateral`` (retain, AFTER vs BEFORE) and ``blind`` (are the texts comparable at
all, with no model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loka.certify.suite import Suite
from loka.data.knowledge import KnowledgeSet

__all__ = ["Sets", "people", "split_passages", "common"]

PASSAGE_WORDS = 12  # a target of at least this many words, on a fact without a relation (or "passage")


def people(knowledge: KnowledgeSet) -> tuple[str, ...]:
    """Whose each fact is: its subject, or its own id when it has none (the bootstrap's units)."""
    return tuple(f.subject if f.subject is not None else f.id for f in knowledge)


def _is_passage(fact: Any) -> bool:
    return fact.relation in (None, "passage") and len(fact.target.split()) >= PASSAGE_WORDS


def split_passages(knowledge: KnowledgeSet | None) -> tuple[KnowledgeSet | None, KnowledgeSet | None]:
    """(facts, passages) of a set: passages are facts without a relation (or relation "passage")
    whose target is a long text; either side is None when empty."""
    if knowledge is None:
        return None, None
    facts = tuple(f for f in knowledge if not _is_passage(f))
    passages = tuple(f for f in knowledge if _is_passage(f))
    return (
        KnowledgeSet(facts, name=knowledge.name) if facts else None,
        KnowledgeSet(passages, name=f"{knowledge.name}/passages") if passages else None,
    )


@dataclass(frozen=True)
class Sets:
    """The sets a certificate reads, facts and passages apart."""

    forget: KnowledgeSet | None
    reference: KnowledgeSet | None
    forget_passages: KnowledgeSet | None
    reference_passages: KnowledgeSet | None
    retain: KnowledgeSet | None

    @classmethod
    def of(cls, forget: KnowledgeSet, reference: KnowledgeSet, retain: KnowledgeSet | None) -> Sets:
        f, fp = split_passages(forget)
        r, rp = split_passages(reference)
        retain_facts = split_passages(retain)[0]
        return cls(f, r, fp, rp, retain_facts)

    @property
    def facts_comparable(self) -> bool:
        return self.forget is not None and self.reference is not None


def common(suite: Suite) -> dict[str, Any]:
    """The keyword arguments of :func:`loka.certify.statistics.measure` that the suite fixes."""
    return {
        "n_splits": suite.n_splits,
        "n_resamples": suite.n_resamples,
        "confidence": suite.confidence,
        "seed": suite.seed,
        "alpha": suite.alpha,
        "power": suite.power,
        "margin_max": suite.margin_max,
    }
