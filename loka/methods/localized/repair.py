"""Re-initialise and repair: shrink-perturb the located components, then distil the original back into them
(a localized UNDO).
"""

from __future__ import annotations

from typing import Any

import torch

from ablation import AblationMask, edit
from ablation.params import parameter_masks
from loka.data.knowledge import KnowledgeSet
from loka.methods.budget import Budget
from loka.methods.localized.config import LokaConfig
from loka.methods.localized.erasure import shrink_perturb
from loka.methods.terms import RetainTerm
from loka.methods.training import accuracy
from loka.models import input_device, plain_copy, same_kind_as

__all__ = ["reinit_repair"]


def reinit_repair(
    teacher: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    mask: AblationMask,
    tokenizer: Any,
    validation_retain: KnowledgeSet,
    seed: int,
    progress: bool,
    budget: Budget,
    config: LokaConfig,
    offset: int,
) -> tuple[Any, list[dict[str, float]]]:
    """Localized UNDO: shrink-perturb the parameters ``mask``'s components own in a copy of the
    edited model (``teacher``), then train only those to match the teacher's answer distributions
    (KL at every answer position) on the retain facts and the forget prompts, until validation
    retain is back to ``retain_floor`` x the teacher's (checked every ``check_every`` steps, at
    most ``max_steps``; the forget target must hold too)."""
    device = input_device(teacher)
    student = plain_copy(teacher)
    shrink_perturb(student, parameter_masks(student, mask.neurons, mask.heads), config.reinit, seed=seed)
    student = same_kind_as(student, teacher)
    retain_target = RetainTerm(teacher, retain.encode(tokenizer).to(device))
    forget_target = RetainTerm(teacher, forget.encode(tokenizer).to(device))
    floor = config.retain_floor * accuracy(teacher, validation_retain, tokenizer)
    generator = torch.Generator().manual_seed(seed + 1)
    log: list[dict[str, float]] = [{
        "step": offset, "phase_reinit": 1.0, "forget_accuracy": accuracy(student, forget, tokenizer),
        "retain_accuracy": accuracy(student, validation_retain, tokenizer),
    }]  # fmt: skip
    state: dict[str, Any] = {}

    def loss(model: Any) -> torch.Tensor:
        state["model"] = model
        rows = torch.randperm(len(forget_target), generator=generator)[: config.batch_size].to(device)
        kept = torch.randperm(len(retain_target), generator=generator)[: config.batch_size].to(device)
        return retain_target(model, kept) + forget_target(model, rows)

    def check(step: int, value: float) -> bool:
        if not budget.due(step + 1):
            return False
        model = state["model"]
        entry = {"step": offset + step + 1, "repair_loss": value,
                 "forget_accuracy": accuracy(model, forget, tokenizer),
                 "retain_accuracy": accuracy(model, validation_retain, tokenizer)}  # fmt: skip
        log.append(entry)
        return entry["retain_accuracy"] >= floor and budget.reached(entry["forget_accuracy"])

    mask = AblationMask.from_components(mask.components, model=student)  # the same components, the new weights
    repaired = edit(
        student, mask, loss, steps=budget.max_steps, lr=config.lr, on_step=check, progress=progress, share=config.share
    )
    return repaired, log
