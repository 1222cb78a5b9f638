"""The budget every method follows and what it spent.

One stopping rule for all (:class:`Budget`): check forget accuracy on the forget prompts a method
was given every ``check_every`` optimizer steps, stop at the first check at or under the target, or
after ``max_steps``. Every result reports its :class:`Compute` (steps, tokens forward and backward,
seconds), counted by :class:`TokenMeter` without help from the methods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from loka.base.checks import check_number

__all__ = ["Budget", "Compute", "TokenMeter", "last_step"]


@dataclass(frozen=True)
class Budget:
    """The stopping rule every method follows: check forget accuracy (the share of answer tokens
    predicted, :attr:`loka.scoring.metrics.FactScores.answer_accuracy`: the first-token accuracy for
    one-token answers; on the forget prompts the method was given) every ``check_every`` optimizer
    steps; stop at the first check where it is at most ``target_forget_accuracy``, or after
    ``max_steps`` steps."""

    target_forget_accuracy: float = 0.1
    check_every: int = 25
    max_steps: int = 500

    def __post_init__(self) -> None:
        check_number("target_forget_accuracy", self.target_forget_accuracy, high=1.0)
        check_number("check_every", self.check_every, low=1, integer=True)
        check_number("max_steps", self.max_steps, low=1, integer=True)

    def due(self, step: int) -> bool:
        """Whether ``step`` (1-based) is a check: every ``check_every`` steps and the last one."""
        return step % self.check_every == 0 or step == self.max_steps

    def reached(self, forget_accuracy: float) -> bool:
        return forget_accuracy <= self.target_forget_accuracy


@dataclass(frozen=True)
class Compute:
    """What a method spent: optimizer steps, tokens through forward passes (padding included,
    checks included), the share of them that built a graph for a backward pass, and wall seconds."""

    steps: int
    forward_tokens: int
    backward_tokens: int
    seconds: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class TokenMeter:
    """Counts the tokens that go through every token-embedding lookup of ``vocab_size`` rows while
    it is open (every model copy a method makes included): a global module forward hook, so the
    count is the same for every method and needs nothing from them."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size, self.forward, self.backward = vocab_size, 0, 0

    def _hook(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings == self.vocab_size and inputs:
            n = int(inputs[0].numel())
            self.forward += n
            if torch.is_grad_enabled():
                self.backward += n

    def __enter__(self) -> TokenMeter:
        self._handle = torch.nn.modules.module.register_module_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()


def last_step(log: Sequence[Mapping[str, float]]) -> int:
    return int(max((entry.get("step", 0) for entry in log), default=0))
