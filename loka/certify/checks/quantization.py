"""Quantization (Zhang et al. 2025, "Does your LLM truly unlearn?"): round AFTER's weights to 8 bits
(per channel) and 4 bits (groups of 128) with :func:`loka.evaluation.attacks.quantization.quantize`,
and re-run the direct-answer check and the LOSS membership check on each copy. An edit smaller
than the rounding step is undone by it."""

from __future__ import annotations

from typing import Any

from loka.certify.checks.direct import answers
from loka.certify.checks.membership import loss_check
from loka.certify.result import Check
from loka.certify.suite import Suite
from loka.data.knowledge import KnowledgeSet
from loka.evaluation.attacks.quantization import quantize

__all__ = ["quantization_checks"]


def quantization_checks(
    model: Any, tokenizer: Any, forget: KnowledgeSet, reference: KnowledgeSet, suite: Suite
) -> list[Check]:
    out = []
    for bits, group_size in suite.quantization_schemes:
        copy = quantize(model, bits, group_size=group_size)
        scheme = f"{bits}-bit" + ("" if group_size is None else f", groups of {group_size}")
        out.append(answers(copy, tokenizer, forget, reference, suite, name=f"quantization.{bits}bit.answers",
                           what=f"weights rounded to {scheme}"))  # fmt: skip
        out.append(loss_check(copy, tokenizer, forget, reference, suite, name=f"quantization.{bits}bit.loss"))
        del copy
    return out
