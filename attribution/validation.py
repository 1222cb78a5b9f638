"""Can these scores be trusted? A cheap check of a first-order estimate against exact patching.

``method="grad_x_act"`` estimates every component's effect from one backward pass; exact patching
costs a forward per component. The estimate is a tangent, and where the metric curves (a
saturated log-probability under zero ablation, large nonlinear effects: see
:mod:`attribution.api`) it can rank components badly, even in reverse. Nothing in the estimate
itself says so. The check is to measure some components exactly and compare:

1. take the top ``k`` components of each kind by :meth:`AttributionScores.importance
   <attribution.scores.AttributionScores.importance>` (the ones a user will act on), and ``k``
   more drawn at random (seeded) from the rest, so that the rank correlation is not computed on
   a truncated range of near-equal top values only;
2. patch each of them exactly with :func:`attribution.patch_components`, in the settings the
   scores' metadata records (baseline, direction, positions, corruption and its span, metric,
   donor set, seed: the same noise draws and donors);
3. report, per kind, the Spearman rank correlation (``scipy.stats.spearmanr``) of estimated and
   exact effects over the measured components, and the *top-k agreement*: the share of the
   estimated top ``k`` that are also among the top ``k`` by exact importance within the measured.

The cost is ``2k`` patched runs per kind over the facts, a small fraction of exact patching of
every neuron. :class:`ScoreCheck` holds the result (``.spearman``, ``.agreement``, ``.ok()``,
``.to_dict()``, ``.plot()``, ``.describe()``). Only ``grad_x_act`` scores can be checked: exact
scores need no check, and a contrast (forget vs retain) is not an effect that patching measures;
check the forget scores it was made from.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from scipy.stats import ConstantInputWarning, spearmanr
from torch import Tensor

from attribution.api import patch_components
from attribution.baselines import BASELINES
from attribution.checks import check_knowledge, check_model
from attribution.corruption import Corruption
from attribution.scores import AttributionScores, check_same_model, parse_kind
from loka.base.components import Component
from loka.base.errors import UsageError
from loka.data.facts import Fact
from loka.data.knowledge import KnowledgeSet
from loka.models import fingerprint

if TYPE_CHECKING:
    from collections.abc import Sequence

    import plotly.graph_objects as go

__all__ = ["ScoreCheck", "KindCheck", "validate", "patching_settings"]

_FIELD = {"neuron": "neurons", "head": "heads"}


@dataclass(frozen=True, eq=False)  # holds tensors: compare fields, not objects
class KindCheck:
    """One kind's check: ``components[i]`` has estimated effect ``estimated[i]`` (from the scores)
    and exact effect ``exact[i]`` (patched), both with the scores' sign convention. The first
    ``n_top`` components are the estimated top-k, the rest were drawn at random."""

    kind: str
    components: tuple[Component, ...]
    estimated: Float[Tensor, " component"]
    exact: Float[Tensor, " component"]
    n_top: int
    spearman: float
    agreement: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "components": [c.label for c in self.components],
            "estimated": self.estimated.tolist(),
            "exact": self.exact.tolist(),
            "n_top": self.n_top,
            "spearman": _json_float(self.spearman),
            "agreement": _json_float(self.agreement),
        }


@dataclass(frozen=True, eq=False)  # holds tensors (in its checks): compare fields, not objects
class ScoreCheck:
    """Estimated vs exact effects of the top-k (and k random) components of each kind.

    ``checks`` maps ``"neurons"`` / ``"heads"`` to a :class:`KindCheck`; ``settings`` are the
    patching settings the exact values were measured in (those of the scores' metadata); ``k``
    and ``seed`` are the check's own (how many top components, the seed of the random draw).
    """

    checks: Mapping[str, KindCheck]
    settings: Mapping[str, Any]
    k: int
    seed: int

    @property
    def spearman(self) -> dict[str, float]:
        """Rank correlation of estimated and exact effects, per kind (nan if either is constant)."""
        return {kind: check.spearman for kind, check in self.checks.items()}

    @property
    def agreement(self) -> dict[str, float]:
        """Share of the estimated top-k also in the exact top-k among the measured, per kind."""
        return {kind: check.agreement for kind, check in self.checks.items()}

    def ok(self, threshold: float = 0.5) -> bool:
        """Whether every kind's Spearman is at least ``threshold`` (a nan is not)."""
        if not -1 <= threshold <= 1:
            raise UsageError(f"threshold must be a rank correlation in [-1, 1], got {threshold}")
        return all(value >= threshold for value in self.spearman.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: settings, k, seed, and per kind the components and both values (nan as null)."""
        return {
            "k": self.k,
            "seed": self.seed,
            "settings": dict(self.settings),
            "spearman": {kind: _json_float(v) for kind, v in self.spearman.items()},
            "agreement": {kind: _json_float(v) for kind, v in self.agreement.items()},
            "checks": {kind: check.to_dict() for kind, check in self.checks.items()},
        }

    def describe(self) -> str:
        """One line: the settings, then per kind the Spearman and the top-k agreement (each kind
        with its own settings where the kinds were scored differently)."""
        parts = [
            f"{kind}: Spearman {c.spearman:.2f}, top-{c.n_top} agreement {c.agreement:.2f} "
            f"({len(c.components)} measured)"
            for kind, c in self.checks.items()
        ]
        by_kind = self.settings.get("by_kind")
        if by_kind is None:
            return f"grad_x_act vs exact patching ({_settings_line(self.settings)}): " + "; ".join(parts)
        lines = [f"{part} [{_settings_line(by_kind[kind])}]" for kind, part in zip(self.checks, parts, strict=True)]
        return "grad_x_act vs exact patching: " + "; ".join(lines)

    def plot(self) -> go.Figure:
        """A plotly scatter of exact (y) against estimated (x) effects, one colour per kind, top-k
        as filled markers and random ones as open markers, with the line y = x."""
        import plotly.graph_objects as go

        fig = go.Figure()
        low, high = math.inf, -math.inf
        for kind, check in self.checks.items():
            parts = (("top", slice(0, check.n_top), "circle"), ("random", slice(check.n_top, None), "circle-open"))
            for name, part, symbol in parts:
                x, y = check.estimated[part].tolist(), check.exact[part].tolist()
                if not x:
                    continue
                low, high = min(low, *x, *y), max(high, *x, *y)
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=y,
                        mode="markers",
                        name=f"{kind} ({name})",
                        marker={"symbol": symbol, "size": 8},
                        text=[c.label for c in check.components[part]],
                        hovertemplate="%{text}<br>estimated %{x:.4g}<br>exact %{y:.4g}<extra></extra>",
                    )
                )
        if math.isfinite(low):
            fig.add_trace(
                go.Scatter(
                    x=[low, high], y=[low, high], mode="lines", name="y = x", line={"dash": "dot", "color": "grey"}
                )
            )
        spearman = ", ".join(f"{kind} {v:.2f}" for kind, v in self.spearman.items())
        fig.update_layout(
            title=f"Estimated vs exact effects (Spearman: {spearman})",
            xaxis_title="estimated effect (grad_x_act)",
            yaxis_title="exact effect (activation patching)",
        )
        return fig


def _settings_line(s: Mapping[str, Any]) -> str:
    corruption = s.get("corruption")
    baseline = str(s.get("baseline", "?"))
    if corruption:
        baseline += f" ({corruption['kind']}, span {corruption['span']})"
    return f"{baseline}, {s.get('direction', '?')}, positions {s.get('positions', '?')}, {s.get('metric', '?')}"


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _needed(options: Mapping[str, Any], key: str) -> Any:
    if key not in options:
        raise UsageError(
            f"the scores' metadata lacks {key!r}, needed to reproduce their settings; recompute them with "
            "attribution.attribute"
        )
    return options[key]


def patching_settings(
    scores: AttributionScores,
    knowledge: KnowledgeSet,
    *,
    donors: KnowledgeSet | None = None,
    contrast: Mapping[str, str] | None = None,
    kind: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for :func:`attribution.patch_components` that reproduce the settings the
    scores' metadata records (``kind``'s, where the kinds were scored differently); ValueError if
    it does not record enough, or needs what is not given."""
    if kind is None and scores.metadata.by_kind:
        raise UsageError(
            "these scores' kinds were made in different settings; name the kind (kind='neurons' or 'heads')"
        )
    meta = scores.metadata if kind is None else scores.metadata.of_kind(kind)
    options = meta.options
    baseline = meta.baseline
    if baseline not in BASELINES:
        raise UsageError(f"the scores' metadata names baseline {baseline!r}; validate knows {', '.join(BASELINES)}")
    settings: dict[str, Any] = {
        "baseline": baseline,
        "direction": meta.direction,
        "positions": meta.positions,
        "metric": meta.metric,
    }
    if baseline == "corrupt":
        c = _needed(options, "corruption")
        subjects = c.get("subjects")
        settings["corruption"] = Corruption(
            kind=c["kind"],
            samples=c["samples"],
            noise_scale=c["noise_scale"],
            subjects=None if subjects is None else tuple(subjects),
            span=c.get("span", "subject"),  # scores made before spans existed noised the subject only
        )
    if baseline in ("resample", "corrupt"):
        settings["seed"] = _needed(options, "seed")
    if baseline == "resample":
        settings["samples"] = _needed(options, "samples")
    recorded = options.get("donors", options.get("reference"))  # "reference": scores saved before the rename
    if recorded is not None:
        if donors is not None:
            if len(donors) != recorded["n_facts"]:
                raise UsageError(
                    f"the scores used the donor set {recorded['name']!r} of {recorded['n_facts']} facts; "
                    f"the donor set given has {len(donors)}"
                )
            settings["donors"] = donors
        elif recorded["name"] != knowledge.name or recorded["n_facts"] != len(knowledge):
            raise UsageError(
                f"the scores used the donor set {recorded['name']!r} ({recorded['n_facts']} facts); "
                "pass it as donors=..."
            )
    if meta.metric == "logit_diff":
        if contrast is None:
            raise UsageError("the scores use metric='logit_diff'; pass the same contrast={fact id: answer} to validate")
        settings["contrast"] = contrast
    return settings


def validate(
    scores: AttributionScores,
    model: Any,
    knowledge: KnowledgeSet | Sequence[Fact],
    *,
    k: int = 20,
    kind: str | None = None,
    seed: int = 0,
    donors: KnowledgeSet | None = None,
    contrast: Mapping[str, str] | None = None,
    batch_size: int = 16,
    chunk_size: int | None = None,
    progress: bool = False,
) -> ScoreCheck:
    """Check ``grad_x_act`` scores against exact patching (see the module docstring).

    ``knowledge`` must be the facts the scores were computed on, ``model`` the same model.
    ``donors`` (for ``"mean"``, ``"resample"`` and the ``"subject"`` corruption, when the scores
    used a set other than ``knowledge``) and ``contrast`` (for ``metric="logit_diff"``) are what
    the metadata names but cannot hold. ``seed`` draws the random components only; the patching
    seed is the scores' own.
    """
    if not isinstance(scores, AttributionScores):
        raise UsageError(f"validate checks AttributionScores, got {type(scores).__name__}")
    meta = scores.metadata
    if meta.method != "grad_x_act":
        raise UsageError(
            f"validate checks scores made by method='grad_x_act' against exact patching; these were made by "
            f"{meta.method!r} (direction {meta.direction!r}); for a contrast, validate the scores it was made from"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UsageError(f"k must be a positive integer, got {k!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(f"seed must be an integer, got {seed!r}")
    kinds = scores.kinds if kind is None else (parse_kind(kind),)
    for one in kinds:
        scores.of(one)
    model = check_model(model)
    knowledge = check_knowledge(knowledge)
    check_same_model(meta.model, fingerprint(model), "these scores")
    if len(knowledge) != meta.n_facts:
        raise UsageError(
            f"these scores were computed on {meta.n_facts} facts ({meta.knowledge!r}); validate needs the same "
            f"facts, got {len(knowledge)}"
        )
    settings = {one: patching_settings(scores, knowledge, donors=donors, contrast=contrast, kind=one) for one in kinds}

    generator = torch.Generator().manual_seed(seed)
    chosen: dict[str, tuple[Tensor, int]] = {}
    components: dict[str, list[Component]] = {}
    for one in kinds:
        importance = scores.importance(one)
        width = importance.shape[1]
        order = torch.sort(importance.flatten(), descending=True, stable=True).indices
        n_top = min(k, order.numel())
        rest = order[n_top:]
        drawn = rest[torch.randperm(rest.numel(), generator=generator)[: min(k, rest.numel())]]
        flat = torch.cat([order[:n_top], drawn])
        chosen[one] = (flat, n_top)
        components[one] = [Component(one, int(i) // width, int(i) % width) for i in flat]  # type: ignore[arg-type]

    # Kinds scored in the same settings are measured together.
    groups: list[list[str]] = []
    for one in kinds:
        same = next((group for group in groups if settings[group[0]] == settings[one]), None)
        if same is None:
            groups.append([one])
        else:
            same.append(one)
    measured: dict[str, tuple[tuple[Component, ...], Tensor]] = {}
    for group in groups:
        together = [c for one in group for c in components[one]]
        result = patch_components(
            model, knowledge, together, batch_size=batch_size, chunk_size=chunk_size, progress=progress,
            **settings[group[0]],
        )  # fmt: skip
        offset = 0
        for one in group:
            n = len(components[one])
            measured[one] = (tuple(result.components[offset : offset + n]), result.effects[offset : offset + n])
            offset += n
    checks: dict[str, KindCheck] = {}
    for one, (flat, n_top) in chosen.items():
        sign = -1.0 if meta.of_kind(one).direction == "ablate" else 1.0
        estimated = scores.of(one).flatten()[flat].float()
        measured_components, exact = measured[one][0], measured[one][1].float()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConstantInputWarning)
            rho = float(spearmanr(estimated.numpy(), exact.numpy()).statistic)
        exact_top = set(torch.sort(sign * exact, descending=True, stable=True).indices[:n_top].tolist())
        agreement = len(exact_top & set(range(n_top))) / n_top
        checks[_FIELD[one]] = KindCheck(
            kind=_FIELD[one],
            components=measured_components,
            estimated=estimated,
            exact=exact,
            n_top=n_top,
            spearman=rho,
            agreement=agreement,
        )
    described = {_FIELD[one]: _described(settings[one], meta.of_kind(one)) for one in kinds}
    if len(groups) == 1:  # one set of settings for every kind checked
        return ScoreCheck(checks=checks, settings=next(iter(described.values())), k=k, seed=seed)
    return ScoreCheck(checks=checks, settings={"by_kind": described}, k=k, seed=seed)


def _described(settings: Mapping[str, Any], meta: Any) -> dict[str, Any]:
    """JSON-ready patching settings (the donor set by name and size, no contrast answers)."""
    described = {
        name: (value.to_dict() if isinstance(value, Corruption) else value)
        for name, value in settings.items()
        if name not in ("donors", "contrast")
    }
    described["method"] = meta.method
    recorded = meta.options.get("donors", meta.options.get("reference"))
    if recorded is not None:
        described["donors"] = dict(recorded)
    return described
