"""``"gradient_ascent"``: ascent on what to forget, descent on what to keep.

Each step pairs a forget batch and a retain batch and minimises
``alpha * (-loss_forget) + (1 - alpha) * loss_retain`` with AdamW over all weights (the literature
also calls this "gradient difference"). The losses are next-token losses over the fact's whole
text (BOS + prompt + target), as in the common baselines (Maini et al. 2024, TOFU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from loka.base.checks import check_number
from loka.data.knowledge import KnowledgeSet
from loka.methods.batches import shuffled_batches
from loka.methods.budget import Budget
from loka.methods.config import MethodConfig
from loka.methods.training import accuracy, train
from loka.models import input_device, plain_copy
from loka.scoring.metrics import sharded_lm_loss

__all__ = ["run_gradient_ascent", "GradientAscentConfig"]


def run_gradient_ascent(
    model: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    tokenizer: Any,
    seed: int,
    progress: bool,
    budget: Budget,
    config: GradientAscentConfig,
) -> tuple[Any, dict[str, Any], list[dict[str, float]]]:
    alpha, batch_size = config.alpha, config.batch_size
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    student = plain_copy(model).train()
    device = input_device(student)
    forget_batches = shuffled_batches(forget, tokenizer, batch_size, generator)
    retain_batches = shuffled_batches(retain, tokenizer, batch_size, generator)

    def step_loss() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        forget_loss = sharded_lm_loss(student, next(forget_batches).to(device))
        retain_loss = sharded_lm_loss(student, next(retain_batches).to(device))
        loss = alpha * -forget_loss + (1 - alpha) * retain_loss
        return loss, {"forget_loss": forget_loss, "retain_loss": retain_loss}

    log = train(
        student.parameters(), step_loss, budget=budget, lr=config.lr, desc="gradient ascent", progress=progress,
        measure=lambda: {"forget_accuracy": accuracy(student, forget, tokenizer)},
    )  # fmt: skip
    return student.eval(), {}, log


@dataclass(frozen=True)
class GradientAscentConfig(MethodConfig):
    """``"gradient_ascent"``: AdamW over all weights on ``alpha * (-loss_forget) + (1 - alpha) *
    loss_retain``, batches of ``batch_size`` forget and retain facts, learning rate ``lr``."""

    method: ClassVar[str] = "gradient_ascent"
    lr: float = 5e-4
    alpha: float = 0.5
    batch_size: int = 16

    def __post_init__(self) -> None:
        check_number("lr", self.lr)
        check_number("alpha", self.alpha, high=1.0)
        check_number("batch_size", self.batch_size, low=1, integer=True)
