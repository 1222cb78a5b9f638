"""AttributionScores: one number per MLP neuron and attention head, and what it means.

``scores.neurons[l, i]`` is the effect of intervening on neuron ``i`` of layer ``l`` on the
metric, averaged over the facts attributed; ``scores.heads[l, h]`` the same for head ``h``
(either is ``None`` when that kind was not computed). The sign convention is that of an
intervention:

* ``direction="ablate"``: effect = metric(ablated) - metric(clean). A component the knowledge
  needs has a **negative** score (ablating it lowers the log-probability of the targets).
* ``direction="denoise"``: effect = metric(corrupted run with the component restored) -
  metric(corrupted run), ROME's indirect effect. A component that carries the knowledge has a
  **positive** score.
* ``direction="contrast"`` (from :meth:`AttributionScores.contrast`): a specificity score;
  higher means more specific to the forget knowledge.

:attr:`AttributionScores.importance` flips signs so that larger always means "carries more of
this knowledge", and :meth:`~AttributionScores.top` ranks by it. The metadata records how the
scores were made (method, baseline, positions, metric, ...) and on which model (its
:class:`loka.models.ModelFingerprint`), so that :meth:`~AttributionScores.load` can refuse scores
computed on another model. Scores are saved as safetensors (the tensors) beside a JSON file a
person can read (everything else).
"""

from __future__ import annotations

import bisect
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from attribution.plots import scores_figures
from loka.base.components import Component, ComponentShapes, Kind
from loka.base.errors import UsageError
from loka.models import ModelFingerprint, fingerprint

if TYPE_CHECKING:
    import plotly.graph_objects as go


__all__ = ["AttributionScores", "ScoresMetadata", "ScoreDirection", "ContrastKind", "SCORES_FILE", "METADATA_FILE"]

ScoreDirection = Literal["ablate", "denoise", "contrast"]
ContrastKind = Literal["ratio", "difference"]
SCORES_FILE = "scores.safetensors"
METADATA_FILE = "scores.json"
FORMAT = "loka.attribution.AttributionScores"
FORMAT_VERSION = 1
_KIND_ALIASES: dict[str, Kind] = {"neuron": "neuron", "neurons": "neuron", "head": "head", "heads": "head"}
_FIELD = {"neuron": "neurons", "head": "heads"}


def parse_kind(kind: str) -> Kind:
    """``"neuron"`` / ``"head"`` (plural accepted), else a ValueError naming the choices."""
    if kind not in _KIND_ALIASES:
        raise UsageError(f"unknown component kind {kind!r}; use 'neurons' or 'heads'")
    return _KIND_ALIASES[kind]


@dataclass(frozen=True)
class ScoresMetadata:
    """How a set of scores was made, and on which model.

    ``base_metric`` is the mean metric of the run interventions were applied to (the clean run
    when ablating, the corrupted run when denoising); ``clean_metric`` is always the clean run's.
    ``options`` holds the rest (corruption, samples, seed, donor set, ...), JSON-ready.

    ``by_kind`` is empty unless the kinds were scored in different settings (``attribute``'s
    recommended settings: neurons by zero ablation, heads by denoising): it then maps a kind
    (``"head"``) to the fields that differ for it; the other fields describe every kind.
    :meth:`of_kind` gives one kind's metadata, which is what every reader of the settings uses.
    """

    method: str
    baseline: str
    direction: ScoreDirection
    positions: str
    metric: str
    model: ModelFingerprint
    n_facts: int
    knowledge: str
    clean_metric: float
    base_metric: float
    options: Mapping[str, Any] = field(default_factory=dict)
    by_kind: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def of_kind(self, kind: str) -> ScoresMetadata:
        """The metadata of ``kind``'s scores: ``by_kind``'s fields for it replace the shared ones."""
        kind = parse_kind(kind)
        return replace(self, **dict(self.by_kind.get(kind, {})), by_kind={})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["model"] = self.model.to_dict()
        out["options"] = dict(self.options)
        if not self.by_kind:
            del out["by_kind"]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoresMetadata:
        expected = {f.name for f in fields(cls)}
        missing = expected - set(data) - {"options", "by_kind"}
        if missing:
            raise UsageError(f"scores metadata is missing {sorted(missing)}")
        values = {k: v for k, v in data.items() if k in expected}
        values["model"] = ModelFingerprint.from_dict(data["model"])
        return cls(**values)


def _fingerprint_of(model: Any) -> ModelFingerprint:
    return model if isinstance(model, ModelFingerprint) else fingerprint(model)


def check_same_model(saved: ModelFingerprint, given: ModelFingerprint, what: str) -> None:
    """ValueError saying how two models differ, if they do."""
    if saved == given:
        return
    differences = [
        f"{name} {getattr(saved, name)!r} vs {getattr(given, name)!r}"
        for name in ("architecture", "n_layers", "n_heads", "d_mlp", "d_vocab")
        if getattr(saved, name) != getattr(given, name)
    ]
    if saved.weights_sha256 != given.weights_sha256:
        differences.append(f"weights sha256 {saved.weights_sha256[:12]}... vs {given.weights_sha256[:12]}...")
    raise UsageError(f"{what} were computed on a different model than the one given: {'; '.join(differences)}")


@dataclass(frozen=True, eq=False)  # holds tensors: compare fields, not objects
class AttributionScores:
    """Per-component effects on the metric; see the module docstring for the sign convention."""

    neurons: Float[Tensor, "n_layers d_mlp"] | None
    heads: Float[Tensor, "n_layers n_heads"] | None
    metadata: ScoresMetadata

    def __post_init__(self) -> None:
        if self.neurons is None and self.heads is None:
            raise UsageError("AttributionScores needs neuron scores, head scores, or both")
        model = self.metadata.model
        shapes = ComponentShapes(model.n_layers, model.d_mlp, model.n_heads)
        for kind in ("neuron", "head"):
            values = getattr(self, _FIELD[kind])
            if values is None:
                continue
            if not isinstance(values, Tensor) or tuple(values.shape) != shapes.shape(kind):  # type: ignore[arg-type]
                got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
                raise UsageError(
                    f"{_FIELD[kind]} scores must have shape {shapes.shape(kind)} for this model, got {got}"  # type: ignore[arg-type]
                )
            bad = (~torch.isfinite(values)).nonzero()
            if len(bad):
                label = Component(kind, int(bad[0, 0]), int(bad[0, 1])).label  # type: ignore[arg-type]
                raise UsageError(
                    f"{len(bad)} {_FIELD[kind]} scores are not finite (e.g. {label}); refusing to keep them"
                )

    # reading ----------------------------------------------------------------------------------
    @property
    def kinds(self) -> tuple[Kind, ...]:
        """The component kinds these scores cover."""
        return tuple(k for k in ("neuron", "head") if getattr(self, _FIELD[k]) is not None)  # type: ignore[misc]

    @property
    def shapes(self) -> ComponentShapes:
        model = self.metadata.model
        return ComponentShapes(model.n_layers, model.d_mlp, model.n_heads)

    def of(self, kind: str) -> Tensor:
        """The score tensor of ``kind`` (``"neurons"`` / ``"heads"``), ValueError if not computed."""
        kind = parse_kind(kind)
        values = getattr(self, _FIELD[kind])
        if values is None:
            raise UsageError(
                f"these scores have no {_FIELD[kind]} (computed: {', '.join(_FIELD[k] for k in self.kinds)})"
            )
        return values

    def importance(self, kind: str) -> Tensor:
        """Scores of ``kind`` signed so that larger means "carries more of the knowledge":
        ``-score`` for ablation effects, ``score`` for denoising effects and contrasts."""
        values = self.of(kind)
        return -values if self.metadata.of_kind(kind).direction == "ablate" else values

    def top(self, k: int | None = None, fraction: float | None = None, kind: str | None = None) -> list[Component]:
        """The most important components, most important first.

        Give ``k`` (a count) or ``fraction`` (of the components considered), or neither for all
        of them. ``kind`` restricts to ``"neurons"`` or ``"heads"``; without it both kinds are
        ranked together (their scores are in the same unit, the metric: ``attribute``'s
        recommended settings read both kinds in log-odds).
        """
        if k is not None and fraction is not None:
            raise UsageError("give k or fraction, not both")
        kinds = self.kinds if kind is None else (parse_kind(kind),)
        for one in kinds:
            self.of(one)
        blocks = [(one, self.importance(one)) for one in kinds]
        values = torch.cat([importance.flatten() for _, importance in blocks])
        n = values.numel()
        if fraction is not None:
            if not 0 < fraction <= 1:
                raise UsageError(f"fraction must be in (0, 1], got {fraction}")
            k = max(1, math.ceil(fraction * n))
        if k is None:
            k = n
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise UsageError(f"k must be a non-negative integer, got {k!r}")
        order = torch.sort(values, descending=True, stable=True).indices[: min(k, n)].tolist()
        # A flat index runs over the kinds' [n_layers, width] tensors one after the other.
        starts = [0]
        for _, importance in blocks:
            starts.append(starts[-1] + importance.numel())
        out = []
        for flat in order:
            block = bisect.bisect_right(starts, flat) - 1
            one, importance = blocks[block]
            layer, index = divmod(flat - starts[block], importance.shape[1])
            out.append(Component(one, layer, index))
        return out

    # contrast ---------------------------------------------------------------------------------
    def contrast(
        self, retain_scores: AttributionScores, kind: ContrastKind = "ratio", *, eps: float | None = None
    ) -> AttributionScores:
        """Scores of the components specific to this (forget) knowledge rather than the retain one.

        - ``"ratio"``: selective pruning's importance ratio ``I_forget / (I_retain + eps)``, where
          ``I`` is :meth:`importance` clipped at 0 (a component whose removal *helps* a set does
          not carry it). ``eps`` defaults to a hundredth of the mean retain importance of that
          kind, so that components neither set uses do not get large ratios from noise.
        - ``"difference"``: the standardised difference ``z(I_forget) - z(I_retain)``, each
          importance standardised over the components of its kind.

        Both sets must be scored on the same model; the result has ``direction="contrast"``.
        """
        if kind not in ("ratio", "difference"):
            raise UsageError(f"unknown contrast kind {kind!r}; use 'ratio' or 'difference'")
        if not isinstance(retain_scores, AttributionScores):
            raise UsageError(f"contrast needs the retain set's AttributionScores, got {type(retain_scores).__name__}")
        check_same_model(retain_scores.metadata.model, self.metadata.model, "the retain scores")
        if "contrast" in (self.metadata.direction, retain_scores.metadata.direction):
            raise UsageError("contrast two sets of effects, not a contrast")
        missing = [one for one in self.kinds if one not in retain_scores.kinds]
        if missing:
            raise UsageError(f"the retain scores have no {_FIELD[missing[0]]}; score the same components on both sets")
        for one in self.kinds:
            mine, theirs = self.metadata.of_kind(one), retain_scores.metadata.of_kind(one)
            if (mine.baseline, mine.direction, mine.metric) != (theirs.baseline, theirs.direction, theirs.metric):
                raise UsageError(
                    f"the {_FIELD[one]} were scored with {mine.baseline}/{mine.direction}/{mine.metric} on this set "
                    f"and {theirs.baseline}/{theirs.direction}/{theirs.metric} on the retain set; score both alike"
                )
        if eps is not None and not eps >= 0:
            raise UsageError(f"eps must be non-negative, got {eps}")
        out: dict[str, Tensor] = {}
        eps_used: dict[str, float] = {}
        for one in self.kinds:
            forget, retain = self.importance(one), retain_scores.importance(one)
            if kind == "ratio":
                forget, retain = forget.clamp(min=0), retain.clamp(min=0)
                e = eps if eps is not None else max(0.01 * retain.mean().item(), 1e-12)
                eps_used[_FIELD[one]] = e
                out[_FIELD[one]] = forget / (retain + e)
            else:
                out[_FIELD[one]] = _standardise(forget) - _standardise(retain)
        meta = self.metadata
        options = {
            "forget": meta.to_dict() | {"model": None},
            "retain": retain_scores.metadata.to_dict() | {"model": None},
        }
        if eps_used:
            options["eps"] = eps_used
        metadata = replace(
            meta,
            method=f"contrast-{kind}({meta.method})",
            direction="contrast",
            options=options,
            by_kind={},
        )
        return AttributionScores(out.get("neurons"), out.get("heads"), metadata)

    # persistence ------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``scores.safetensors`` (the tensors) and ``scores.json`` (everything else)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {_FIELD[k]: self.of(k).detach().float().cpu().contiguous() for k in self.kinds}
        save_file(tensors, str(directory / SCORES_FILE), metadata={"format": FORMAT})
        info = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "sign_convention": _sign_convention(self),
            "tensors": {name: list(t.shape) for name, t in tensors.items()},
            "metadata": self.metadata.to_dict(),
            "top_20": [c.label for c in self.top(20)],
        }
        (directory / METADATA_FILE).write_text(json.dumps(info, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike[str], model: Any = None) -> AttributionScores:
        """Read scores written by :meth:`save`. With ``model`` (a TransformerBridge or a
        ModelFingerprint), ValueError unless the scores were computed on that exact model."""
        directory = Path(directory)
        for name in (SCORES_FILE, METADATA_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{str(directory)!r} holds no saved AttributionScores ({name} is missing)")
        info = json.loads((directory / METADATA_FILE).read_text())
        if info.get("format") != FORMAT:
            raise UsageError(
                f"{directory / METADATA_FILE} is not a saved AttributionScores (format {info.get('format')!r})"
            )
        if info.get("version") != FORMAT_VERSION:
            raise UsageError(
                f"{directory / METADATA_FILE} has format version {info.get('version')}; expected {FORMAT_VERSION}"
            )
        metadata = ScoresMetadata.from_dict(info["metadata"])
        if model is not None:
            check_same_model(metadata.model, _fingerprint_of(model), f"the scores in {str(directory)!r}")
        tensors = load_file(str(directory / SCORES_FILE))
        return cls(tensors.get("neurons"), tensors.get("heads"), metadata)

    # checking ---------------------------------------------------------------------------------
    # plots ------------------------------------------------------------------------------------
    def plot(self, k: int = 20) -> dict[str, go.Figure]:
        """Plotly figures: ``"heads"`` (layer x head heatmap), ``"neurons"`` (layer x neuron
        heatmap), ``"neuron_distribution"`` (per-layer box plot), and ``"top"`` (the ``k``
        most important components); RdBu, centred on 0, layers on the y axis."""
        return scores_figures(self, k=k)


_SIGN = {
    "ablate": "effect of ablating = metric(ablated) - metric(clean); negative = the knowledge needs it",
    "denoise": "effect of restoring = metric(corrupted + restored) - metric(corrupted); positive = carries it",
    "contrast": "specificity to the forget set; higher = more specific",
}


def _sign_convention(scores: AttributionScores) -> str | dict[str, str]:
    """The sign convention of the scores, or of each kind's where the kinds differ."""
    signs = {_FIELD[kind]: _SIGN[scores.metadata.of_kind(kind).direction] for kind in scores.kinds}
    return next(iter(signs.values())) if len(set(signs.values())) == 1 else signs


def _standardise(values: Tensor) -> Tensor:
    std = values.std()
    return (values - values.mean()) / (std if std > 0 else 1.0)
