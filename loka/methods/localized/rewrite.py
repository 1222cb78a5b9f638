"""``edit="rewrite"``: search layer sets and strengths for the closed-form rewrite of MLP output projections."""

from __future__ import annotations

import logging
from typing import Any

import attribution
from ablation import key_covariance, rewrite
from loka.data.knowledge import KnowledgeSet
from loka.methods.budget import Budget
from loka.methods.training import accuracy

__all__ = ["rewrite_search"]

logger = logging.getLogger(__name__)


def rewrite_search(
    model: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    tokenizer: Any,
    seed: int,
    progress: bool,
    budget: Budget,
    validation_retain: KnowledgeSet,
    reference: KnowledgeSet | None,
    retain_floor: float,
    max_layers: int,
    lams: tuple[float, ...],
) -> tuple[Any, dict[str, Any], list[dict[str, float]]]:
    """``edit="rewrite"``: the closed-form rewrite of whole MLP output projections (layer sets from
    attribution and MEMIT's last layers, smaller first; ``lam`` from large to small)."""
    scores = attribution.attribute(
        model, forget, method="grad_x_act", components=("neurons",), baseline="corrupt",
        direction="denoise", positions="last", seed=seed, progress=progress,
    )  # fmt: skip
    per_layer = scores.neurons.clamp(min=0).sum(-1)
    reference = reference if reference is not None else retain
    floor = retain_floor * accuracy(model, validation_retain, tokenizer)
    config: dict[str, Any] = dict(
        edit="rewrite", retain_floor=retain_floor, reference=reference.name, max_layers=max_layers, lams=list(lams),
        layer_attribution=[round(v, 6) for v in per_layer.tolist()],
    )  # fmt: skip
    ranked = per_layer.argsort(descending=True).tolist()
    sizes = range(1, min(max_layers, len(ranked)) + 1)
    candidates = list(dict.fromkeys(
        tuple(layers) for n in sizes for layers in (sorted(ranked[:n]), list(range(len(ranked) - n, len(ranked))))
    ))  # fmt: skip
    covariance = key_covariance(model, retain, layers=sorted({layer for c in candidates for layer in c}))
    log: list[dict[str, float]] = []
    best: tuple[float, Any, dict[str, Any]] | None = None
    for layers in candidates:
        for lam in sorted(lams, reverse=True):  # one check per candidate
            result = rewrite(
                model, forget, retain=retain, layers=layers, lam=lam, covariance=covariance, reference=reference
            )
            forget_accuracy = accuracy(result.model, forget, tokenizer)
            retain_accuracy = accuracy(result.model, validation_retain, tokenizer)
            log.append(
                {"layers": layers, "lam": lam, "forget_accuracy": forget_accuracy, "retain_accuracy": retain_accuracy}
            )
            chosen = {
                "layers": list(layers),
                "lam": lam,
                "update_norms": list(result.norms),
                "ranks": list(result.ranks),
            }
            if budget.reached(forget_accuracy) and retain_accuracy >= floor:
                return result.model, {**config, "chosen": chosen}, log
            margin = retain_accuracy - forget_accuracy
            if best is None or margin > best[0]:
                best = (margin, result.model, chosen)
    assert best is not None
    logger.warning(
        "loka: no candidate reached forget <= %.2f with retain >= %.3f", budget.target_forget_accuracy, floor
    )
    return best[1], {**config, "chosen": best[2]}, log


logger = logging.getLogger(__name__)
