"""Position masks and position classes on known token sequences."""

from __future__ import annotations

import pytest
from transformer_lens.model_bridge import TransformerBridge

from attribution.positions import POSITION_CLASSES, position_classes, position_mask
from loka.data import Fact, KnowledgeSet


def classes_of(model: TransformerBridge, *facts: Fact) -> list[list[tuple[str, str]]]:
    batch = KnowledgeSet(facts).encode(model)
    classes = position_classes(batch)
    out = []
    for row, ids in enumerate(batch.input_ids.tolist()):
        tokens = model.tokenizer.convert_ids_to_tokens(ids)
        out.append(
            [(t, POSITION_CLASSES[c] if c >= 0 else "pad") for t, c in zip(tokens, classes[row].tolist(), strict=True)]
        )
    return out


def test_classes_follow_rome(model, seed0_world):
    """BOS, the subject's first/middle/last tokens, the first token after it, further tokens, the
    last prompt token, the target, and padding (a shorter second fact). The token counts are
    those of the seed-0 world's tokenizer, in which these names are one token each."""
    long = Fact("a", "The birthplace of Nesri Kones Ulor is in", "Tokyo", subject="Nesri Kones Ulor")
    short = Fact("b", "Nesri was born in", "Oslo", subject="Nesri")
    first, second = classes_of(model, long, short)
    assert [c for _, c in first] == [
        "BOS",
        "before subject",
        "before subject",
        "before subject",
        "first subject",
        "middle subject",
        "last subject",
        "first subsequent",
        "last prompt",
        "target",
    ]
    assert [t for t, _ in first][4:7] == ["ĠNesri", "ĠKones", "ĠUlor"]
    # A one-token subject is its own last subject token; padding is -1.
    assert [c for _, c in second] == [
        "BOS",
        "last subject",
        "first subsequent",
        "further",
        "last prompt",
        "target",
    ] + ["pad"] * 4


def test_a_fact_without_subject_has_no_subject_classes(model):
    (row,) = classes_of(model, Fact("c", "Some people were born in", "Oslo"))
    assert {c for _, c in row} == {"BOS", "further", "last prompt", "target"}


def test_masks(model, seed0_world):
    facts = KnowledgeSet(
        (
            Fact("a", "Nesri Kones was born in", "Tokyo", subject="Nesri Kones"),
            Fact("b", "Nesri was born in", "New Delhi", subject="Nesri"),
        )
    )
    batch = facts.encode(model)
    assert position_mask(batch, "all").equal(batch.attention_mask.bool())
    last = position_mask(batch, "last")
    assert last.sum(-1).tolist() == [1, 1]
    assert last.nonzero()[:, 1].equal(batch.answer_positions)
    subject = position_mask(batch, "subject")
    assert subject.sum(-1).tolist() == [2, 1]
    assert subject.equal(batch.subject_mask)
    with pytest.raises(ValueError, match=r"unknown positions 'first'; use one of 'all', 'last', 'subject'"):
        position_mask(batch, "first")  # type: ignore[arg-type]
    no_subject = KnowledgeSet((Fact("x", "Someone was born in", "Oslo"),)).encode(model)
    with pytest.raises(ValueError, match=r"positions='subject' needs every fact to name a subject .* e.g. 'x'"):
        position_mask(no_subject, "subject")
