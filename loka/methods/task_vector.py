"""``"task_vector"``: negate what a fine-tune on the forget facts learned (Ilharco et al. 2023).

Fine-tune a copy on the forget facts (``finetune_steps`` steps, default 60 or the budget's
``max_steps`` if smaller), take ``tau = theta_finetuned - theta`` and return ``theta - scale * tau``
for the smallest scale on the grid that reaches the forget target (one check per scale); if none
does, the scale with the best validation-retain minus forget margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from loka.base.checks import check_number
from loka.base.distributed import all_reduce_gradients
from loka.base.errors import UsageError
from loka.data.knowledge import KnowledgeSet
from loka.methods.batches import shuffled_batches
from loka.methods.budget import Budget
from loka.methods.config import MethodConfig, set_field
from loka.methods.training import accuracy, logged
from loka.models import hf_state_dict, input_device, plain_copy
from loka.scoring.metrics import sharded_lm_loss

__all__ = ["run_task_vector", "TaskVectorConfig"]


def run_task_vector(
    model: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    tokenizer: Any,
    seed: int,
    progress: bool,
    budget: Budget,
    validation_retain: KnowledgeSet,
    config: TaskVectorConfig,
) -> tuple[Any, dict[str, Any], list[dict[str, float]]]:
    lr, batch_size, scales = config.lr, config.batch_size, config.scales
    finetune_steps = min(60, budget.max_steps) if config.finetune_steps is None else config.finetune_steps
    check_number("finetune_steps", finetune_steps, low=1, high=budget.max_steps, integer=True)
    used: dict[str, Any] = {"finetune_steps": finetune_steps}
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    tuned = plain_copy(model).train()
    device = input_device(tuned)
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=lr)
    batches = shuffled_batches(forget, tokenizer, batch_size, generator)
    log: list[dict[str, float]] = []
    for step in tqdm(range(1, finetune_steps + 1), disable=not progress, desc="task vector: fine-tune", leave=False):
        loss = sharded_lm_loss(tuned, next(batches).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        all_reduce_gradients(tuned.parameters())
        optimizer.step()
        if budget.due(step):
            log.append({"step": step, "forget_loss": logged(loss)})
    base = {k: v.detach().clone() for k, v in hf_state_dict(model).items()}
    tuned_state = tuned.state_dict()
    vector = {k: tuned_state[k] - v for k, v in base.items()}
    chosen, best, margin = None, None, None
    for scale in sorted(scales):  # one check per scale, smallest intervention first
        candidate = plain_copy(model, state={k: base[k] - scale * vector[k] for k in base})
        forget_accuracy = accuracy(candidate, forget, tokenizer)
        retain_accuracy = accuracy(candidate, validation_retain, tokenizer)
        log.append({"step": finetune_steps, "scale": scale, "forget_accuracy": forget_accuracy,
                    "retain_accuracy": retain_accuracy})  # fmt: skip
        if budget.reached(forget_accuracy):
            chosen, best = scale, candidate
            break
        if margin is None or retain_accuracy - forget_accuracy > margin:
            chosen, best, margin = scale, candidate, retain_accuracy - forget_accuracy
    used["chosen"] = {"scale": chosen}
    return best, used, log


@dataclass(frozen=True)
class TaskVectorConfig(MethodConfig):
    """``"task_vector"``: fine-tune a copy on the forget facts for ``finetune_steps`` steps (``None``:
    60 or the budget's ``max_steps`` if smaller) and subtract ``scale`` times the task vector, the
    smallest scale of ``scales`` that reaches the forget target."""

    method: ClassVar[str] = "task_vector"
    finetune_steps: int | None = None
    lr: float = 1e-3
    batch_size: int = 16
    scales: tuple[float, ...] = (0.5, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0)

    def __post_init__(self) -> None:
        if self.finetune_steps is not None:  # its upper bound is the budget's max_steps, checked by the method
            check_number("finetune_steps", self.finetune_steps, low=1, integer=True)
        check_number("lr", self.lr)
        check_number("batch_size", self.batch_size, low=1, integer=True)
        scales = self.scales
        if not isinstance(scales, tuple | list) or not scales or any(
            isinstance(v, bool) or not isinstance(v, int | float) or v <= 0 for v in scales
        ):  # fmt: skip
            raise UsageError(f"scales must be positive numbers, got {scales!r}")
        set_field(self, "scales", tuple(scales))
