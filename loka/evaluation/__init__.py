"""The evaluation: :func:`evaluate` (``pipeline``) and its result (``result``), the attacks one file per
family (:mod:`loka.evaluation.attacks`) and the intervals every number carries (``intervals``)."""

from __future__ import annotations

from loka.evaluation.pipeline import evaluate
from loka.evaluation.result import UnlearningEvaluation

__all__ = ["UnlearningEvaluation", "evaluate"]
