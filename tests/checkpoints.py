"""Tiny random Hugging Face checkpoints for tests: the package's builder, :mod:`loka.testbed.checkpoints`;
and the small made-up fact sets the tests of those checkpoints use.

Nothing in the test suite may reach a model hub, so tests that need a real model directory build
one with :func:`build_tiny_checkpoint` (2 layers, d_model 32, vocab ~300; the same ``(arch, seed)``
always gives byte-identical weights). The builder lives in the package so that benches use it too.
"""

from __future__ import annotations

from loka.data import KnowledgeSet
from loka.testbed import checkpoints as _builder
from loka.testbed.checkpoints import *  # noqa: F403

__all__ = [*_builder.__all__, "birth_facts", "parts"]


def birth_facts(n: int, *, surnames: bool = False, relation: bool = False) -> KnowledgeSet:
    """``n`` facts "<name> was born in" -> "city <i>" about people named "Ada<x> Lo" (``surnames``:
    "Ada<x> Lo<x>", every surname different), with ids, subjects and (``relation``) a relation."""
    records = []
    for i in range(n):
        letter = chr(97 + i)
        name = f"Ada{letter} Lo{letter if surnames else ''}"
        record = {"id": f"f{i}", "prompt": f"{name} was born in", "target": f"city {i}", "subject": name}
        records.append(record | ({"relation": "birthplace"} if relation else {}))
    return KnowledgeSet.from_records(records, name="facts")


def parts(facts: KnowledgeSet, **sizes: int) -> tuple[KnowledgeSet, ...]:
    """Consecutive slices of ``facts``, one per keyword (its name and size), in order."""
    out, start = [], 0
    for name, size in sizes.items():
        out.append(KnowledgeSet(facts.facts[start : start + size], name=name))
        start += size
    return tuple(out)
