"""LOKA's edit: fine-tune only the parameters the located components own."""

from __future__ import annotations

from typing import Any

import torch

from ablation import AblationMask, edit
from loka.base.distributed import active
from loka.data.knowledge import KnowledgeSet
from loka.methods.batches import my_rows
from loka.methods.budget import Budget, last_step
from loka.methods.localized.config import LokaConfig
from loka.methods.localized.erasure import AttackedModel, SubjectTerm
from loka.methods.localized.repair import reinit_repair
from loka.methods.terms import ForgetTerm, RetainTerm
from loka.methods.training import accuracy, logged
from loka.models import input_device
from loka.models.forward import shared_forwards
from loka.scoring.metrics import text_nll, zero_loss

__all__ = ["masked_finetune"]


def masked_finetune(
    model: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    mask: AblationMask,
    reference: KnowledgeSet | None,
    objective: str,
    tokenizer: Any,
    validation_retain: KnowledgeSet,
    seed: int,
    progress: bool,
    budget: Budget,
    config: LokaConfig,
) -> tuple[Any, list[dict[str, float]]]:
    """Train only the parameters the components of ``mask`` own (:func:`ablation.edit`: every other
    parameter stays bit-identical) on ``forget loss + retain_weight * retain KL`` (plus, with
    ``erase="subject"``, ``subject_weight`` x the subject term, and with ``adversary_weight``, the
    forget loss at adversarially fine-tuned weights: :mod:`loka.methods.localized.erasure`), under ``budget``; with
    ``reinit``, then shrink-perturb and repair (:func:`reinit_repair`)."""
    device = input_device(model)
    forget_loss = ForgetTerm(model, forget, reference, objective, config.beta, tokenizer, device)
    retain_loss = RetainTerm(model, retain.encode(tokenizer).to(device))
    subject = None
    if config.erase == "subject":
        assert reference is not None
        subject = SubjectTerm(model, forget_loss.knowledge, retain, reference, tokenizer, device)
    # the adversary's fold and the subject term read the forget term's rows (one row = one wording)
    attack_batch = forget_loss.batch if (config.adversary_weight or 0) > 0 else None
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    log: list[dict[str, float]] = []
    state: dict[str, Any] = {}
    batch_size = config.batch_size

    def loss(student: Any) -> torch.Tensor:
        with shared_forwards():  # the subject term reads the forget and retain terms' rows: one forward each
            return step_loss(student)

    def step_loss(student: Any) -> torch.Tensor:
        state["student"] = student
        state["calls"] = calls = state.get("calls", 0) + 1
        rows = torch.randperm(len(forget_loss), generator=generator)[:batch_size].to(device)
        kept = torch.randperm(len(retain_loss), generator=generator)[:batch_size].to(device)
        f, r = forget_loss(student, rows), retain_loss(student, kept)
        total = f + config.retain_weight * r
        losses = {"forget_loss": logged(f), "retain_loss": logged(r)}
        if "attacked_forget_loss" in state.get("losses", {}):  # the adversary's last value, until it runs again
            losses["attacked_forget_loss"] = state["losses"]["attacked_forget_loss"]
        if subject is not None:
            s = subject(student, rows, kept) if not active() else sharded_subject(subject, student, rows, kept)
            total = total + config.subject_weight * s
            losses["subject_loss"] = logged(s)
        if attack_batch is not None and len(rows) > 1 and (calls - 1) % config.adversary_every == 0:
            half = len(rows) // 2  # the adversary fine-tunes on one fold, the loss reads the other
            # (the adversary's step is computed on every rank on its whole fold: it takes the
            # sign of that fold's gradient; the loss at the attacked weights is data parallel)
            attacked = AttackedModel(student, attack_batch.rows(rows[:half]), config.adversary_lr)
            a = forget_loss(student, rows[half:], attacked=attacked)
            total = total + config.adversary_weight * a
            losses["attacked_forget_loss"] = logged(a)
        state["losses"] = losses
        return total

    def check(step: int, value: float) -> bool:
        if not budget.due(step + 1):
            return False
        student = state["student"]
        forget_accuracy = accuracy(student, forget, tokenizer)
        entry = {"step": step + 1, **state["losses"], "forget_accuracy": forget_accuracy,
                 "retain_accuracy": accuracy(student, validation_retain, tokenizer)}  # fmt: skip
        done = budget.reached(forget_accuracy)
        if subject is not None:  # the names too: down to the strangers' level (within the tolerance)
            entry["subject_gap"] = subject.refresh(student)
            done = done and abs(entry["subject_gap"]) <= config.subject_tolerance
        log.append(entry)
        return done

    edited = edit(
        model, mask, loss, steps=budget.max_steps, lr=config.lr, on_step=check, progress=progress, share=config.share
    )
    if config.reinit > 0:
        edited, repair_log = reinit_repair(
            edited, forget, retain, mask=mask, tokenizer=tokenizer, validation_retain=validation_retain,
            seed=seed, progress=progress, budget=budget, config=config, offset=last_step(log),
        )  # fmt: skip
        log += repair_log
    return edited, log


def sharded_subject(subject: SubjectTerm, student: Any, rows: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """:class:`loka.methods.localized.erasure.SubjectTerm` on a global batch, data parallel: this rank's rows of
    each side, each side's sum over its global row count."""
    mine, mine_kept = my_rows(rows), my_rows(kept)
    parts = []
    if len(mine):
        forget = text_nll(student, subject.batch.rows(mine))
        parts.append(((forget - subject.target[mine]) ** 2).sum() / len(rows))
    if len(mine_kept):
        retain = text_nll(student, subject.retain_batch.rows(mine_kept))
        parts.append(((retain - subject.retain_original[mine_kept]) ** 2).sum() / len(kept))
    return sum(parts[1:], parts[0]) if parts else zero_loss(student)
