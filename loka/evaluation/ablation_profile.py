"""The ablation profile: does switching off what a locator found remove the knowledge, and only it?

A fine-tune restricted to located components can succeed without good localization (it routes
around the choice; ``notes/localization.md``), so a locator is judged here by **deletion** alone,
as in Chang et al.'s DEL test (NAACL 2024): no training, only ablation. For each locator's scores
(:class:`attribution.AttributionScores`, or anything with ``.neurons`` / ``.heads`` tensors) and
each k on a grid, the top k% of components **of every layer** are ablated through hooks
(:class:`ablation.AblationMask` + :func:`ablation.ablate`: reversible, the weights never change),
and the forget and retain facts are scored (:func:`loka.scoring.metrics.score_facts`). The control is the
same number of components per layer drawn at random (``n_random`` seeded draws,
:meth:`ablation.AblationMask.random_like`): a locator is worth something where its forget drop
beats the random drop at a small retain drop.

Conventions:

* **k is a percentage** in (0, 100]: a layer of ``width`` components (``d_mlp`` neurons or
  ``n_heads`` heads) gives up ``ceil(k / 100 * width)`` of them (the smallest count that is at
  least k%, so every k > 0 ablates at least one per layer), ranked by the scores' ``importance``
  (larger = carries more of the knowledge; raw values for objects without that method), ties to
  the lower index.
* **Ablation modes**: ``zero`` (the activation becomes 0) and ``mean`` (it becomes the component's
  mean activation over every real token, BOS, prompt and answer, of the ``mean_over`` set: the
  retain facts by default, or the forget facts, or both; :func:`ablation.mean_activations`).
* **Accuracy** is a fact's answer accuracy (the share of its answer tokens predicted top-1 under
  teacher forcing, :attr:`loka.scoring.metrics.FactScores.answer_accuracy`; first-token accuracy for
  one-token answers). A **drop** is accuracy before minus accuracy after, per person (the fact's
  subject; its id when it has none). Intervals are 95% bootstrap intervals over people and, for
  the random control, over draws (:func:`loka.evaluation.intervals.mean_interval`); the exact mean over facts
  of each draw is kept beside them (``forget_accuracy``, ``retain_accuracy``).

>>> profile = ablation_profile(model, forget, retain, {"grad_x_act": scores})   # doctest: +SKIP
>>> print(profile.format())                                                       # doctest: +SKIP
>>> profile.plot().show(); profile.save("out/profile")                            # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from ablation import AblationMask, ablate, mean_activations
from loka.base.checks import check_number
from loka.base.errors import UsageError
from loka.data.knowledge import KnowledgeSet
from loka.evaluation.intervals import Interval, mean_interval, per_person
from loka.models import ModelFingerprint, fingerprint
from loka.scoring.metrics import FactScores, score_facts

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "AblationProfile",
    "ProfileRow",
    "ablation_profile",
    "per_layer_count",
    "top_per_layer",
    "DEFAULT_PERCENTS",
    "RANDOM",
]

logger = logging.getLogger(__name__)

Mode = Literal["zero", "mean"]
MODES: tuple[Mode, ...] = get_args(Mode)
MeanOver = Literal["retain", "forget", "both"]
MEAN_OVER: tuple[MeanOver, ...] = get_args(MeanOver)
Components = Literal["neurons", "heads", "all"]
COMPONENTS: tuple[Components, ...] = get_args(Components)
DEFAULT_PERCENTS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
RANDOM = "random"
"""The name of the random control's rows (no locator may use it)."""
PROFILE_FILE = "ablation_profile.json"
FORMAT = "loka.AblationProfile"
_KINDS = {"neurons": ("neurons",), "heads": ("heads",), "all": ("neurons", "heads")}


# ----------------------------------------------------------------------------- selection


def per_layer_count(percent: float, width: int) -> int:
    """How many of a layer's ``width`` components the top ``percent``% is: the smallest count
    that is at least that share (so at least 1 for any percent > 0)."""
    return min(width, max(1, math.ceil(percent / 100 * width - 1e-9)))


def top_per_layer(importance: Float[Tensor, "n_layers width"], count: int) -> Bool[Tensor, "n_layers width"]:
    """True at the ``count`` most important components of every layer (ties to the lower index)."""
    order = torch.sort(importance.detach().double().cpu(), dim=1, descending=True, stable=True).indices
    mask = torch.zeros(importance.shape, dtype=torch.bool)
    mask.scatter_(1, order[:, :count], True)
    return mask


def _importance(scores: Any, kind: str) -> Tensor:
    """``scores.importance(kind)`` when the object has it (AttributionScores), else ``scores.<kind>``."""
    method = getattr(scores, "importance", None)
    return method(kind) if callable(method) else getattr(scores, kind)


# ----------------------------------------------------------------------------- the result


@dataclass(frozen=True)
class ProfileRow:
    """One locator (or the random control) at one k and one mode.

    ``forget`` / ``retain``: accuracy under the ablation (mean over people, and over draws for the
    control) with its 95% interval; ``forget_drop`` / ``retain_drop``: accuracy before minus after.
    ``forget_accuracy`` / ``retain_accuracy``: each draw's exact mean over facts (one value for a
    locator). ``per_layer``: components ablated in each layer, neurons then heads.
    """

    locator: str
    mode: Mode
    percent: float
    per_layer: tuple[int, ...]
    n_components: int
    forget: Interval
    retain: Interval
    forget_drop: Interval
    retain_drop: Interval
    forget_accuracy: tuple[float, ...]
    retain_accuracy: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("forget", "retain", "forget_drop", "retain_drop"):
            out[name] = getattr(self, name).to_dict()
        out["per_layer"] = list(self.per_layer)
        out["forget_accuracy"] = list(self.forget_accuracy)
        out["retain_accuracy"] = list(self.retain_accuracy)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProfileRow:
        values = dict(data)
        for name in ("forget", "retain", "forget_drop", "retain_drop"):
            values[name] = Interval(**values[name])
        for name in ("per_layer", "forget_accuracy", "retain_accuracy"):
            values[name] = tuple(values[name])
        return cls(**values)


@dataclass(frozen=True)
class AblationProfile:
    """Forget and retain accuracy under ablation of each locator's top k% per layer, and of random
    components of the same per-layer counts (see the module docstring). Build with
    :func:`ablation_profile`; ``.format()``, ``.plot()``, ``.to_json()``, ``.save(dir)``."""

    rows: tuple[ProfileRow, ...]
    base_forget: Interval
    base_retain: Interval
    base_forget_accuracy: float
    base_retain_accuracy: float
    locators: tuple[str, ...]
    percents: tuple[float, ...]
    modes: tuple[Mode, ...]
    components: Components
    n_random: int
    seed: int
    mean_over: MeanOver
    n_forget: int
    n_retain: int
    model: Mapping[str, Any]

    def row(self, locator: str, mode: Mode, percent: float) -> ProfileRow:
        """The row of ``locator`` (or ``"random"``) at ``mode`` and ``percent``."""
        for row in self.rows:
            if (row.locator, row.mode, row.percent) == (locator, mode, float(percent)):
                return row
        raise KeyError(f"no row for locator={locator!r}, mode={mode!r}, percent={percent!r}")

    def forget_at_retain(self, locator: str, mode: Mode, retain: float) -> float | None:
        """``locator``'s (or ``"random"``'s) forget accuracy at the point where its retain accuracy
        first falls to ``retain``, walking k up from 0 (the model before any ablation) and linear
        between the grid's points (exact means over facts, over draws for the control): the
        comparison at matched retain. None when the curve never falls that far."""
        rows = sorted((r for r in self.rows if (r.locator, r.mode) == (locator, mode)), key=lambda r: r.percent)
        if not rows:
            raise KeyError(f"no rows for locator={locator!r}, mode={mode!r}")
        points = [(self.base_retain_accuracy, self.base_forget_accuracy)] + [
            (sum(r.retain_accuracy) / len(r.retain_accuracy), sum(r.forget_accuracy) / len(r.forget_accuracy))
            for r in rows
        ]  # fmt: skip
        for (r0, f0), (r1, f1) in itertools.pairwise(points):
            if r1 <= retain <= r0:
                return f0 if r0 == r1 else f0 + (f1 - f0) * (r0 - retain) / (r0 - r1)
        return None

    def format(self) -> str:
        """A text table, one line per (mode, locator, k)."""
        head = (
            f"ablation profile: {self.n_forget} forget facts, {self.n_retain} retain facts; top k% of "
            f"{self.components} per layer; before: forget {self.base_forget_accuracy:.3f}, "
            f"retain {self.base_retain_accuracy:.3f}; random: {self.n_random} draws"
        )
        width = max(len(name) for name in (*self.locators, RANDOM, "locator"))
        columns = f"{'mode':<5} {'locator':<{width}} {'k%':>6} {'per layer':>12}  {'forget':<20} {'drop':<21} "
        columns += f"{'retain':<20} {'drop':<21}"
        columns = columns.rstrip()
        lines = [head, columns, "-" * len(columns)]
        for r in self.rows:
            per_layer = ",".join(map(str, r.per_layer))
            lines.append(
                f"{r.mode:<5} {r.locator:<{width}} {r.percent:>6g} {per_layer:>12}  {format(r.forget, '.2f'):<20} "
                f"{format(r.forget_drop, '+.2f'):<21} {format(r.retain, '.2f'):<20} {format(r.retain_drop, '+.2f')}"
            )
        return "\n".join(lines)

    def plot(self, *, title: str | None = None) -> go.Figure:
        """Drop vs k (log axis): forget and retain panels (columns), one row per mode; one line per
        locator, the random control dashed; error bars are the 95% intervals."""
        import plotly.graph_objects as go
        from plotly.colors import qualitative
        from plotly.subplots import make_subplots

        fig = make_subplots(
            rows=len(self.modes),
            cols=2,
            shared_xaxes=True,
            subplot_titles=[f"{what} drop ({mode} ablation)" for mode in self.modes for what in ("forget", "retain")],
        )
        colours = {name: qualitative.Plotly[i % len(qualitative.Plotly)] for i, name in enumerate(self.locators)}
        colours[RANDOM] = "gray"
        for row_index, mode in enumerate(self.modes, start=1):
            for name in (*self.locators, RANDOM):
                rows = [r for r in self.rows if r.locator == name and r.mode == mode]
                if not rows:
                    continue
                for col, what in enumerate(("forget_drop", "retain_drop"), start=1):
                    values = [getattr(r, what) for r in rows]
                    fig.add_trace(
                        go.Scatter(
                            x=[r.percent for r in rows],
                            y=[v.mean for v in values],
                            error_y={
                                "type": "data",
                                "symmetric": False,
                                "array": [v.high - v.mean for v in values],
                                "arrayminus": [v.mean - v.low for v in values],
                            },
                            mode="lines+markers",
                            name=name,
                            legendgroup=name,
                            showlegend=row_index == 1 and col == 1,
                            line={"color": colours[name], "dash": "dash" if name == RANDOM else "solid"},
                            hovertemplate=f"{name}<br>k=%{{x}}%<br>drop %{{y:.3f}}<extra></extra>",
                        ),
                        row=row_index,
                        col=col,
                    )
        fig.update_xaxes(type="log", title_text="k (% of each layer's components)", row=len(self.modes))
        fig.update_yaxes(title_text="accuracy drop", col=1)
        fig.update_layout(title=title or f"ablation profile ({self.components}, top k% per layer)")
        return fig

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": 1,
            "conventions": {
                "percent": "k in (0, 100]: the top ceil(k/100 * width) components of every layer",
                "accuracy": "answer accuracy (share of answer tokens predicted top-1), mean over people",
                "drop": "accuracy before minus after, per person; intervals: 95% bootstrap over people and draws",
                "mean": f"mean activation over every real token of the {self.mean_over} facts",
            },
            "base_forget": self.base_forget.to_dict(),
            "base_retain": self.base_retain.to_dict(),
            "base_forget_accuracy": self.base_forget_accuracy,
            "base_retain_accuracy": self.base_retain_accuracy,
            "locators": list(self.locators),
            "percents": list(self.percents),
            "modes": list(self.modes),
            "components": self.components,
            "n_random": self.n_random,
            "seed": self.seed,
            "mean_over": self.mean_over,
            "n_forget": self.n_forget,
            "n_retain": self.n_retain,
            "model": dict(self.model),
            "rows": [r.to_dict() for r in self.rows],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AblationProfile:
        if data.get("format") != FORMAT:
            raise UsageError(f"not a saved AblationProfile (format {data.get('format')!r})")
        return cls(
            rows=tuple(ProfileRow.from_dict(r) for r in data["rows"]),
            base_forget=Interval(**data["base_forget"]),
            base_retain=Interval(**data["base_retain"]),
            base_forget_accuracy=data["base_forget_accuracy"],
            base_retain_accuracy=data["base_retain_accuracy"],
            locators=tuple(data["locators"]),
            percents=tuple(data["percents"]),
            modes=tuple(data["modes"]),
            components=data["components"],
            n_random=data["n_random"],
            seed=data["seed"],
            mean_over=data["mean_over"],
            n_forget=data["n_forget"],
            n_retain=data["n_retain"],
            model=data["model"],
        )

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``directory/ablation_profile.json``; :meth:`load` reads it back."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / PROFILE_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> AblationProfile:
        path = Path(directory) / PROFILE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{str(directory)!r} holds no {PROFILE_FILE}")
        return cls.from_dict(json.loads(path.read_text()))


# ----------------------------------------------------------------------------- checks


def _check_knowledge(value: Any, what: str) -> KnowledgeSet:
    if not isinstance(value, KnowledgeSet):
        raise UsageError(f"{what} must be a non-empty loka.KnowledgeSet, got {type(value).__name__}")
    for fact in value:
        if not isinstance(fact.target, str) or not fact.target.strip():
            raise UsageError(f"{what} fact {fact.id!r} has no target; every fact needs an answer to score")
    return value


def _check_percents(percents: Any) -> tuple[float, ...]:
    if isinstance(percents, str) or not isinstance(percents, Sequence) or len(percents) == 0:
        raise UsageError(f"percents must be a non-empty sequence of numbers in (0, 100], got {percents!r}")
    for p in percents:
        if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p) or not 0 < p <= 100:
            raise UsageError(f"percents are percentages in (0, 100] (k% of each layer), got {p!r}")
    out = tuple(sorted(float(p) for p in percents))
    if len(set(out)) != len(out):
        raise UsageError(f"percents has duplicates: {list(percents)}")
    return out


def _check_choices(name: str, values: Any, allowed: tuple[str, ...]) -> tuple[Any, ...]:
    if isinstance(values, str):
        values = (values,)
    if not isinstance(values, Sequence) or len(values) == 0:
        raise UsageError(f"{name} must be a non-empty sequence of {allowed}, got {values!r}")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise UsageError(f"unknown {name} {bad[0]!r}; choose from {', '.join(allowed)}")
    if len(set(values)) != len(values):
        raise UsageError(f"{name} has duplicates: {list(values)}")
    return tuple(values)


def _check_locators(
    locators: Any, kinds: tuple[str, ...], shapes: Mapping[str, tuple[int, int]], model_fp: ModelFingerprint
) -> dict[str, dict[str, Tensor]]:
    """Each locator's importance per kind, checked against the model's shapes."""
    if not isinstance(locators, Mapping) or len(locators) == 0:
        raise UsageError(
            "locators must be a non-empty dict {name: AttributionScores}, got "
            + (f"{type(locators).__name__}" if not isinstance(locators, Mapping) else "an empty dict")
        )
    out: dict[str, dict[str, Tensor]] = {}
    for name, scores in locators.items():
        if not isinstance(name, str) or not name.strip():
            raise UsageError(f"locator names must be non-empty strings, got {name!r}")
        if name == RANDOM:
            raise UsageError(f"{RANDOM!r} names the random control; give the locator another name")
        out[name] = {}
        for kind in kinds:
            raw = getattr(scores, kind, None)
            if raw is None:
                raise UsageError(f"locator {name!r} has no {kind} scores ({type(scores).__name__}.{kind} is None)")
            if not isinstance(raw, Tensor) or not raw.is_floating_point():
                raise UsageError(f"locator {name!r}: {kind} scores must be a float tensor, got {type(raw).__name__}")
            if tuple(raw.shape) != shapes[kind]:
                raise UsageError(
                    f"locator {name!r}: {kind} scores are shaped {list(raw.shape)} but the model has "
                    f"{list(shapes[kind])}; they were computed on a model of another shape"
                )
            values = _importance(scores, kind)
            if not torch.isfinite(values).all():
                raise UsageError(f"locator {name!r}: {kind} scores are not all finite")
            out[name][kind] = values.detach().float().cpu()
        scored_on = getattr(getattr(scores, "metadata", None), "model", None)
        if isinstance(scored_on, ModelFingerprint) and scored_on.weights_sha256 != model_fp.weights_sha256:
            logger.warning("locator %r was computed on a model with other weights (same shapes)", name)
    return out


# ----------------------------------------------------------------------------- the profile


def ablation_profile(
    model: TransformerBridge,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    locators: Mapping[str, Any],
    *,
    percents: Sequence[float] = DEFAULT_PERCENTS,
    modes: Sequence[Mode] = MODES,
    components: Components = "neurons",
    n_random: int = 3,
    seed: int = 0,
    mean_over: MeanOver = "retain",
    batch_size: int = 64,
    progress: bool = False,
) -> AblationProfile:
    """Ablate each locator's top ``percents``% of every layer, and random components of the same
    per-layer counts, and measure the forget and retain accuracy drops (see the module docstring).

    Args:
        model: a ``TransformerBridge`` (hooks); it is only read: every ablation is undone on exit.
        forget, retain: the facts to remove and the facts to keep (non-empty, every fact with a target).
        locators: ``{name: scores}``, each an :class:`attribution.AttributionScores` (or an object with
            ``.neurons`` ``[n_layers, d_mlp]`` / ``.heads`` ``[n_layers, n_heads]`` float tensors,
            larger = more important) computed on a model of this shape.
        percents: k, as percentages in (0, 100] of each layer's components.
        modes: ``"zero"`` and/or ``"mean"``.
        components: ``"neurons"`` (default), ``"heads"``, or ``"all"`` (each kind's top k% per layer).
        n_random: random draws of the control per k (0: no control); ``seed`` seeds them and the intervals.
        mean_over: the facts whose mean activations ``"mean"`` ablation writes: ``"retain"``,
            ``"forget"`` or ``"both"``.
        batch_size: facts per scoring batch. ``progress``: a tqdm bar over the ablations.

    Every argument is checked before any forward pass (a one-line :class:`loka.UsageError`).
    """
    if not isinstance(model, TransformerBridge):
        raise UsageError(
            f"ablation_profile ablates through hooks, so model must be a TransformerBridge (loka.load_model), "
            f"got {type(model).__name__}"
        )
    forget = _check_knowledge(forget, "forget")
    retain = _check_knowledge(retain, "retain")
    grid = _check_percents(percents)
    chosen_modes: tuple[Mode, ...] = _check_choices("modes", modes, MODES)
    if components not in COMPONENTS:
        raise UsageError(f"unknown components {components!r}; choose from {', '.join(COMPONENTS)}")
    if mean_over not in MEAN_OVER:
        raise UsageError(f"unknown mean_over {mean_over!r}; choose from {', '.join(MEAN_OVER)}")
    check_number("n_random", n_random, low=0, integer=True)
    check_number("seed", seed, low=0, integer=True)
    check_number("batch_size", batch_size, low=1, integer=True)
    model_fp = fingerprint(model)
    kinds = _KINDS[components]
    shapes = {"neurons": (model_fp.n_layers, model_fp.d_mlp), "heads": (model_fp.n_layers, model_fp.n_heads)}
    importance = _check_locators(locators, kinds, shapes, model_fp)

    means = None
    if "mean" in chosen_modes:
        reference = {"retain": retain, "forget": forget, "both": forget + retain}[mean_over]
        means = mean_activations(model, reference.encode(model), batch_size=batch_size)

    def people_of(knowledge: KnowledgeSet) -> list[str]:
        return [fact.subject or fact.id for fact in knowledge]

    forget_people, retain_people = people_of(forget), people_of(retain)

    def accuracies(scores: FactScores) -> np.ndarray:
        return (scores.n_correct_tokens.double() / scores.n_target_tokens.double().clamp(min=1)).numpy()

    def run(mask: AblationMask | None) -> tuple[FactScores, FactScores]:
        if mask is None:
            return (
                score_facts(model, forget, batch_size=batch_size),
                score_facts(model, retain, batch_size=batch_size),
            )
        with ablate(model, mask):
            return (
                score_facts(model, forget, batch_size=batch_size),
                score_facts(model, retain, batch_size=batch_size),
            )

    def by_person(scores: tuple[FactScores, FactScores]) -> tuple[np.ndarray, np.ndarray]:
        """Each person's mean accuracy, forget and retain."""
        return per_person(accuracies(scores[0]), forget_people)[1], per_person(accuracies(scores[1]), retain_people)[1]

    base = run(None)
    base_people = by_person(base)

    def summarize(
        name: str, mode: Mode, percent: float, mask: AblationMask, draws: list[tuple[FactScores, FactScores]]
    ) -> ProfileRow:
        after = [by_person(d) for d in draws]
        forget_after = np.stack([a[0] for a in after])  # [draw, person]
        retain_after = np.stack([a[1] for a in after])
        per_layer = [int(n) for kind in kinds for n in mask.tensor(kind[:-1]).sum(dim=1).tolist()]  # type: ignore[union-attr]
        return ProfileRow(
            locator=name,
            mode=mode,
            percent=percent,
            per_layer=tuple(per_layer),
            n_components=len(mask),
            forget=mean_interval(forget_after, seed=seed),
            retain=mean_interval(retain_after, seed=seed),
            forget_drop=mean_interval(base_people[0][None, :] - forget_after, seed=seed),
            retain_drop=mean_interval(base_people[1][None, :] - retain_after, seed=seed),
            forget_accuracy=tuple(d[0].answer_accuracy for d in draws),
            retain_accuracy=tuple(d[1].answer_accuracy for d in draws),
        )

    def masked(tensors: Mapping[str, Tensor], mode: Mode) -> AblationMask:
        mask = AblationMask(tensors.get("neurons"), tensors.get("heads"), fingerprint=model_fp)
        return mask.with_mode("mean", means=means) if mode == "mean" else mask

    rows: list[ProfileRow] = []
    total = len(chosen_modes) * len(grid) * (len(importance) + n_random)
    with tqdm(total=total, disable=not progress, desc="ablation profile", leave=False) as bar:
        for mode in chosen_modes:
            for index, percent in enumerate(grid):
                counts = {kind: per_layer_count(percent, shapes[kind][1]) for kind in kinds}
                located: AblationMask | None = None
                for name, scores in importance.items():
                    located = masked({kind: top_per_layer(scores[kind], counts[kind]) for kind in kinds}, mode)
                    rows.append(summarize(name, mode, percent, located, [run(located)]))
                    bar.update()
                if n_random and located is not None:
                    draws, control = [], located
                    for draw in range(n_random):
                        # the same draws for every mode and locator: they depend on (seed, draw, k) only
                        control = AblationMask.random_like(located, seed=seed * 1_000_003 + draw * 1_009 + index)
                        draws.append(run(control))
                        bar.update()
                    rows.append(summarize(RANDOM, mode, percent, control, draws))
    return AblationProfile(
        rows=tuple(rows),
        base_forget=mean_interval(base_people[0][None, :], seed=seed),
        base_retain=mean_interval(base_people[1][None, :], seed=seed),
        base_forget_accuracy=base[0].answer_accuracy,
        base_retain_accuracy=base[1].answer_accuracy,
        locators=tuple(importance),
        percents=grid,
        modes=chosen_modes,
        components=components,
        n_random=n_random,
        seed=seed,
        mean_over=mean_over,
        n_forget=len(forget),
        n_retain=len(retain),
        model=model_fp.to_dict(),
    )
