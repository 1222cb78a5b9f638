"""What "the model knows this fact" means as a number: the metric every attribution moves.

Three metrics, each per fact and read under teacher forcing from one forward pass over
``[BOS] + prompt + target``:

- ``"log_prob"``: log p(target | prompt), the sum over the target's tokens of the log-probability
  of each token given the prompt and the target tokens before it. It is what
  :func:`loka.scoring.metrics.score_facts` calls ``log_prob``; higher means the fact is known better.
- ``"log_odds"``: the sum over the target's tokens of ``log p - log(1 - p)`` (the token's logit
  minus the log-sum-exp of every other token's logit). It orders facts as ``"log_prob"`` does but
  does not saturate: where the model is sure of a token, ``log p`` is flat at 0 (a component's
  removal can only move it a little, and its gradient vanishes), while the log-odds keep growing
  with the evidence. So a component that is one of several redundant carriers of a fact still
  moves it, which is what recovering *all* the carriers needs (on the planted testbed, zero
  ablation read in log-odds finds more of the planted neurons than in log-probability:
  ``bench/recall.py``). No contrast: the competitors are the model's own other tokens.
- ``"logit_diff"``: the logit of the target's first token minus the logit of a *contrast* answer's
  first token, both read at the last prompt token (the logit difference of IOI-style circuit
  work). It needs a contrast for every fact, passed as a mapping ``fact id -> contrast target``
  (e.g. ``{"Ann Lee/birthplace": "Oslo"}``); the contrast is tokenized exactly like a target,
  joined to the prompt. Extra ids in the mapping are ignored, so one mapping can serve several
  sets.

A set of facts is summarised by the mean of its per-fact values (:class:`MetricValues`). Inside
attribution the metric is evaluated on many patched copies of a batch at once; :class:`Targets`
holds what it reads for one batch of rows and computes it from the logits at the prediction
positions only (:func:`gather_hook` hands the unembedding just those rows, so a patched forward
never builds a ``[batch, pos, d_vocab]`` tensor).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from loka.base.errors import UsageError
from loka.data.encoding import FactBatch, encode_facts, token_log_probs
from loka.data.knowledge import KnowledgeSet
from loka.models import input_device

__all__ = [
    "MetricName",
    "METRICS",
    "FactMetric",
    "MetricValues",
    "Targets",
    "gather_hook",
    "metric_values",
]

MetricName = Literal["log_prob", "logit_diff", "log_odds"]
METRICS: tuple[MetricName, ...] = get_args(MetricName)
UNEMBED_INPUT = "unembed.hook_in"
"""The hook whose activation (the final residual, after the last norm) the unembedding reads."""


@dataclass(frozen=True)
class FactMetric:
    """Which metric, and for ``"logit_diff"`` the contrast answer of each fact (by fact id)."""

    name: MetricName = "log_prob"
    contrast: Mapping[str, str] | None = None
    contrast_ids: Mapping[str, int] | None = field(default=None, compare=False)
    """The first token of each contrast answer, by fact id (set by :meth:`encoded`)."""

    @classmethod
    def resolve(cls, metric: str | None, contrast: Mapping[str, str] | None) -> FactMetric:
        """Validate the user's choice. ``metric=None`` means ``"logit_diff"`` when a contrast is
        given, else ``"log_prob"``."""
        if metric is None:
            metric = "log_prob" if contrast is None else "logit_diff"
        if metric not in METRICS:
            raise UsageError(f"unknown metric {metric!r}; use one of {', '.join(map(repr, METRICS))}")
        if metric == "logit_diff" and contrast is None:
            raise UsageError("metric='logit_diff' needs contrast={fact id: contrast target, ...} for every fact")
        if metric != "logit_diff" and contrast is not None:
            raise UsageError("a contrast is only read by metric='logit_diff'; drop it or set metric='logit_diff'")
        if contrast is not None and not isinstance(contrast, Mapping):
            raise UsageError(f"contrast must map fact ids to contrast targets, got {type(contrast).__name__}")
        return cls(metric, None if contrast is None else dict(contrast))  # type: ignore[arg-type]

    def check(self, knowledge: KnowledgeSet) -> None:
        """ValueError if a fact of ``knowledge`` has no contrast (``"logit_diff"`` only)."""
        if self.contrast is None:
            return
        missing = [fact_id for fact_id in knowledge.ids if fact_id not in self.contrast]
        if missing:
            raise UsageError(
                f"metric='logit_diff' needs a contrast for every fact; {len(missing)} of {len(knowledge)} "
                f"have none, e.g. {missing[0]!r}"
            )

    def encoded(self, knowledge: KnowledgeSet, model: Any) -> FactMetric:
        """This metric with the first token of every fact's contrast answer (``"logit_diff"``),
        tokenized once for the whole set; ``"log_prob"`` needs nothing and is returned as is.
        ValueError if a contrast starts with the same token as its fact's target."""
        if self.contrast is None:
            return self
        self.check(knowledge)
        facts = knowledge.facts
        try:
            targets = encode_facts(facts, model).target_ids[:, 0]
            contrasts = encode_facts([replace(f, target=self.contrast[f.id]) for f in facts], model).target_ids[:, 0]
        except ValueError as err:
            raise UsageError(f"bad contrast: {err}") from None
        same = (contrasts == targets).nonzero().flatten().tolist()
        if same:
            fact = facts[same[0]]
            raise UsageError(
                f"fact {fact.id!r}: contrast {self.contrast[fact.id]!r} starts with the same token as the "
                f"target {fact.target!r}, so their logit difference is 0 whatever the model does"
            )
        return replace(self, contrast_ids=dict(zip(knowledge.ids, contrasts.tolist(), strict=True)))

    def targets(self, batch: FactBatch) -> Targets:
        """What this metric reads from ``batch`` (its contrasts from :meth:`encoded`)."""
        contrast_ids = None
        if self.contrast is not None:
            if self.contrast_ids is None:
                raise UsageError("metric='logit_diff': encode the contrasts first (FactMetric.encoded)")
            ids = [self.contrast_ids[fact_id] for fact_id in batch.fact_ids]
            contrast_ids = torch.tensor(ids, device=batch.target_ids.device)
        return Targets(
            metric=self.name,
            prediction_positions=batch.prediction_positions,
            target_ids=batch.target_ids,
            target_mask=batch.target_mask,
            contrast_ids=contrast_ids,
        )


@dataclass(frozen=True, eq=False)  # holds tensors: compare fields, not objects
class Targets:
    """What the metric reads from one batch of rows: where, which target tokens, which contrast."""

    metric: MetricName
    prediction_positions: Int[Tensor, "row target"]
    target_ids: Int[Tensor, "row target"]
    target_mask: Bool[Tensor, "row target"]
    contrast_ids: Int[Tensor, " row"] | None = None

    @property
    def rows(self) -> int:
        return self.target_ids.shape[0]

    def repeat(self, n: int) -> Targets:
        """The targets of ``n`` stacked copies of these rows (copy-major: row ``c * rows + r``)."""
        return Targets(
            metric=self.metric,
            prediction_positions=self.prediction_positions.repeat(n, 1),
            target_ids=self.target_ids.repeat(n, 1),
            target_mask=self.target_mask.repeat(n, 1),
            contrast_ids=None if self.contrast_ids is None else self.contrast_ids.repeat(n),
        )

    def first(self, n: int) -> Targets:
        """The targets of the first ``n`` rows."""
        return Targets(
            metric=self.metric,
            prediction_positions=self.prediction_positions[:n],
            target_ids=self.target_ids[:n],
            target_mask=self.target_mask[:n],
            contrast_ids=None if self.contrast_ids is None else self.contrast_ids[:n],
        )

    def __call__(self, target_logits: Float[Tensor, "copy_row target d_vocab"]) -> Float[Tensor, " copy_row"]:
        """The metric of every row, from the logits at its prediction positions.

        ``target_logits`` has ``copies * rows`` rows (copy-major), as a patched forward returns them.
        """
        copies = target_logits.shape[0] // self.rows
        target_logits = target_logits.float()
        if self.metric == "log_prob":
            target_ids = self.target_ids.repeat(copies, 1)
            picked = token_log_probs(target_logits, target_ids)
            return (picked * self.target_mask.repeat(copies, 1)).sum(-1)
        if self.metric == "log_odds":
            target_ids = self.target_ids.repeat(copies, 1)
            picked = target_logits.gather(-1, target_ids[..., None])[..., 0]
            others = target_logits.scatter(-1, target_ids[..., None], float("-inf")).logsumexp(-1)
            return ((picked - others) * self.target_mask.repeat(copies, 1)).sum(-1)
        assert self.contrast_ids is not None
        first = target_logits[:, 0]
        target = first.gather(-1, self.target_ids[:, :1].repeat(copies, 1))[:, 0]
        contrast = first.gather(-1, self.contrast_ids.repeat(copies)[:, None])[:, 0]
        return target - contrast


def gather_hook(targets: Targets) -> tuple[str, Callable[[Tensor, Any], Tensor]]:
    """A forward hook on the unembedding's input that keeps only the prediction positions.

    The model then returns logits ``[copies * rows, n_target, d_vocab]`` instead of
    ``[copies * rows, pos, d_vocab]``; the unembedding is position-wise, so the values are the
    same rows of the full logits.
    """

    def keep_prediction_positions(resid: Float[Tensor, "copy_row pos d_model"], hook: Any) -> Tensor:
        copies = resid.shape[0] // targets.rows
        index = targets.prediction_positions.repeat(copies, 1)
        return resid.gather(1, einops.repeat(index, "row target -> row target d", d=resid.shape[-1]))

    return UNEMBED_INPUT, keep_prediction_positions


@dataclass(frozen=True, eq=False)  # holds tensors: compare fields, not objects
class MetricValues:
    """The metric of every fact of a set (same order as the set) and their mean."""

    fact_ids: tuple[str, ...]
    values: Float[Tensor, " fact"]
    metric: MetricName

    def __len__(self) -> int:
        return len(self.fact_ids)

    @property
    def mean(self) -> float:
        return self.values.mean().item()

    def by_id(self) -> dict[str, float]:
        return dict(zip(self.fact_ids, self.values.tolist(), strict=True))


@torch.no_grad()
def metric_values(
    model: Any,
    knowledge: KnowledgeSet,
    *,
    metric: MetricName | None = None,
    contrast: Mapping[str, str] | None = None,
    batch_size: int = 32,
) -> MetricValues:
    """The metric of every fact of ``knowledge`` under ``model`` (a TransformerBridge), unpatched."""
    fact_metric = FactMetric.resolve(metric, contrast)
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}")
    fact_metric = fact_metric.encoded(knowledge, model)
    device = input_device(model)
    values = []
    for batch in knowledge.batches(model, batch_size):
        batch = batch.to(device)
        targets = fact_metric.targets(batch)
        with model.hooks(fwd_hooks=[gather_hook(targets)]):
            target_logits = model(batch.input_ids, attention_mask=batch.attention_mask)
        values.append(targets(target_logits).cpu())
    return MetricValues(knowledge.ids, torch.cat(values), fact_metric.name)
