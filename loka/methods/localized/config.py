"""LOKA's options (:class:`LokaConfig`) and the sizes its ``size="auto"`` tries."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

from attribution import LearnedMaskConfig
from loka.base.checks import check_number
from loka.base.errors import UsageError
from loka.methods.config import MethodConfig, set_field
from loka.methods.localized.localization import (
    COMPONENT_CHOICES,
    LOCALIZE,
    LOCATIONS,
    MASK_DEFAULTS,
    ComponentChoice,
    Localize,
    Location,
    check_choice,
    count_for_size,
)
from loka.scoring.objectives import OBJECTIVES, Objective

__all__ = ["SIZES", "LRS", "LokaConfig"]


SIZES: tuple[float, ...] = (0.0025, 0.005, 0.01, 0.02, 0.05, 0.1)
"""The sizes (fractions of the component pool) that LOKA's ``size="auto"`` tries, smallest first."""

LRS: tuple[float, ...] = (3e-3, 1e-2, 3e-2)
"""The learning rates that LOKA's ``lr="auto"`` tries for each size, smallest first (the default
1e-2 and a factor of about 3 on either side)."""


@dataclass(frozen=True)
class LokaConfig(MethodConfig):
    """``"loka"``: locate ``size`` components (``components``, ``localize``, ``contrast``), move them
    (``location``, ``location_seed``) and edit them (``edit``: ``objective``, ``beta``, ``lr``,
    ``retain_weight``, ``batch_size``; ``ablate_mode``; or the rewrite's ``max_layers`` and
    ``lams``); ``size="auto"`` tries ``sizes`` until validation retain stays at least
    ``retain_floor`` x the original's; ``lr="auto"`` (a fine-tuning edit) tries each of ``lrs`` at
    each size the same way (every try's steps count in the compute), so that a location control
    gets a learning rate of its own, chosen on validation like LOKA's. ``min_layer_share`` is the
    ``"layers"`` control's share of a layer; ``check_scores`` the number of candidates attribution
    re-measures exactly.
    Erasure (:mod:`loka.methods.localized.erasure`): ``erase="subject"`` also locates the forget people's names and
    pulls their whole texts to the likelihood of strangers' (``subject_weight``; the budget's
    check then also waits for the gap to be within ``subject_tolerance`` nats per token);
    ``"answer"`` edits the answers only; ``"auto"`` (default) is ``"subject"`` for a fine-tuning
    edit given ``reference`` people with names of two or more words. ``adversary_weight`` adds
    the forget loss at weights one adversarial fine-tuning step away (``adversary_lr`` per
    weight; ``None``, the default: 1.0 for a fine-tuning edit, 0 otherwise; 0 turns it off), on
    steps 1, 1 + ``adversary_every``, ... (default 4; 1: every step. On the default testbed, 3
    seeds, every fourth step halved LOKA's seconds and left every column of the comparison
    within its interval of every step's, validation-chosen retain included).
    ``reinit`` in (0, 1] shrink-perturbs the located parameters after the edit and repairs them
    by distillation (off by default: it did not lower relearning on the testbed).
    ``share`` (default True): the edited model holds new tensors only for the weights the edit
    changes and shares every other one with the input model (same storage, frozen;
    :func:`loka.models.copies.shared_copy`), so an edit of 5% of the neurons costs their layers'
    tensors, not a second model; call :func:`loka.models.copies.materialize` on the result before
    writing its weights in place. False copies the whole model.
    ``localize="mask"`` ranks by a learned mask (:data:`loka.methods.localized.localization.MASK_DEFAULTS`)
    with ``mask_retain_weight``, ``mask_sparsity`` and ``mask_steps``; with ``edit="ablate"`` it
    is LOKA that deletes: the located components are switched off (baked), nothing is trained."""

    method: ClassVar[str] = "loka"
    edit: Literal["finetune", "ablate", "rewrite"] = "finetune"
    size: float | int | Literal["auto"] = 0.05
    localize: Localize = "all"
    components: ComponentChoice = "neurons"
    contrast: bool = True
    location: Location = "located"
    location_seed: int | None = None
    objective: Objective = "auto"
    beta: float = 0.1
    ablate_mode: Literal["zero", "mean"] = "mean"
    retain_floor: float = 0.95
    lr: float | Literal["auto"] = 1e-2
    lrs: tuple[float, ...] = LRS
    retain_weight: float = 3.0
    batch_size: int = 64
    sizes: tuple[float, ...] = SIZES
    min_layer_share: float = 0.05
    check_scores: int = 10
    max_layers: int = 2
    lams: tuple[float, ...] = (10.0, 3.0, 1.0, 0.3, 0.1)
    erase: Literal["auto", "answer", "subject"] = "auto"
    subject_weight: float = 1.0
    subject_tolerance: float = 0.05
    reinit: float = 0.0
    adversary_weight: float | None = None
    adversary_lr: float = 3e-3
    adversary_every: int = 4
    share: bool = True
    mask_retain_weight: float = 3.0
    mask_sparsity: float = 1.0
    mask_steps: int = 100

    def __post_init__(self) -> None:
        check_choice("edit", self.edit, ("finetune", "ablate", "rewrite"))
        check_choice("erase", self.erase, ("auto", "answer", "subject"))
        check_number("subject_weight", self.subject_weight)
        check_number("subject_tolerance", self.subject_tolerance)
        check_number("reinit", self.reinit, high=1.0)
        if self.adversary_weight is not None:
            check_number("adversary_weight", self.adversary_weight)
        check_number("adversary_lr", self.adversary_lr)
        check_number("adversary_every", self.adversary_every, low=1, integer=True)
        check_choice("objective", self.objective, OBJECTIVES)
        check_choice("ablate_mode", self.ablate_mode, ("zero", "mean"))
        check_choice("location", self.location, LOCATIONS)
        check_choice("localize", self.localize, LOCALIZE)
        check_choice("components", self.components, COMPONENT_CHOICES)
        for flag in ("contrast", "share"):
            if not isinstance(getattr(self, flag), bool):
                raise UsageError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.location_seed is not None:
            check_number("location_seed", self.location_seed, integer=True)
        check_number("beta", self.beta, low=1e-6)
        check_number("retain_floor", self.retain_floor, high=1.0)
        check_number("min_layer_share", self.min_layer_share, high=1.0)
        if self.lr != "auto":
            check_number("lr", self.lr)
        elif self.edit != "finetune":
            raise UsageError(f"lr='auto' chooses a fine-tuning rate; it works with edit='finetune', got {self.edit!r}")
        check_number("retain_weight", self.retain_weight)
        check_number("batch_size", self.batch_size, low=1, integer=True)
        check_number("max_layers", self.max_layers, low=1, integer=True)
        check_number("check_scores", self.check_scores, integer=True)
        check_number("mask_retain_weight", self.mask_retain_weight)
        check_number("mask_sparsity", self.mask_sparsity)
        check_number("mask_steps", self.mask_steps, low=1, integer=True)
        lams, sizes, lrs = self.lams, self.sizes, self.lrs
        if not isinstance(lrs, tuple | list) or not lrs or any(
            isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < float("inf") for v in lrs
        ) or len(set(lrs)) < len(lrs):  # fmt: skip
            raise UsageError(f"lrs must be distinct positive learning rates, got {lrs!r}")
        if not isinstance(lams, tuple | list) or not lams or any(
            isinstance(v, bool) or not isinstance(v, int | float) or v < 0 for v in lams
        ):  # fmt: skip
            raise UsageError(f"lams must be non-negative numbers, got {lams!r}")
        if not isinstance(sizes, tuple | list) or not sizes or any(
            isinstance(v, bool) or not isinstance(v, float) or not 0 < v <= 1 for v in sizes
        ):  # fmt: skip
            raise UsageError(f"sizes must be fractions in (0, 1], got {sizes!r}")
        set_field(self, "lams", tuple(lams))
        set_field(self, "sizes", tuple(sizes))
        set_field(self, "lrs", tuple(float(v) for v in lrs))
        if self.size != "auto":
            count_for_size(self.size, 1 << 62)  # the type and range check; the pool is known after attribution

    @property
    def mask(self) -> LearnedMaskConfig | None:
        """The learned mask ``localize="mask"`` trains (None for the other localizations)."""
        if self.localize != "mask":
            return None
        return replace(MASK_DEFAULTS, retain_weight=self.mask_retain_weight, sparsity=self.mask_sparsity,
                       steps=self.mask_steps)  # fmt: skip
