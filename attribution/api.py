"""``attribute``: score every MLP neuron and attention head for a KnowledgeSet.

This is the entry point most code needs::

    scores = attribute(model, forget)          # neurons: zero ablation; heads: denoising (log-odds)
    validate(scores, model, forget).describe()  # the top components, checked by exact patching
    exact = attribute(model, forget, method="activation_patching", components="heads")
    denoised = attribute(model, forget, baseline="corrupt")  # both kinds denoising, log-probability
    selective = scores.contrast(attribute(model, retain), kind="ratio")
    selective.top(fraction=0.01, kind="neurons")

It validates every option up front (a ValueError that names what is allowed), walks the facts in
batches, and averages per-fact effects into :class:`~attribution.scores.AttributionScores`.
``method="grad_x_act"`` estimates every component's effect from one backward pass per batch
(:mod:`attribution.gradients`); ``method="activation_patching"`` measures it exactly with batched
patched forwards (:mod:`attribution.patching`). :func:`patch_components` measures chosen
components exactly, per fact.

Three more locators, the ones Chang et al. (NAACL 2024) compare on planted neurons
(:func:`attribution.recall.recall_at_k` scores any of them against a known answer):
``method="integrated_gradients"`` (knowledge neurons, :mod:`attribution.integrated_gradients`),
``method="activation_magnitude"`` (:mod:`attribution.activation_magnitude`) and
``method="learned_mask"`` (Hard Concrete / Slimming masks trained with the weights frozen,
:mod:`attribution.learned_mask`). All three start from zero ablation (``baseline="zero"``,
``direction="ablate"``, the defaults for them) and return scores in its sign convention.

**The defaults differ by kind** (:data:`RECOMMENDED`), because the two kinds answer best to
different questions:

- **neurons: zero ablation read in log-odds** (``baseline="zero", metric="log_odds"``): "what does
  the fact lose without this neuron". The log-odds (:mod:`attribution.metric`) do not saturate on
  facts the model is sure of, so redundant carriers still register, and the first-order estimate
  agrees with exact zero ablation in log-odds. On the planted testbed (neurons trained to hold
  known facts, :mod:`loka.testbed.planted`; ``bench/recall.py``, ``README.md`` has the table) it
  recovers more of the planted neurons at k = r than denoising does: denoising a noise-corrupted
  run credits the first layer's neurons that read the corrupted subject embeddings (restoring
  them restores the name, although zeroing them in the clean run changes nothing).
  :func:`attribution.peeling.peel` with the defaults recovers a little more.
- **heads: denoising a noise-corrupted run, read in log-odds** (``baseline="corrupt"``, ROME's
  noise corruption, ``direction="denoise"``): the gradient is taken on the corrupted run, where
  the answer is unlikely and the metric far from saturation. For heads the first-order estimate
  of *zero* ablation in log-odds disagrees with exact zero ablation (Spearman over all heads 0.13
  and -0.15 on the default testbed's worlds 0 and 1, -0.31 on the tiny one); denoising's agrees
  (log-odds / log-probability: 0.87 / 0.89, 0.99 / 0.99 and 0.95 / 1.0; ``python
  bench/defaults.py`` prints these).

Both kinds are read in log-odds, so :meth:`AttributionScores.top` can rank them together; the
scores' metadata records each kind's settings (``scores.metadata.of_kind("heads")``) and
:func:`validate` checks each kind in its own. **Give any of** ``baseline``, ``direction``,
``metric``, ``corruption``, ``donors`` or ``contrast`` and both kinds use the given settings, with
the former defaults for the rest (``baseline="corrupt"``, ``metric="log_prob"``). Positions:
all tokens (restricting them to the last or the subject tokens did not agree better with exact
patching, and at the last token alone the planted neurons are found less often).

When the first-order estimate fails (and why ``validate`` exists):

- **zero (or mean) ablation of saturated facts.** When the model is sure of a fact
  (log-probability near 0), the log-probability is flat around the clean run: its gradient
  there is near zero whatever removing a component would do, so ``(0 - a) . dM/da`` can be
  small, or of the wrong sign, for a component whose removal costs the fact a lot.
- **large, nonlinear effects.** The estimate is a tangent: ablating a neuron with a large
  activation (GELU and softmax saturate), or a head whose output moves later attention
  patterns, changes the metric by far more (or less) than the tangent predicts.
- **any setting, on a new model or metric.** The rank agreement is a property of the model, the
  facts and the settings, not of the method.

:func:`attribution.validation.validate` is the
check: it measures the top-k components of each kind (and k random ones) exactly, in the settings
recorded in the scores' metadata, and reports the rank correlation and top-k agreement
(:class:`attribution.validation.ScoreCheck`). Run it before trusting an estimate you have not
checked, and prefer ``method="activation_patching"`` where it is affordable.

Data parallel: under an initialized ``torch.distributed`` process group (``torchrun
--nproc_per_node N``), :func:`attribute` and :func:`patch_components` are collectives: every rank
encodes all facts in the same batches, runs a contiguous block of them, and the sums over facts
(float64) and per-fact values are combined so that every rank returns the full result, equal to
the one-process one within float rounding (:mod:`loka.base.distributed`; progress bars on rank 0).

The model is only read: hooks live inside ``model.hooks(...)`` contexts and are gone when a call
returns or raises; weights, ``requires_grad`` flags and the train/eval mode are never touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from attribution.activation_magnitude import SCORE_DESCRIPTION, activation_sizes, output_norms
from attribution.baselines import Baseline, Baselines, Direction
from attribution.checks import check_batch_size, check_knowledge, check_model, finite_or_raise
from attribution.corruption import Corruption, CorruptionKind
from attribution.gradients import grad_x_act
from attribution.integrated_gradients import DEFAULT_STEPS, check_steps, integrated_gradients
from attribution.learned_mask import LearnedMaskConfig, train_mask
from attribution.metric import FactMetric, MetricName
from attribution.patching import all_components, component_plan, patch_effects
from attribution.positions import Positions, check_positions
from attribution.runs import forward
from attribution.scores import AttributionScores, ScoresMetadata, parse_kind
from loka.base import distributed
from loka.base.components import Component, ComponentShapes, Kind, hook_name
from loka.base.distributed import agreed, all_reduce_sum, is_main, merge_rows, shard
from loka.base.errors import UsageError
from loka.data.facts import Fact
from loka.data.knowledge import KnowledgeSet
from loka.models import fingerprint

__all__ = ["AttributionMethod", "ATTRIBUTION_METHODS", "attribute", "patch_components", "ComponentEffects"]

AttributionMethod = Literal[
    "grad_x_act", "activation_patching", "integrated_gradients", "activation_magnitude", "learned_mask"
]
ATTRIBUTION_METHODS: tuple[AttributionMethod, ...] = get_args(AttributionMethod)
ZERO_BASED_METHODS = ("integrated_gradients", "activation_magnitude", "learned_mask")
"""The methods that start from zero ablation only (no corrupted runs, no donors)."""
ComponentKinds = Literal["neurons", "heads"]
_FIELD: dict[Kind, ComponentKinds] = {"neuron": "neurons", "head": "heads"}
RECOMMENDED: dict[Kind, dict[str, str]] = {
    "neuron": {"baseline": "zero", "direction": "ablate", "metric": "log_odds"},
    "head": {"baseline": "corrupt", "direction": "denoise", "metric": "log_odds"},
}
"""The settings :func:`attribute` uses for each kind when none is given (see the module docstring)."""


def default_direction(baseline: str, direction: str | None) -> str:
    """``direction``, or where it is None the default for ``baseline``: ``"denoise"`` for
    ``"corrupt"``, else ``"ablate"`` (validated with the baseline in :class:`Baselines`)."""
    if direction is None:
        return "denoise" if baseline == "corrupt" else "ablate"
    return direction


def _fact_rows(baselines: Baselines, indices: range) -> list[int]:
    """The positions in the knowledge set of the facts of batches ``indices`` (in order)."""
    starts = [0]
    for facts, _ in baselines.batches:
        starts.append(starts[-1] + len(facts))
    return [row for index in indices for row in range(starts[index], starts[index + 1])]


def _cat(parts: list[Tensor], *, dim: int = 0, rows: int = 0) -> Tensor:
    """``torch.cat`` that also takes no parts (a rank with no batches): an empty float tensor
    (``rows`` leading rows when ``dim`` is 1)."""
    if parts:
        return torch.cat(parts, dim=dim)
    return torch.zeros((rows, 0) if dim == 1 else (0,))


def _kinds(components: str | Iterable[str]) -> tuple[Kind, ...]:
    if isinstance(components, str):
        components = (components,)
    components = tuple(components)
    if not components:
        raise UsageError("components is empty; use 'neurons', 'heads' or both")
    kinds: list[Kind] = []
    for value in components:
        if not isinstance(value, str) or value not in ("neurons", "heads", "neuron", "head"):
            hint = (
                " (to patch chosen components, use attribution.patch_components)" if not isinstance(value, str) else ""
            )
            raise UsageError(f"unknown components {value!r}; use 'neurons', 'heads' or both{hint}")
        kind = parse_kind(value)
        if kind not in kinds:
            kinds.append(kind)
    return tuple(kinds)


def _check_zero_based(
    method: str,
    *,
    baseline: str | None,
    direction: str | None,
    corruption: Any,
    donors: Any,
    samples: int,
    seed: int,
    steps: int | None,
    mask_config: Any,
    retain: Any,
    chunk_size: int | None,
) -> None:
    """UsageError for an option ``method`` does not read (the new methods and their own options)."""
    if method not in ZERO_BASED_METHODS:
        for name, value in (("steps", steps), ("mask_config", mask_config), ("retain", retain)):
            if value is not None:
                reader = "integrated_gradients" if name == "steps" else "learned_mask"
                raise UsageError(f"{name} is read by method={reader!r} only, not method={method!r}")
        return
    if baseline not in (None, "zero"):
        raise UsageError(
            f"method={method!r} starts from zero ablation: leave baseline unset or 'zero', not {baseline!r}"
        )
    if direction not in (None, "ablate"):
        raise UsageError(
            f"method={method!r} scores in the 'ablate' direction: leave direction unset, not {direction!r}"
        )
    for name, value in (("corruption", corruption), ("donors", donors)):
        if value is not None:
            raise UsageError(f"{name} is read by the corrupt, mean and resample baselines, not method={method!r}")
    if samples != 1:
        raise UsageError(f"method={method!r} is deterministic given its inputs; samples must be 1, got {samples!r}")
    if steps is not None and method != "integrated_gradients":
        raise UsageError(f"steps is read by method='integrated_gradients' only, not method={method!r}")
    if chunk_size is not None and method != "integrated_gradients":
        raise UsageError(f"chunk_size is read by 'activation_patching' and 'integrated_gradients', not {method!r}")
    if method == "integrated_gradients":
        check_steps(DEFAULT_STEPS if steps is None else steps)
    if method != "learned_mask":
        for name, value in (("mask_config", mask_config), ("retain", retain)):
            if value is not None:
                raise UsageError(f"{name} is read by method='learned_mask' only, not method={method!r}")
        return
    if mask_config is not None and not isinstance(mask_config, LearnedMaskConfig):
        raise UsageError(f"mask_config must be an attribution.LearnedMaskConfig(...), got {type(mask_config).__name__}")
    if seed != 0:
        raise UsageError("the learned mask's seed is LearnedMaskConfig(seed=...); leave attribute's seed at 0")
    config = mask_config or LearnedMaskConfig()
    if retain is not None and not isinstance(retain, KnowledgeSet):
        raise UsageError(f"retain must be a KnowledgeSet (or None), got {type(retain).__name__}")
    if config.retain_weight > 0 and retain is None:
        raise UsageError("mask_config.retain_weight > 0 needs the retain facts: pass retain=<KnowledgeSet>")
    if retain is not None and config.retain_weight == 0:
        raise UsageError("retain is only read with mask_config.retain_weight > 0 (objective='remove')")
    if retain is not None and len(retain) == 0:
        raise UsageError("the retain set is empty")
    if distributed.active():
        raise UsageError(
            "method='learned_mask' does not run under torch.distributed (one mask is trained from every "
            "fact's gradient); run it on one process, e.g. inside loka.base.distributed.local()"
        )


def attribute(
    model: Any,
    knowledge: KnowledgeSet | Sequence[Fact],
    *,
    method: AttributionMethod = "grad_x_act",
    components: ComponentKinds | Iterable[ComponentKinds] = ("neurons", "heads"),
    baseline: Baseline | None = None,
    positions: Positions = "all",
    direction: Direction | None = None,
    corruption: CorruptionKind | Corruption | None = None,
    donors: KnowledgeSet | None = None,
    metric: MetricName | None = None,
    contrast: Mapping[str, str] | None = None,
    samples: int = 1,
    seed: int = 0,
    batch_size: int = 16,
    chunk_size: int | None = None,
    progress: bool = True,
    steps: int | None = None,
    mask_config: LearnedMaskConfig | None = None,
    retain: KnowledgeSet | None = None,
) -> AttributionScores:
    """Score every MLP neuron and/or attention head of ``model`` for the facts of ``knowledge``.

    Args:
        method: ``"grad_x_act"`` (first-order estimate, one backward pass per batch),
            ``"activation_patching"`` (exact, batched patched forwards), or a zero-ablation
            locator: ``"integrated_gradients"`` (``steps`` forwards and backwards per hook and
            batch), ``"activation_magnitude"`` (one forward per batch; no metric involved) or
            ``"learned_mask"`` (``mask_config.steps`` passes over the facts); see the module
            docstring.
        components: ``"neurons"``, ``"heads"`` or both; a kind not asked for is ``None`` in the result.
        baseline: what an activation is replaced with: ``"corrupt"`` (the fact's own run
            with its subject, or its whole prompt, obscured by ``corruption``), ``"zero"``,
            ``"mean"`` (per position class, over ``donors``) or ``"resample"`` (a donor fact's
            run from ``donors``). Default for ``grad_x_act`` and ``activation_patching``: each
            kind's recommended settings when none of baseline, direction, metric, corruption,
            donors and contrast is given (:data:`RECOMMENDED`: neurons ``"zero"`` in log-odds,
            heads ``"corrupt"`` in log-odds; see the module docstring), else ``"corrupt"``. The
            zero-ablation locators take ``"zero"`` only (their default).
        positions: where components are patched / read: ``"all"`` tokens (default), the
            ``"last"`` prompt token, or the ``"subject"`` tokens (every fact must then have a
            subject in its prompt).
        direction: ``"denoise"`` (``baseline="corrupt"`` only; effect = metric(corrupted +
            restored) - metric(corrupted)) or ``"ablate"`` (effect = metric(ablated) -
            metric(clean)). Default: ``"denoise"`` for ``baseline="corrupt"``, else ``"ablate"``.
        corruption: ``"noise"`` (default; Gaussian noise of 3x the embedding std on the
            subject tokens, or on every prompt token after BOS for a fact without a subject in
            its prompt, 10 samples) or ``"subject"`` (another subject of the same token length),
            or a :class:`~attribution.corruption.Corruption` for other settings (its ``span``
            chooses the noised tokens).
        donors: the set ``"mean"`` averages over and ``"resample"`` / ``"subject"`` draw from
            (default: ``knowledge`` itself).
        metric: ``"log_prob"`` (default, but see ``baseline``), ``"log_odds"`` (does not
            saturate on facts the model is sure of: see :mod:`attribution.metric`) or
            ``"logit_diff"`` (default when ``contrast`` is given); ``contrast`` maps every fact
            id to its contrast answer.
        samples: donors per fact for ``"resample"`` (corrupted samples are set in ``corruption``).
        seed: seeds donors, noise and replacement subjects (per fact, independent of batching).
        batch_size: facts per batch. ``chunk_size``: patched copies per forward (exact patching;
            default: a few MiB of activations per forward on CPU, a GiB on GPU; see
            :data:`attribution.patching.CHUNK_BYTES`).
        progress: show tqdm progress bars.
        steps: ``method="integrated_gradients"``: Riemann steps ``m`` (default 20, at least 1).
        mask_config: ``method="learned_mask"``: a :class:`~attribution.learned_mask.LearnedMaskConfig`
            (default ``LearnedMaskConfig()``: Hard Concrete, Chang et al.'s "keep" objective).
        retain: ``method="learned_mask"`` with ``mask_config.retain_weight > 0``: the facts the
            mask must spare.

    Returns:
        :class:`AttributionScores`: effects averaged over facts, with the sign convention of
        ``direction`` (each kind's: ``scores.metadata.of_kind(kind)``) and metadata naming the model.

    Which to use: ``"grad_x_act"`` is cheap enough for every component of a large model, but it
    is a first-order estimate: see the module docstring for when it fails, and check it with
    ``attribution.validate(scores, model, knowledge)``. With ``baseline="zero"`` (``"mean"``) on facts the model
    is sure of, the log-probability is saturated and its gradient at the clean run says little
    about ablating (on the tiny testbed its rank correlation with exact zero-ablation of heads
    is negative); there use ``method="activation_patching"`` or ``metric="logit_diff"``.
    """
    model = check_model(model)
    knowledge = check_knowledge(knowledge)
    if method not in ATTRIBUTION_METHODS:
        raise UsageError(f"unknown method {method!r}; use one of {', '.join(map(repr, ATTRIBUTION_METHODS))}")
    _check_zero_based(
        method, baseline=baseline, direction=direction, corruption=corruption, donors=donors, samples=samples,
        seed=seed, steps=steps, mask_config=mask_config, retain=retain, chunk_size=chunk_size,
    )  # fmt: skip
    kinds = _kinds(components)
    given = (baseline, direction, metric, corruption, donors, contrast)
    if method not in ZERO_BASED_METHODS and all(value is None for value in given):
        # The recommended settings of each kind: one attribution per kind, merged.
        common = dict(method=method, positions=positions, samples=samples, seed=seed, batch_size=batch_size,
                      chunk_size=chunk_size, progress=progress)  # fmt: skip
        parts = {kind: attribute(model, knowledge, components=_FIELD[kind], **common, **RECOMMENDED[kind])
                 for kind in kinds}  # fmt: skip
        return parts[kinds[0]] if len(parts) == 1 else _merged(parts["neuron"], parts["head"])
    if baseline is None:
        baseline = "zero" if method in ZERO_BASED_METHODS else "corrupt"
    positions = check_positions(positions)
    direction = default_direction(baseline, direction)
    batch_size = check_batch_size(batch_size)
    fact_metric = FactMetric.resolve(metric, contrast)
    fact_metric.check(knowledge)
    shapes = ComponentShapes.of(model)
    hooks = tuple(hook_name(kind, layer) for kind in kinds for layer in range(shapes.n_layers))
    baselines = Baselines(
        model,
        knowledge,
        hooks=hooks,
        baseline=baseline,
        direction=direction,
        corruption=corruption,
        donors=donors,
        positions=positions,
        metric=fact_metric,
        seed=seed,
        samples=samples,
        batch_size=batch_size,
        progress=progress and is_main(),
    )
    if method == "learned_mask":
        return _learned_mask_scores(
            model, knowledge, baselines, kinds=kinds, positions=positions, metric=fact_metric,
            config=mask_config or LearnedMaskConfig(), retain=retain, batch_size=batch_size, progress=progress,
        )  # fmt: skip
    steps = DEFAULT_STEPS if steps is None else steps
    plan = component_plan(all_components(shapes, kinds)) if method == "activation_patching" else None

    # Data parallel (loka.base.distributed): this rank runs a contiguous block of the batches; sums
    # over facts are float64 and added across ranks, per-fact values merged back in order.
    mine = shard(baselines.batches)
    shown = progress and is_main()
    totals = {kind: torch.zeros(shapes.shape(kind), dtype=torch.float64) for kind in kinds}
    base_metric, clean_metric = [], []
    with agreed():
        for index in tqdm(mine, disable=not shown, desc=f"attribution ({method})"):
            setup = baselines.setup(*baselines.batches[index])
            if plan is not None:
                effects, base = patch_effects(model, setup, plan, chunk_size=chunk_size, progress=shown)
                finite_or_raise(base, "the unpatched metric", setup.batch.fact_ids)
                offset = 0
                for kind in kinds:
                    size = shapes.shape(kind)[0] * shapes.shape(kind)[1]
                    totals[kind] += effects[offset : offset + size].sum(-1).view(shapes.shape(kind))
                    offset += size
            else:
                if method == "integrated_gradients":
                    by_hook, base = integrated_gradients(model, setup, hooks, steps=steps, chunk_size=chunk_size)
                elif method == "activation_magnitude":
                    by_hook, base = activation_sizes(model, setup, hooks)
                else:
                    by_hook, base = grad_x_act(model, setup, hooks)
                finite_or_raise(base, "the unpatched metric", setup.batch.fact_ids)
                for kind in kinds:
                    per_layer = [by_hook[hook_name(kind, layer)].sum(0) for layer in range(shapes.n_layers)]
                    totals[kind] += torch.stack(per_layer)
            base_metric.append(base)
            clean_metric.append(setup.clean_metric if setup.clean_metric is not None else base)
    totals = {kind: all_reduce_sum(total) for kind, total in totals.items()}
    rows = _fact_rows(baselines, mine)
    base_all = merge_rows(_cat(base_metric), rows, len(knowledge))
    clean_all = merge_rows(_cat(clean_metric), rows, len(knowledge))

    scores = {kind: (total / len(knowledge)).float() for kind, total in totals.items()}
    options = baselines.describe() | ({"chunk_size": chunk_size} if chunk_size else {})
    if method == "activation_magnitude":  # sizes times output norms, in the ablate convention
        scores = {kind: -(totals[kind] / len(knowledge) * output_norms(model, kind)).float() for kind in kinds}
        options = options | {"score": SCORE_DESCRIPTION}
    elif method == "integrated_gradients":
        options = options | {
            "steps": steps,
            "score": "-IG: -(a x mean over alpha=j/steps, j=1..steps, of dM/da at alpha*a), every unit of a hook "
            "scaled together; importance() is IG",
        }
    for kind, values in scores.items():
        finite_or_raise(values, f"the {kind} scores")
    metadata = ScoresMetadata(
        method=method,
        baseline=baseline,
        direction=direction,
        positions=positions,
        metric=fact_metric.name,
        model=fingerprint(model),
        n_facts=len(knowledge),
        knowledge=knowledge.name,
        clean_metric=clean_all.mean().item(),
        base_metric=base_all.mean().item(),
        options=options,
    )
    return AttributionScores(scores.get("neuron"), scores.get("head"), metadata)


def _merged(neurons: AttributionScores, heads: AttributionScores) -> AttributionScores:
    """One :class:`AttributionScores` of neurons and heads scored in different settings: the
    neurons' metadata, with the heads' differing fields in ``metadata.by_kind["head"]``."""
    shared, own = neurons.metadata, heads.metadata
    differ = {
        name: getattr(own, name)
        for name in ("baseline", "direction", "metric", "clean_metric", "base_metric", "options")
        if getattr(own, name) != getattr(shared, name)
    }
    return AttributionScores(neurons.neurons, heads.heads, replace(shared, by_kind={"head": differ} if differ else {}))


def _learned_mask_scores(
    model: Any,
    knowledge: KnowledgeSet,
    baselines: Baselines,
    *,
    kinds: tuple[Kind, ...],
    positions: Positions,
    metric: FactMetric,
    config: LearnedMaskConfig,
    retain: KnowledgeSet | None,
    batch_size: int,
    progress: bool,
) -> AttributionScores:
    """``method="learned_mask"``: train the mask (:func:`attribution.learned_mask.train_mask`)
    and return its scores in the ablate convention (``-score``; ``importance`` is the score)."""
    forget = [baselines.setup(*batch, sources=False) for batch in baselines.batches]
    retain_setups = []
    if retain is not None:
        retain_baselines = Baselines(
            model, retain, hooks=(), baseline="zero", direction="ablate", corruption=None, donors=None,
            positions=positions, metric=FactMetric(), batch_size=batch_size,
        )  # fmt: skip
        retain_setups = [retain_baselines.setup(*batch, sources=False) for batch in retain_baselines.batches]
    with torch.no_grad():
        clean = torch.cat([forward(model, s.base, s.targets)[0].cpu() for s in forget])
    finite_or_raise(clean, "the unpatched metric", knowledge.ids)
    trained = train_mask(model, forget, retain_setups, kinds, config, progress=progress and is_main())
    scores = {kind: -trained.scores[kind] for kind in kinds}
    for kind, values in scores.items():
        finite_or_raise(values, f"the {kind} scores")
    reading = "sigmoid(log_alpha)" if config.kind == "hard_concrete" else "m"
    reading = reading if config.objective == "keep" else f"1 - {reading}"
    metadata = ScoresMetadata(
        method="learned_mask",
        baseline="zero",
        direction="ablate",
        positions=positions,
        metric=metric.name,
        model=fingerprint(model),
        n_facts=len(knowledge),
        knowledge=knowledge.name,
        clean_metric=clean.mean().item(),
        base_metric=clean.mean().item(),
        options={
            "baseline": "zero",
            "direction": "ablate",
            "mask_config": config.to_dict(),
            "retain": None if retain is None else {"name": retain.name, "n_facts": len(retain)},
            "score": f"-({reading}); importance() is {reading}, higher = more responsible",
            "training": trained.summary(),
        },
    )
    return AttributionScores(scores.get("neuron"), scores.get("head"), metadata)


@dataclass(frozen=True, eq=False)  # holds tensors: compare fields, not objects
class ComponentEffects:
    """Exact patching effects of chosen components: ``per_fact[c, f]`` for component ``c`` and
    fact ``f``, ``effects`` their mean over facts; ``base_metric`` is the unpatched run's metric."""

    components: tuple[Component, ...]
    fact_ids: tuple[str, ...]
    per_fact: Float[Tensor, "component fact"]
    base_metric: Float[Tensor, " fact"]

    @property
    def effects(self) -> Float[Tensor, " component"]:
        return self.per_fact.mean(-1)

    def by_label(self) -> dict[str, float]:
        return {c.label: v for c, v in zip(self.components, self.effects.tolist(), strict=True)}


def patch_components(
    model: Any,
    knowledge: KnowledgeSet | Sequence[Fact],
    components: Iterable[Any],
    *,
    baseline: Baseline = "zero",
    positions: Positions = "all",
    direction: Direction = "ablate",
    corruption: CorruptionKind | Corruption | None = None,
    donors: KnowledgeSet | None = None,
    metric: MetricName | None = None,
    contrast: Mapping[str, str] | None = None,
    samples: int = 1,
    seed: int = 0,
    batch_size: int = 16,
    chunk_size: int | None = None,
    progress: bool = False,
) -> ComponentEffects:
    """Exact activation patching of the given components (``("neuron", l, i)``, ``("head", l, h)``
    or labels like ``"L1H3"``), per fact. Options as in :func:`attribute`; a component the
    model does not have is a ValueError."""
    model = check_model(model)
    knowledge = check_knowledge(knowledge)
    shapes = ComponentShapes.of(model)
    chosen = tuple(shapes.check(Component.parse(c)) for c in components)
    if not chosen:
        raise UsageError("no components to patch")
    positions = check_positions(positions)
    batch_size = check_batch_size(batch_size)
    fact_metric = FactMetric.resolve(metric, contrast)
    fact_metric.check(knowledge)
    plan = component_plan(chosen)
    baselines = Baselines(
        model,
        knowledge,
        hooks=plan.hooks,
        baseline=baseline,
        direction=direction,
        corruption=corruption,
        donors=donors,
        positions=positions,
        metric=fact_metric,
        seed=seed,
        samples=samples,
        batch_size=batch_size,
        progress=progress and is_main(),
    )
    mine = shard(baselines.batches)  # data parallel: see attribute
    shown = progress and is_main()
    per_fact, base = [], []
    with agreed():
        for index in tqdm(mine, disable=not shown, desc="patching components"):
            setup = baselines.setup(*baselines.batches[index])
            effects, base_values = patch_effects(model, setup, plan, chunk_size=chunk_size, progress=shown)
            per_fact.append(effects)
            base.append(base_values)
    rows = _fact_rows(baselines, mine)
    result = ComponentEffects(
        chosen,
        knowledge.ids,
        merge_rows(_cat(per_fact, dim=1, rows=len(chosen)), rows, len(knowledge), dim=1),
        merge_rows(_cat(base), rows, len(knowledge)),
    )
    finite_or_raise(result.base_metric, "the unpatched metric", knowledge.ids)
    finite_or_raise(result.per_fact, "the patching effects", knowledge.ids)
    return result
