"""Learned masks: score neurons and heads *jointly*, by training a gate per component.

Every other locator here scores a component alone: what happens when this one is patched, or
what its gradient says. Chang et al. (NAACL 2024; code terarachang/MemPi) found that the methods
which score components together are the ones that localise: on planted neurons (GPT-2, 0.1% of
the neurons), Hard Concrete and Slimming reach Recall@0.5% of 94 where one-at-a-time ablation
reaches 91 and integrated gradients 85, and at 1% planted the gap is 87 vs 54 and 50, because
"the individual neuron dropout effect does not reliably predict the collective effect".

**The masked model.** Each component gets a gate ``g`` in ``[0, 1]`` that multiplies its
activation (a neuron's value in ``blocks.{l}.mlp.hook_post``, a head's whole ``z`` in
``blocks.{l}.attn.hook_z``; at the positions of ``positions``, all tokens by default) through
TransformerLens hooks. The model's weights are never changed, and neither are their
``requires_grad`` flags or the train/eval mode: gradients are taken with ``torch.autograd.grad``
with respect to the mask parameters only, and an Adam optimizer steps those alone.

**Two gates** (``LearnedMaskConfig.kind``):

- ``"hard_concrete"`` (Louizos et al. 2018, L0 regularisation): each gate has a parameter
  ``log_alpha``. In training, a gate is a stretched, clipped sample of a binary concrete variable
  with temperature ``beta`` and stretch ``(gamma, zeta)`` (default ``2/3`` and ``(-0.1, 1.1)``)::

      u ~ U(0, 1);  s = sigmoid((log u - log(1 - u) + log_alpha) / beta)
      g = clip(s * (zeta - gamma) + gamma, 0, 1)

  so a gate is exactly 0 or exactly 1 with positive probability, and the expected number of
  gates that are not 0 (the L0 norm) is differentiable::

      P(g != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta))
      P(g != 1) = sigmoid(beta * log((1 - gamma) / (zeta - 1)) - log_alpha)

  One noise draw ``u`` per gate and step, shared by every fact of the step (as Chang et al. do).
  After training, the deterministic gate is ``clip(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``.
- ``"slimming"`` (network slimming, Liu et al. 2017, as Chang et al. use it): a continuous
  coefficient ``m`` per component, the gate is ``clip(m, 0, 1)`` and the penalty is L1.

**Two objectives** (``LearnedMaskConfig.objective``), both over the mean per-fact metric ``M``
of :func:`attribution.attribute` (the target's log-probability, :mod:`attribution.metric`):

- ``"keep"`` (default; Chang et al.'s ``hard_concrete`` and ``slim``): find the fewest
  components that still produce the facts::

      loss = -mean_f M_f(masked) + sparsity * (share of gates on)

  with the share of gates on ``mean P(g != 0)`` (Hard Concrete) or ``mean |m|`` (Slimming), the
  mean over every masked component (Chang et al. also normalise by the count, so ``sparsity``
  means the same on a model of any size). Gates start half open (Hard Concrete: deterministic
  gate 0.5, Chang et al.'s ``mask_p``) or open (Slimming: ``m = 1``), and the ones the facts
  need stay open. Score: how open the gate ends, ``sigmoid(log_alpha)`` (Chang et al.'s
  reading; the clipped gate would tie every closed component at 0) or ``m``.
- ``"remove"`` (an unlearning reading): find the fewest components whose removal destroys the
  facts, optionally sparing a retain set::

      loss = mean_f -log(1 - p_f(masked)) + sparsity * (share of gates off)
             + retain_weight * mean_r NLL_r(masked)

  with ``p_f = exp(M_f)`` the target's probability (for ``metric="logit_diff"`` the term is
  ``M_f`` itself), the share of gates off ``mean P(g != 1)`` or ``mean |1 - m|``, and gates
  starting open. ``-log(1 - p)`` rather than ``M``: on facts the model is sure of, ``M`` is
  flat (:func:`forget_term`). Score: how closed the gate ends, ``1 - sigmoid(log_alpha)`` or
  ``1 - m``.

Either way a higher score means "more responsible for these facts". Scores are returned in the
``direction="ablate"`` convention of :mod:`attribution.scores` (the stored value is ``-score``,
:meth:`~attribution.scores.AttributionScores.importance` is the score), so that ``top``,
``contrast`` and ablation masks read them like every other method's.

**Cost.** ``steps`` full passes over the facts (a forward and a backward per batch per step),
plus one over the retain facts per step when ``retain_weight > 0``. The mask is one for the whole
set (Chang et al. learn one per memorised sequence): every step sums the gradients of all
batches before the optimizer steps. Not available under ``torch.distributed`` (a UsageError):
run it on one process.

**Defaults** (200 steps, Adam lr 0.1, sparsity 1) were only looked at on the tiny testbed (30
facts the model is sure of, log-probability -0.010; 2 layers x 256 neurons + 8 heads): "keep"
ends with 33% of the Hard Concrete gates open and the facts kept under the final mask (-0.023);
"remove" closes 13% of the gates at least partly and takes the facts to -7.0. Chang et al.
tuned steps (up to 4000, with early stopping), lr and sparsity per model; their values do not
transfer directly (their loss is a per-token mean over a memorised sequence). Tune ``sparsity``
against recall on planted neurons (:func:`attribution.recall.recall_at_k`) before trusting a
ranking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from attribution.baselines import Setup
from attribution.runs import forward
from loka.base import distributed
from loka.base.components import ComponentShapes, Kind, hook_name
from loka.base.errors import UsageError

__all__ = [
    "LearnedMaskConfig",
    "LearnedMaskKind",
    "LEARNED_MASK_KINDS",
    "MaskObjective",
    "MASK_OBJECTIVES",
    "MaskParameters",
    "MaskTraining",
    "hard_concrete_gate",
    "deterministic_gate",
    "probability_open",
    "probability_not_full",
    "objective_gradients",
    "forget_term",
    "LossParts",
    "train_mask",
    "NOISE_CLAMP",
]

LearnedMaskKind = Literal["hard_concrete", "slimming"]
LEARNED_MASK_KINDS: tuple[LearnedMaskKind, ...] = get_args(LearnedMaskKind)
MaskObjective = Literal["keep", "remove"]
MASK_OBJECTIVES: tuple[MaskObjective, ...] = get_args(MaskObjective)
NOISE_CLAMP = (1e-4, 1 - 1e-4)
"""The uniform noise is clamped into this range (as Chang et al. do) so that its logit is finite."""


def _finite(name: str, value: Any, *, low: float | None = None, above: float | None = None, what: str) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value >= low
    if ok and above is not None:
        ok = value > above
    if not ok:
        raise UsageError(f"LearnedMaskConfig: {name} must be {what}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class LearnedMaskConfig:
    """How a mask is learned; every field is checked at construction (a ValueError naming what
    is allowed). See the module docstring for the objectives.

    Attributes:
        kind: ``"hard_concrete"`` (L0, stochastic gates) or ``"slimming"`` (L1, continuous).
        objective: ``"keep"`` (Chang et al.: the fewest gates that keep the facts) or
            ``"remove"`` (the fewest gates whose closing removes them).
        steps: optimizer steps (each a full pass over the facts).
        lr: Adam's learning rate on the mask parameters.
        sparsity: weight of the sparsity penalty (a share of gates, in ``[0, 1]``).
        retain_weight: weight of the retain set's NLL (``objective="remove"`` only; 0: no term).
        temperature: Hard Concrete's ``beta`` (``> 0``; Louizos et al. use 2/3).
        stretch: Hard Concrete's ``(gamma, zeta)``, ``gamma < 0`` and ``zeta > 1``.
        init: the initial (deterministic) gate of every component, in ``(0, 1]``; ``None``:
            0.5 for Hard Concrete with ``"keep"`` (Chang et al.'s ``mask_p``), else 1.
        seed: seeds the Hard Concrete noise (Slimming has none).
    """

    kind: LearnedMaskKind = "hard_concrete"
    objective: MaskObjective = "keep"
    steps: int = 200
    lr: float = 0.1
    sparsity: float = 1.0
    retain_weight: float = 0.0
    temperature: float = 2 / 3
    stretch: tuple[float, float] = (-0.1, 1.1)
    init: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in LEARNED_MASK_KINDS:
            raise UsageError(
                f"LearnedMaskConfig: unknown kind {self.kind!r}; use one of {', '.join(map(repr, LEARNED_MASK_KINDS))}"
            )
        if self.objective not in MASK_OBJECTIVES:
            raise UsageError(
                f"LearnedMaskConfig: unknown objective {self.objective!r}; use one of "
                f"{', '.join(map(repr, MASK_OBJECTIVES))}"
            )
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise UsageError(f"LearnedMaskConfig: steps must be an integer at least 1, got {self.steps!r}")
        _finite("lr", self.lr, above=0, what="a finite number greater than 0")
        _finite("sparsity", self.sparsity, low=0, what="a finite number at least 0")
        _finite("retain_weight", self.retain_weight, low=0, what="a finite number at least 0")
        if self.retain_weight > 0 and self.objective != "remove":
            raise UsageError(
                "LearnedMaskConfig: retain_weight applies to objective='remove' (a retain term would make "
                "objective='keep' keep the retain facts' components too); set it to 0 or use objective='remove'"
            )
        _finite("temperature", self.temperature, above=0, what="a finite number greater than 0 (Hard Concrete's beta)")
        stretch = self.stretch
        if (
            not isinstance(stretch, tuple | list)
            or len(stretch) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in stretch)
            or not (stretch[0] < 0 and stretch[1] > 1)
        ):
            raise UsageError(
                f"LearnedMaskConfig: stretch must be (gamma, zeta) with gamma < 0 and zeta > 1, got {stretch!r}"
            )
        object.__setattr__(self, "stretch", (float(stretch[0]), float(stretch[1])))
        if self.init is not None:
            _finite("init", self.init, above=0, what="None or a number in (0, 1] (the initial gate)")
            if self.init > 1:
                raise UsageError(
                    f"LearnedMaskConfig: init must be None or a number in (0, 1] (the initial gate), got {self.init!r}"
                )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise UsageError(f"LearnedMaskConfig: seed must be an integer, got {self.seed!r}")

    @property
    def initial_gate(self) -> float:
        """The deterministic gate every component starts at."""
        if self.init is not None:
            return float(self.init)
        return 0.5 if (self.kind == "hard_concrete" and self.objective == "keep") else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (for result metadata), with the initial gate resolved."""
        return asdict(self) | {"stretch": list(self.stretch), "init": self.initial_gate}


# ----------------------------------------------------------------------------------------------
# Hard Concrete


def hard_concrete_gate(log_alpha: Tensor, u: Tensor, *, beta: float, gamma: float, zeta: float) -> Tensor:
    """A stretched, clipped binary concrete sample for uniform noise ``u`` (Louizos et al. 2018)."""
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    return (s * (zeta - gamma) + gamma).clamp(0.0, 1.0)


def deterministic_gate(log_alpha: Tensor, *, gamma: float, zeta: float) -> Tensor:
    """The test-time gate of Hard Concrete: ``clip(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``."""
    return (torch.sigmoid(log_alpha) * (zeta - gamma) + gamma).clamp(0.0, 1.0)


def probability_open(log_alpha: Tensor, *, beta: float, gamma: float, zeta: float) -> Tensor:
    """``P(g != 0)`` of a Hard Concrete gate: its expected contribution to the L0 norm."""
    return torch.sigmoid(log_alpha - beta * math.log(-gamma / zeta))


def probability_not_full(log_alpha: Tensor, *, beta: float, gamma: float, zeta: float) -> Tensor:
    """``P(g != 1)`` of a Hard Concrete gate: the probability that it removes anything."""
    return torch.sigmoid(beta * math.log((1 - gamma) / (zeta - 1)) - log_alpha)


class MaskParameters:
    """The trainable mask: one float32 tensor ``[n_layers, width]`` per component kind
    (``log_alpha`` for Hard Concrete, the coefficient ``m`` for Slimming), and what is read from it.

    Mutable on purpose (the optimizer steps it); nothing here touches a model.
    """

    def __init__(self, config: LearnedMaskConfig, shapes: ComponentShapes, kinds: Sequence[Kind], device: Any) -> None:
        self.config = config
        self.kinds = tuple(kinds)
        gate = config.initial_gate
        gamma, zeta = config.stretch
        if config.kind == "hard_concrete":
            # The deterministic gate is sigmoid(log_alpha) * (zeta - gamma) + gamma (below 1).
            p = (gate - gamma) / (zeta - gamma)
            value = math.log(p / (1 - p))
        else:
            value = gate
        self.params: dict[Kind, Tensor] = {
            kind: torch.full(shapes.shape(kind), value, dtype=torch.float32, device=device, requires_grad=True)
            for kind in self.kinds
        }

    @property
    def tensors(self) -> list[Tensor]:
        return [self.params[kind] for kind in self.kinds]

    def n_gates(self) -> int:
        return sum(p.numel() for p in self.tensors)

    def noise(self, generator: torch.Generator) -> dict[Kind, Tensor] | None:
        """One uniform draw per gate (Hard Concrete; None for Slimming), from ``generator`` (CPU)."""
        if self.config.kind != "hard_concrete":
            return None
        low, high = NOISE_CLAMP
        return {
            kind: torch.rand(p.shape, generator=generator).clamp(low, high).to(p.device)
            for kind, p in self.params.items()
        }

    def gates(self, noise: dict[Kind, Tensor] | None) -> dict[Kind, Tensor]:
        """Training gates (Hard Concrete: sampled with ``noise``; Slimming: ``clip(m, 0, 1)``),
        in the autograd graph of the parameters."""
        config = self.config
        gamma, zeta = config.stretch
        if config.kind == "hard_concrete":
            if noise is None:
                raise ValueError("hard concrete gates need noise (MaskParameters.noise)")
            return {
                kind: hard_concrete_gate(p, noise[kind], beta=config.temperature, gamma=gamma, zeta=zeta)
                for kind, p in self.params.items()
            }
        return {kind: p.clamp(0.0, 1.0) for kind, p in self.params.items()}

    def final_gates(self) -> dict[Kind, Tensor]:
        """The deterministic gates (no noise, no graph)."""
        gamma, zeta = self.config.stretch
        with torch.no_grad():
            if self.config.kind == "hard_concrete":
                return {kind: deterministic_gate(p, gamma=gamma, zeta=zeta) for kind, p in self.params.items()}
            return {kind: p.clamp(0.0, 1.0) for kind, p in self.params.items()}

    def penalty(self) -> Tensor:
        """The sparsity penalty (unweighted): the mean over every gate of ``P(g != 0)`` / ``|m|``
        (objective ``"keep"``) or ``P(g != 1)`` / ``|1 - m|`` (``"remove"``)."""
        config = self.config
        gamma, zeta = config.stretch
        total = torch.zeros((), device=self.tensors[0].device)
        for p in self.tensors:
            if config.kind == "hard_concrete":
                reader = probability_open if config.objective == "keep" else probability_not_full
                total = total + reader(p, beta=config.temperature, gamma=gamma, zeta=zeta).sum()
            elif config.objective == "keep":
                total = total + p.abs().sum()
            else:
                total = total + (1 - p).abs().sum()
        return total / self.n_gates()

    def scores(self) -> dict[Kind, Tensor]:
        """Higher = more responsible: how open (``"keep"``) or how closed (``"remove"``) each
        gate ends, as ``sigmoid(log_alpha)`` or ``m`` (see the module docstring); float32, CPU."""
        with torch.no_grad():
            out = {}
            for kind, p in self.params.items():
                value = torch.sigmoid(p) if self.config.kind == "hard_concrete" else p.clone()
                out[kind] = (value if self.config.objective == "keep" else 1 - value).float().cpu()
            return out


# ----------------------------------------------------------------------------------------------
# The masked model


def _gate_hooks(gates: dict[Kind, Tensor], mask: Tensor) -> list[tuple[str, Any]]:
    """Hooks that multiply every component's activation by its gate at the masked positions."""
    hooks = []
    for kind, gate in gates.items():
        for layer in range(gate.shape[0]):

            def apply(activation: Tensor, hook: Any, g: Tensor = gate[layer]) -> Tensor:
                where = mask.to(activation.device).view(*mask.shape, *[1] * (activation.ndim - 2))
                value = g.to(activation.device, activation.dtype)  # a layer may sit on another GPU
                if activation.ndim == 4:  # hook_z: [row, pos, head, d_head]
                    value = value[:, None]
                return activation * torch.where(where, value, torch.ones_like(value))

            hooks.append((hook_name(kind, layer), apply))
    return hooks


@dataclass(frozen=True)
class LossParts:
    """One step's loss and its terms (means over facts; the penalty unweighted)."""

    loss: float
    forget_term: float
    """The forget term of the loss (see :func:`forget_term`), mean over facts."""
    forget_metric: float
    """The mean metric of the forget facts under the step's gates."""
    penalty: float
    retain_nll: float | None


LOG_PROB_CEILING = -1e-6
"""``log p`` is read as at most this in ``-log(1 - p)``, so that a target of probability 1 (in
float) gives a large but finite loss."""


def forget_term(values: Float[Tensor, " fact"], objective: MaskObjective, metric: str) -> Float[Tensor, " fact"]:
    """The forget term of every fact, from its metric ``M`` under the masked model.

    - ``"keep"``: ``-M`` (the target's NLL for ``"log_prob"``: Chang et al.'s LM loss).
    - ``"remove"`` with ``"log_prob"``: ``-log(1 - p)``, ``p = exp(M)`` the target's probability
      (the ``log(1 - p)`` forget loss of Guo et al. 2025). Minimising ``M`` itself stalls on facts
      the model is sure of (its slope in the logits is ``1 - p``, near 0), and has no floor;
      ``-log(1 - p)`` pushes hardest while the fact is known and falls to 0 once it is gone, so
      the sparsity penalty decides how few gates it takes.
    - ``"remove"`` with ``"log_odds"``: ``softplus(M)``, which is ``-log(1 - p)`` again where the
      target is one token (``log(1 + p / (1 - p))``), and falls to 0 once the odds are gone.
    - ``"remove"`` with ``"logit_diff"``: ``M`` (the logit difference; no floor).
    """
    if objective == "keep":
        return -values
    if metric == "log_prob":
        return -torch.log(-torch.expm1(values.clamp(max=LOG_PROB_CEILING)))
    if metric == "log_odds":
        return torch.nn.functional.softplus(values)
    return values


def objective_gradients(
    model: Any,
    mask: MaskParameters,
    forget: Sequence[Setup],
    retain: Sequence[Setup],
    noise: dict[Kind, Tensor] | None,
) -> tuple[LossParts, list[Tensor]]:
    """The loss of the module docstring for one noise draw, and its gradient with respect to
    ``mask.tensors`` (summed over the batches of ``forget`` and ``retain``, one backward each)."""
    config = mask.config
    n_forget = sum(s.n_facts for s in forget)
    n_retain = sum(s.n_facts for s in retain)
    grads = [torch.zeros_like(p) for p in mask.tensors]
    forget_sum, term_sum, retain_sum = 0.0, 0.0, 0.0

    def add(term: Tensor) -> None:
        for total, grad in zip(grads, torch.autograd.grad(term, mask.tensors), strict=True):
            total += grad

    for setup in forget:
        hooks = _gate_hooks(mask.gates(noise), setup.mask)
        values = forward(model, setup.base, setup.targets, hooks=hooks, grad=True)[0]
        terms = forget_term(values, config.objective, setup.targets.metric)
        add(terms.sum() / n_forget)
        forget_sum += values.detach().sum().item()
        term_sum += terms.detach().sum().item()
    use_retain = config.retain_weight > 0 and n_retain > 0
    if use_retain:
        for setup in retain:
            hooks = _gate_hooks(mask.gates(noise), setup.mask)
            values = forward(model, setup.base, setup.targets, hooks=hooks, grad=True)[0]
            add(-config.retain_weight * values.sum() / n_retain)
            retain_sum += values.detach().sum().item()
    penalty = mask.penalty()
    add(config.sparsity * penalty)
    retain_nll = -retain_sum / n_retain if use_retain else None
    loss = term_sum / n_forget + config.sparsity * penalty.item()
    if retain_nll is not None:
        loss += config.retain_weight * retain_nll
    return LossParts(loss, term_sum / n_forget, forget_sum / n_forget, penalty.item(), retain_nll), grads


@torch.no_grad()
def _masked_metric(model: Any, gates: dict[Kind, Tensor], setups: Sequence[Setup]) -> float:
    total = sum(forward(model, s.base, s.targets, hooks=_gate_hooks(gates, s.mask))[0].sum().item() for s in setups)
    return total / sum(s.n_facts for s in setups)


@dataclass(frozen=True, eq=False)  # holds tensors: compare fields, not objects
class MaskTraining:
    """A trained mask: the scores (higher = more responsible), the deterministic gates, and how
    the training went (JSON-ready in :meth:`summary`)."""

    scores: dict[Kind, Float[Tensor, "n_layers unit"]]
    gates: dict[Kind, Float[Tensor, "n_layers unit"]]
    first: LossParts
    last: LossParts
    forget_metric_masked: float
    retain_metric_masked: float | None

    def summary(self) -> dict[str, Any]:
        gates = torch.cat([g.flatten() for g in self.gates.values()])
        return {
            "first_step": asdict(self.first),
            "last_step": asdict(self.last),
            "gates_open": float((gates > 0).float().mean()),
            "gates_full": float((gates >= 1).float().mean()),
            "forget_metric_masked": self.forget_metric_masked,
            "retain_metric_masked": self.retain_metric_masked,
        }


def train_mask(
    model: Any,
    forget: Sequence[Setup],
    retain: Sequence[Setup],
    kinds: Sequence[Kind],
    config: LearnedMaskConfig,
    *,
    progress: bool = False,
) -> MaskTraining:
    """Learn a mask over ``kinds`` on the facts of ``forget`` (zero-baseline ablation setups, one
    per batch) and ``retain``; see the module docstring. Deterministic for a config's seed."""
    if distributed.active():
        raise UsageError(
            "method='learned_mask' does not run under torch.distributed (one mask is trained from every "
            "fact's gradient); run it on one process, e.g. inside loka.base.distributed.local()"
        )
    if not forget:
        raise UsageError("the learned mask needs at least one fact")
    device = forget[0].base.input_ids.device
    mask = MaskParameters(config, ComponentShapes.of(model), kinds, device)
    optimizer = torch.optim.Adam(mask.tensors, lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    first = last = None
    for _ in tqdm(range(config.steps), disable=not progress, desc="learned mask", leave=False):
        parts, grads = objective_gradients(model, mask, forget, retain, mask.noise(generator))
        if not all(torch.isfinite(g).all() for g in grads) or not math.isfinite(parts.loss):
            raise UsageError(
                "the learned mask's loss or gradient is not finite (a target the masked model gives probability 0?); "
                "lower lr or sparsity, or check the facts"
            )
        first = parts if first is None else first
        last = parts
        for p, g in zip(mask.tensors, grads, strict=True):
            p.grad = g
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert first is not None and last is not None
    gates = mask.final_gates()
    return MaskTraining(
        scores=mask.scores(),
        gates={kind: g.float().cpu() for kind, g in gates.items()},
        first=first,
        last=last,
        forget_metric_masked=_masked_metric(model, gates, forget),
        retain_metric_masked=_masked_metric(model, gates, retain) if retain else None,
    )
