"""The training loop the methods that train with their own optimizer share (gradient ascent, NPO,
RMU): AdamW on the given parameters, gradients added over the ranks under a process group
(:mod:`loka.base.distributed`, as DDP does), and the shared stopping rule of :class:`loka.methods.Budget`:
every ``check_every`` steps the forget accuracy is measured and logged, and the run stops once it
reaches the target, or after ``max_steps``.

LOKA's edits train through :func:`ablation.edit` (masked gradients) with the same rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from loka.base.distributed import active, all_reduce_gradients, all_reduce_sum
from loka.data.knowledge import KnowledgeSet
from loka.scoring.metrics import score_facts

__all__ = ["accuracy", "logged", "train"]

StepLoss = Callable[[], tuple[Tensor, Mapping[str, Tensor]]]
"""One step's loss to minimise and its named terms to log."""


def accuracy(model: Any, knowledge: KnowledgeSet, tokenizer: Any) -> float:
    """Answer-token accuracy of ``model`` on ``knowledge``, measured in eval mode (the model's
    mode is restored)."""
    was_training = model.training
    model.eval()
    value = score_facts(model, knowledge, tokenizer=tokenizer).answer_accuracy
    model.train(was_training)
    return value


def logged(term: Tensor) -> float:
    """A logged loss term: the global batch's (the ranks' parts added) under a process group."""
    if not active():
        return term.item()
    return all_reduce_sum(term.detach().double().reshape(1)).item()


def train(
    params: Sequence[Tensor],
    step_loss: StepLoss,
    *,
    budget: Any,
    lr: float,
    measure: Callable[[], Mapping[str, float]],
    desc: str,
    progress: bool,
) -> list[dict[str, float]]:
    """Minimise ``step_loss()`` over ``params`` with AdamW at ``lr`` for at most
    ``budget.max_steps`` steps; at each step ``budget.due``, log ``{"step", the terms,
    **measure()}`` (``measure`` returns at least ``"forget_accuracy"``) and stop once
    ``budget.reached`` it. Returns the log."""
    params = list(params)
    optimizer = torch.optim.AdamW(params, lr=lr)
    log: list[dict[str, float]] = []
    for step in tqdm(range(1, budget.max_steps + 1), disable=not progress, desc=desc, leave=False):
        loss, terms = step_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        all_reduce_gradients(params)
        optimizer.step()
        if budget.due(step):
            measured = dict(measure())
            log.append({"step": step, **{name: logged(term) for name, term in terms.items()}, **measured})
            if budget.reached(measured["forget_accuracy"]):
                break
    return log
