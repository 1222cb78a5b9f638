"""Where LOKA edits: choose neurons and heads from attribution, and the controls that test the choice.

*Locate.* Attribution patching (gradient x activation, :func:`attribution.attribute`) on a
corrupted run with the clean activations restored (ROME's denoising: noise on the subject
tokens, or on every prompt token of a fact that names no subject, so no annotation is needed)
scores every component for the forget facts and for the retain facts the method trains on. The
*contrast* (``z(forget importance) - z(retain importance)``, standardised per kind) ranks the
components that carry the forget knowledge and not the retain knowledge; ``contrast=False``
ranks by forget importance alone. Where the components are read (``localize``):

- ``"all"``: every token (the default: on the default testbed it kept more retain at the same
  forget than ``"lookup"``; see the localization table of ``bench/localization.py``);
- ``"output"``: the last prompt token, where the answer is written (output tracing);
- ``"lookup"``: the subject tokens, where the fact is looked up (Guo et al. 2024,
  "Mechanistic unlearning"); needs every fact to name a subject in its prompt;
- ``"exact"``: gradient x activation at every token picks ``4 x size`` candidates, and exact
  activation patching of each candidate (:func:`attribution.patch_components`, on forget and
  retain facts) makes the final choice;
- ``"mask"``: components scored *jointly* by a learned mask (:mod:`attribution.learned_mask`,
  Hard Concrete, ``objective="remove"``): gates over every component, weights frozen, trained so
  that closing them removes the forget facts while a retain term (``MASK_RETAIN`` retain facts,
  sampled with the seed) keeps the others; the ranking is how closed each gate ends. The retain
  term is the contrast (``contrast`` is not applied). Chang et al. (NAACL 2024) measured learned
  masks beating random neurons by two orders of magnitude under ablation. On the planted testbed
  (``docs/deletion.md``) its per-layer top 10% deletes the planted people to the oracle's level,
  but at the answer key's size the default ranking (``"all"``) deletes more of the knowledge and
  less of the shared machinery.

*Controls* (:data:`LOCATIONS`): the same edit on ``"random"`` components (the same count in every
layer), on the ``"least"`` attributed ones (the same count per layer, smallest forget importance),
on the ``"complement"`` (the same count per layer, drawn from the components *not* located: does
the edit need the located ones?), on whole MLP ``"layers"`` (every neuron of the layers holding at
least 5% of the positive attribution: LOKA before components) and on ``"full"`` (every neuron and
head: all attention and MLP weights). Whether the location matters is then a measurement.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch

import attribution
from ablation import AblationMask
from ablation.params import parameter_masks
from ablation.selection import random_like_layers
from loka.base import distributed
from loka.base.errors import UsageError
from loka.data.knowledge import KnowledgeSet
from loka.models import fingerprint, hf_state_dict

__all__ = [
    "COMPONENT_CHOICES",
    "LOCALIZE",
    "LOCATIONS",
    "MASK_DEFAULTS",
    "MASK_RETAIN",
    "Localization",
    "control_mask",
    "count_for_size",
    "locate",
    "owned_parameters",
]

Localize = Literal["all", "output", "lookup", "exact", "mask"]
LOCALIZE: tuple[Localize, ...] = get_args(Localize)
Location = Literal["located", "random", "least", "complement", "layers", "full"]
LOCATIONS: tuple[Location, ...] = get_args(Location)
ComponentChoice = Literal["neurons", "heads", "all"]
COMPONENT_CHOICES: tuple[ComponentChoice, ...] = get_args(ComponentChoice)
logger = logging.getLogger(__name__)
_POSITIONS = {"all": "all", "output": "last", "lookup": "subject", "exact": "all", "mask": "all"}
MASK_RETAIN = 128
"""How many retain facts (sampled with the seed) the learned mask's retain term reads at every step."""
_PATCHING = dict(baseline="corrupt", corruption="noise", direction="denoise")
_SETTINGS = dict(method="grad_x_act", **_PATCHING)
MASK_DEFAULTS = attribution.LearnedMaskConfig(objective="remove", retain_weight=3.0, steps=100)
"""``localize="mask"``'s learned mask: Hard Concrete, "remove", retain weight 3, 100 steps (lr 0.1, sparsity 1)."""


@dataclass(frozen=True)
class Localization:
    """The components an edit may change, how they were chosen, and how many parameters they own."""

    mask: AblationMask
    location: str
    localize: str
    parameters: int
    total_parameters: int
    scores: Any = field(default=None, repr=False, compare=False)  # the contrast scores ranked
    forget_scores: Any = field(default=None, repr=False, compare=False)
    check: Any = field(default=None, repr=False, compare=False)  # attribution.ScoreCheck of the forget scores

    def resized(self, model: Any, size: int | float, components: ComponentChoice = "neurons") -> Localization:
        """The same ranking, another ``size`` (not for ``localize="exact"``, which re-measures)."""
        if self.localize == "exact":
            raise UsageError("an exact localization is re-measured per size; call locate again")
        count = count_for_size(size, _pool(self.forget_scores, components))
        mask = AblationMask.from_scores(self.scores, k=count, kind=components)
        mask = AblationMask.from_components(mask.components, model=model)
        return dataclasses.replace(self, mask=mask, parameters=owned_parameters(model, mask))

    @property
    def parameter_fraction(self) -> float:
        return self.parameters / self.total_parameters

    def to_dict(self) -> dict[str, Any]:
        summary = self.mask.summary()
        return {
            "location": self.location,
            "localize": self.localize,
            "components": summary["total"],
            "neurons_per_layer": (summary.get("neurons") or {}).get("per_layer"),
            "heads_per_layer": (summary.get("heads") or {}).get("per_layer"),
            "parameters": self.parameters,
            "parameter_fraction": round(self.parameter_fraction, 6),
            "score_check": None if self.check is None else {
                "spearman": {k: round(v, 4) for k, v in self.check.spearman.items()},
                "agreement": {k: round(v, 4) for k, v in self.check.agreement.items()},
                "ok": self.check.ok(),
            },
        }  # fmt: skip


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def count_for_size(size: Any, pool: int) -> int:
    """Components for ``size``: a fraction in (0, 1] of the ``pool`` (rounded up) or a count."""
    if isinstance(size, bool) or not isinstance(size, int | float):
        raise UsageError(f"size must be a fraction in (0, 1], a component count, or 'auto'; got {size!r}")
    if isinstance(size, float) and 0 < size <= 1:
        return max(1, math.ceil(size * pool))
    if isinstance(size, int) and 1 <= size <= pool:
        return size
    raise UsageError(f"size must be a fraction in (0, 1] or a count between 1 and {pool}, got {size!r}")


def owned_parameters(model: Any, mask: AblationMask) -> int:
    """How many parameters the mask's components own (:mod:`ablation.params`)."""
    return int(sum(int(m.sum()) for m in parameter_masks(model, mask.neurons, mask.heads).values()))


def total_parameters(model: Any) -> int:
    """The checkpoint's parameters (:func:`loka.models.hf_state_dict`; a tied embedding counts once)."""
    return int(sum({id(t.untyped_storage()): t.numel() for t in hf_state_dict(model).values()}.values()))


def _kinds(components: ComponentChoice) -> tuple[str, ...]:
    return ("neurons", "heads") if components == "all" else (components,)


_SCORED: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_SCORED_MAX = 8
"""The last attributions :func:`_score` computed in this process, by what determines them: LOKA's
location controls (random, least, complement, layers) place themselves by the located ranking of
the same seed, so a control run after its LOKA run (the same worker process) reads the ranking
instead of computing it again; the scores are the same either way (attribution is seeded)."""


def _score(model: Any, knowledge: KnowledgeSet, localize: Localize, components: ComponentChoice, seed: int) -> Any:
    facts = hashlib.sha256(repr(knowledge.facts).encode()).hexdigest()
    key = (fingerprint(model).weights_sha256, facts, localize, components, seed, distributed.world_size())
    return _remembered(key, lambda: attribution.attribute(
        model, knowledge, components=_kinds(components), positions=_POSITIONS[localize], seed=seed,
        progress=False, **_SETTINGS,
    ))  # fmt: skip


def _remembered(key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
    """``_SCORED[key]``, computed by ``compute()`` the first time (the last ``_SCORED_MAX`` are kept)."""
    if key in _SCORED:
        _SCORED.move_to_end(key)
        return _SCORED[key]
    _SCORED[key] = scores = compute()
    while len(_SCORED) > _SCORED_MAX:
        _SCORED.popitem(last=False)
    return scores


def _mask_score(
    model: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    components: ComponentChoice,
    seed: int,
    mask: attribution.LearnedMaskConfig,
) -> Any:
    """The learned "remove" mask's scores (``localize="mask"``), remembered like :func:`_score`'s."""
    facts = hashlib.sha256(repr((forget.facts, retain.facts)).encode()).hexdigest()
    key = (fingerprint(model).weights_sha256, facts, "mask", components, seed, repr(mask))
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(retain), generator=generator)[:MASK_RETAIN].sort().values.tolist()
    sample = KnowledgeSet(tuple(retain.facts[i] for i in rows), name=f"{retain.name} (mask sample)")

    def train() -> Any:
        with distributed.local():  # one mask from every fact's gradient: trained on one process
            return attribution.attribute(
                model, forget, method="learned_mask", components=_kinds(components), retain=sample,
                mask_config=dataclasses.replace(mask, seed=seed), progress=False,
            )  # fmt: skip

    return _remembered(key, train)


def _pool(scores: Any, components: ComponentChoice) -> int:
    return sum(getattr(scores, kind).numel() for kind in _kinds(components))


def _exact_choice(
    model: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    ranked: Any,
    count: int,
    components: ComponentChoice,
    seed: int,
) -> AblationMask:
    """Among the ``4 * count`` best grad x act candidates, the ``count`` with the largest exact
    contrast (standardised forget effect minus standardised retain effect, denoising)."""
    pool = _pool(ranked, components)
    candidates = AblationMask.from_scores(ranked, k=min(pool, 4 * count), kind=components).components
    effects = []
    for knowledge in (forget, retain):
        measured = attribution.patch_components(
            model, knowledge, candidates, positions="all", seed=seed, **_PATCHING
        )  # fmt: skip
        values = measured.effects.double()
        effects.append((values - values.mean()) / values.std().clamp(min=1e-12))
    order = (effects[0] - effects[1]).argsort(descending=True)[:count].tolist()
    return AblationMask.from_components([candidates[i] for i in order], model=model)


def locate(
    model: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    size: int | float,
    localize: Localize = "all",
    components: ComponentChoice = "neurons",
    contrast: bool = True,
    check: int = 10,
    seed: int = 0,
    mask: attribution.LearnedMaskConfig | None = None,
) -> Localization:
    """The ``size`` components (fraction of the pool or count) that carry ``forget`` and not ``retain``.

    ``check`` > 0 first checks the forget scores against exact patching
    (:func:`attribution.validate` with ``k=check``: the top ``check`` and as many
    random components of each kind); a rank correlation under 0.5 is logged as a warning, and the
    check travels in the result's config. ``localize="mask"`` trains ``mask`` (default
    :data:`MASK_DEFAULTS`) and is not checked (its scores are joint, not one component's effect)."""
    check_choice("localize", localize, LOCALIZE)
    check_choice("components", components, COMPONENT_CHOICES)
    if mask is not None and localize != "mask":
        raise UsageError(f"mask= configures localize='mask', got localize={localize!r}")
    if localize == "mask":
        forget_scores = _mask_score(model, forget, retain, components, seed, mask or MASK_DEFAULTS)
        contrast, check = False, 0
    else:
        forget_scores = _score(model, forget, localize, components, seed)
    score_check = None
    if check:
        score_check = attribution.validate(forget_scores, model, forget, k=check, seed=seed)
        if not score_check.ok():
            logger.warning("loka: attribution disagrees with exact patching: %s", score_check.describe())
    ranked = (
        forget_scores.contrast(_score(model, retain, localize, components, seed), kind="difference")
        if contrast
        else forget_scores
    )
    count = count_for_size(size, _pool(forget_scores, components))
    if localize == "exact":
        mask = _exact_choice(model, forget, retain, ranked, count, components, seed)
    else:
        mask = AblationMask.from_scores(ranked, k=count, kind=components)
    mask = AblationMask.from_components(mask.components, model=model)  # the model's fingerprint, zero mode
    return Localization(
        mask, "located", localize, owned_parameters(model, mask), total_parameters(model), ranked, forget_scores,
        score_check,
    )  # fmt: skip


def control_mask(
    model: Any, located: Localization, location: Location, *, seed: int = 0, min_layer_share: float = 0.05
) -> Localization:
    """The control ``location`` for a located set (see the module docstring); ``"located"`` returns it."""
    check_choice("location", location, LOCATIONS)
    if location == "located":
        return located
    mask = located.mask
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor | None] = {"neurons": mask.neurons, "heads": mask.heads}
    used = {k: m for k, m in tensors.items() if m is not None and bool(m.any())}  # kinds with picks to move
    if location in ("random", "complement", "least"):
        move = {
            "random": lambda k, m: random_like_layers(m, generator),
            "complement": lambda k, m: _random_outside(m, generator),
            "least": lambda k, m: _least_per_layer(m, located.forget_scores.importance(k)),
        }[location]
        picked = {k: move(k, used[k]) if k in used else m for k, m in tensors.items()}
    elif location == "layers":
        positive = located.forget_scores.importance("neurons").clamp(min=0).sum(-1)
        share = positive / positive.sum().clamp(min=1e-12)
        layers = [layer for layer in range(len(share)) if share[layer] >= min_layer_share] or [int(share.argmax())]
        neurons = torch.zeros_like(located.forget_scores.neurons, dtype=torch.bool)
        neurons[layers] = True
        picked = {"neurons": neurons, "heads": None}
    else:  # full
        picked = {
            "neurons": torch.ones_like(located.forget_scores.neurons, dtype=torch.bool),
            "heads": torch.ones(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.bool),
        }
    chosen = AblationMask(picked["neurons"], picked["heads"], fingerprint=mask.fingerprint)
    return Localization(
        chosen, location, located.localize, owned_parameters(model, chosen), located.total_parameters,
        located.scores, located.forget_scores, located.check,
    )  # fmt: skip


def _random_outside(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """In every layer, as many components as ``mask`` has there, at random among those it does not have."""
    out = torch.zeros_like(mask)
    for layer, count in enumerate(mask.sum(-1).tolist()):
        free = (~mask[layer]).nonzero().flatten()
        if count > len(free):
            raise UsageError(f"layer {layer} has only {len(free)} components outside the located set, {count} needed")
        out[layer, free[torch.randperm(len(free), generator=generator)[:count]]] = True
    return out


def _least_per_layer(mask: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """In every layer, as many components as ``mask`` has there, with the smallest |forget importance|."""
    out = torch.zeros_like(mask)
    for layer, count in enumerate(mask.sum(-1).tolist()):
        if count:
            out[layer, importance[layer].abs().argsort()[:count]] = True
    return out
