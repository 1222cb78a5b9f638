"""LOKA end to end: locate, place (or a control), edit, choose the size."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from ablation import AblationMask, bake, mean_activations
from loka.base.errors import UsageError
from loka.data.knowledge import KnowledgeSet
from loka.methods.budget import Budget, last_step
from loka.methods.localized.config import LokaConfig
from loka.methods.localized.erasure import name_facts
from loka.methods.localized.finetune import masked_finetune
from loka.methods.localized.localization import Localization, control_mask, locate, owned_parameters
from loka.methods.localized.rewrite import rewrite_search
from loka.methods.training import accuracy
from loka.models import same_kind_as

__all__ = ["run_loka", "resolved_config", "with_names"]

logger = logging.getLogger(__name__)


def run_loka(
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
    config: LokaConfig,
) -> tuple[Any, dict[str, Any], list[dict[str, float]], AblationMask | None]:
    objective = config.objective
    if config.edit == "rewrite":
        return (*rewrite_search(model, forget, retain, tokenizer=tokenizer, seed=seed, progress=progress,
                                 budget=budget, validation_retain=validation_retain, reference=reference,
                                 retain_floor=config.retain_floor, max_layers=config.max_layers, lams=config.lams),
                None)  # fmt: skip
    if objective == "auto":
        objective = "unknown" if reference is not None else "npo"
    config = resolved_config(config, forget, retain, reference)
    if config.erase == "subject" and reference is None:
        raise UsageError("erase='subject' needs reference= facts about people the model never saw (fresh names)")
    if config.erase == "subject" and config.edit != "finetune":
        raise UsageError(f"erase='subject' works with edit='finetune', got edit={config.edit!r}")
    if (config.reinit > 0 or (config.adversary_weight or 0) > 0) and config.edit != "finetune":
        raise UsageError(f"reinit and adversary_weight work with edit='finetune', got edit={config.edit!r}")
    if objective == "unknown" and reference is None:
        raise UsageError("objective='unknown' needs reference= facts about people the model never saw; use 'npo'")
    used: dict[str, Any] = dict(objective=objective, reference=reference.name if reference is not None else None,
                                erase=config.erase, adversary_weight=config.adversary_weight)  # fmt: skip
    original_retain = accuracy(model, validation_retain, tokenizer)
    floor = config.retain_floor * original_retain
    sizes = list(config.sizes) if config.size == "auto" else [config.size]
    lrs = list(config.lrs) if config.lr == "auto" else [config.lr]
    log: list[dict[str, float]] = []
    best: tuple[float, Any, Localization, list[dict[str, float]], float] | None = None
    located: Localization | None = None
    for candidate, lr in ((size, lr) for size in sizes for lr in lrs):
        if lr == lrs[0]:  # a new size (a new rate reuses the size's components)
            if located is None or config.localize == "exact":
                # a control places itself by the located set, but does not rest on its ranking: no check
                check = config.check_scores if config.location == "located" else 0
                located = locate(model, forget, retain, size=candidate, localize=config.localize,
                                 components=config.components, contrast=config.contrast, check=check,
                                 seed=seed, mask=config.mask)  # fmt: skip
            else:
                located = located.resized(model, candidate, config.components)
            if config.erase == "subject":  # the names' own components too
                located = with_names(model, located, forget, retain, candidate, config, seed)
            location_seed = seed if config.location_seed is None else config.location_seed
            chosen = control_mask(model, located, config.location, seed=location_seed,
                                  min_layer_share=config.min_layer_share)  # fmt: skip
        if config.edit == "ablate":
            means = mean_activations(model, retain.encode(tokenizer)) if config.ablate_mode == "mean" else None
            edited = bake(model, chosen.mask.with_mode(config.ablate_mode, means=means), share=config.share)
            run = [{"step": 0, "forget_accuracy": accuracy(edited, forget, tokenizer),
                    "retain_accuracy": accuracy(edited, validation_retain, tokenizer)}]  # fmt: skip
        else:
            edited, run = masked_finetune(
                model, forget, retain, mask=chosen.mask, reference=reference, objective=objective,
                tokenizer=tokenizer, validation_retain=validation_retain, seed=seed, progress=progress,
                budget=budget, config=replace(config, lr=lr),
            )  # fmt: skip
        offset = last_step(log)
        tried = {"size": float(candidate)} | ({"lr": float(lr)} if config.lr == "auto" else {})
        log += [{**entry, "step": entry["step"] + offset, **tried} for entry in run]
        last = run[-1]
        margin = last["retain_accuracy"] - last["forget_accuracy"]
        if best is None or margin > best[0]:
            best = (margin, edited, chosen, run, lr)
        if budget.reached(last["forget_accuracy"]) and last["retain_accuracy"] >= floor:
            best = (margin, edited, chosen, run, lr)
            break
    assert best is not None
    _, edited, chosen, run, lr = best
    last = run[-1]
    if not budget.reached(last["forget_accuracy"]) or last["retain_accuracy"] < floor:
        logger.warning(
            "loka: stopped at forget %.3f, validation retain %.3f (target forget <= %.2f, retain >= %.3f)",
            last["forget_accuracy"], last["retain_accuracy"], budget.target_forget_accuracy, floor,
        )  # fmt: skip
    used["original_validation_retain"] = round(original_retain, 6)
    used["chosen"] = {**chosen.to_dict(), "size": chosen.mask.summary()["total"], "steps": int(last["step"])}
    if config.lr == "auto":
        used["chosen"]["lr"] = float(lr)
    return same_kind_as(edited, model), used, log, chosen.mask


def resolved_config(
    config: LokaConfig, forget: KnowledgeSet, retain: KnowledgeSet, reference: KnowledgeSet | None
) -> LokaConfig:
    """The config with its automatic choices made: ``erase="auto"`` is ``"subject"`` for a
    fine-tuning edit with ``reference`` people when forget, retain and reference people have names
    of two or more words (else ``"answer"``); ``adversary_weight=None`` is 1.0 for a fine-tuning
    edit (else 0)."""
    finetune = config.edit == "finetune"
    erase = config.erase
    if erase == "auto":
        named = reference is not None and all(name_facts(k) is not None for k in (forget, retain, reference))
        erase = "subject" if finetune and named else "answer"
    adversary = config.adversary_weight
    if adversary is None:
        adversary = 1.0 if finetune else 0.0
    return replace(config, erase=erase, adversary_weight=adversary)


def with_names(
    model: Any,
    located: Localization,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    size: float | int,
    config: LokaConfig,
    seed: int,
) -> Localization:
    """``located`` joined with the components that carry the forget people's *names*
    (:func:`loka.methods.localized.erasure.name_facts`, contrasted with the retain people's names; the same size)."""
    names, retain_names = name_facts(forget), name_facts(retain)
    if names is None or retain_names is None:
        raise UsageError("erase='subject' needs forget and retain people with names of two or more words")
    by_name = locate(model, names, retain_names, size=size, localize="all", components=config.components,
                     contrast=config.contrast, check=0, seed=seed)  # fmt: skip
    mask = located.mask | by_name.mask
    return replace(located, mask=mask, parameters=owned_parameters(model, mask))


logger = logging.getLogger(__name__)
