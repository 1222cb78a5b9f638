"""Causal tracing: the effect of each layer's residual stream, attention and MLP output per position.

Before asking which neuron carries a fact, ask *where* it is: at which layer and which token the
model's computation of the answer passes. ROME's causal tracing (Meng et al. 2022, figure 1)
answers it by corrupting the subject (Gaussian noise on its token embeddings), then restoring one
hidden state at one (layer, position) to its clean value and measuring how much of the answer
comes back. Facts typically light up at the last subject token in the middle layers (MLPs) and
at the last token in the late layers (attention).

:func:`layer_scan` runs exactly that, for three sites per layer (``sites``):

- ``"resid_pre"``: the residual stream entering block ``l`` (``blocks.{l}.hook_resid_pre``);
- ``"attn_out"``: the attention output of block ``l`` (``blocks.{l}.hook_attn_out``);
- ``"mlp_out"``: the MLP output of block ``l`` (``blocks.{l}.hook_mlp_out``);

patched one (site, layer, position) at a time, batched like component patching (the batch
dimension carries the patch index). Any baseline and direction of :func:`attribution.attribute`
work; the default is ROME's (``baseline="corrupt"``, ``corruption="noise"``,
``direction="denoise"``). Single-layer restorations only: ROME's windowed restoration of
several consecutive MLP / attention layers is not implemented.

The result, :class:`LayerScan`, keeps every fact's ``[site, layer, position]`` effects (its
tokens label the positions) and summarises over facts by position class (first / middle / last
subject token, further tokens, last prompt token, ...), the way ROME averages over prompts of
different lengths. ``scan.plot()`` draws the summary, ``scan.plot(fact=i)`` one fact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from attribution.baselines import Baseline, Baselines, Direction
from attribution.checks import check_batch_size, check_knowledge, check_model, finite_or_raise
from attribution.corruption import Corruption, CorruptionKind
from attribution.metric import FactMetric, MetricName
from attribution.patching import PatchPlan, patch_effects
from attribution.plots import layer_scan_figure
from attribution.positions import POSITION_CLASSES, position_classes
from loka.base.errors import UsageError
from loka.data.facts import Fact
from loka.data.knowledge import KnowledgeSet
from loka.models import fingerprint

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["Site", "SITES", "LayerScan", "layer_scan", "site_hook"]

Site = Literal["resid_pre", "attn_out", "mlp_out"]
SITES: tuple[Site, ...] = get_args(Site)
_SITE_HOOKS = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
}


def site_hook(site: str, layer: int) -> str:
    """The hook of ``site`` (one of :data:`SITES`) at ``layer``."""
    if site not in _SITE_HOOKS:
        raise UsageError(f"unknown site {site!r}; use one of {', '.join(map(repr, SITES))}")
    return _SITE_HOOKS[site].format(layer=layer)


@dataclass(frozen=True, eq=False)  # holds tensors: compare fields, not objects
class LayerScan:
    """Per-fact effects of patching each (site, layer, position), with the sign convention of
    :class:`attribution.scores.AttributionScores` (``metadata["direction"]``).

    ``effects[f, s, l, p]`` is 0 where position ``p`` is past the end of fact ``f``;
    ``classes[f, p]`` indexes :data:`attribution.positions.POSITION_CLASSES` (-1 on padding).
    """

    fact_ids: tuple[str, ...]
    sites: tuple[Site, ...]
    tokens: tuple[tuple[str, ...], ...]
    effects: Float[Tensor, "fact site layer pos"]
    classes: Int[Tensor, "fact pos"]
    base_metric: Float[Tensor, " fact"]
    clean_metric: Float[Tensor, " fact"]
    metadata: Mapping[str, Any]

    def mean(self) -> Float[Tensor, "site layer pos"]:
        """Mean over facts at each absolute position (a fact shorter than ``p`` counts 0 there:
        the same average TL's ``get_act_patch_resid_pre`` takes over a padded batch)."""
        return self.effects.mean(0)

    def by_class(self) -> tuple[Float[Tensor, "site layer cls"], tuple[int, ...]]:
        """Mean over facts of each fact's mean effect over its positions in each class; only
        the classes some fact has (returned as indices into POSITION_CLASSES)."""
        n_classes = len(POSITION_CLASSES)
        one_hot = torch.nn.functional.one_hot(self.classes.clamp(min=0), n_classes).float()
        one_hot = one_hot * (self.classes >= 0)[..., None]  # [fact, pos, class]
        counts = one_hot.sum(1)  # [fact, class]
        sums = einops.einsum(self.effects.float(), one_hot, "fact site layer pos, fact pos cls -> fact site layer cls")
        per_fact = sums / counts.clamp(min=1)[:, None, None, :]
        has = counts > 0
        mean = per_fact.sum(0) / has.sum(0).clamp(min=1)
        present = tuple(int(c) for c in has.any(0).nonzero().flatten())
        return mean[..., list(present)], present

    def plot(self, fact: int | str | None = None) -> go.Figure:
        """Heatmaps (one per site, layers on y): by position class over all facts, or the
        per-token scan of one fact (``fact`` as index or id)."""
        if isinstance(fact, str):
            if fact not in self.fact_ids:
                raise UsageError(f"no fact {fact!r} in this scan")
            fact = self.fact_ids.index(fact)
        if fact is not None and not 0 <= fact < len(self.fact_ids):
            raise UsageError(f"fact index {fact} is out of range (the scan has {len(self.fact_ids)} facts)")
        return layer_scan_figure(self, fact)


def _plan(sites: Sequence[Site], n_layers: int, width: int) -> PatchPlan:
    hooks = tuple(site_hook(site, layer) for site in sites for layer in range(n_layers))
    n = len(hooks) * width
    return PatchPlan(
        hooks=hooks,
        hook_index=torch.arange(len(hooks)).repeat_interleave(width),
        units=torch.full((n,), -1, dtype=torch.long),
        positions=torch.arange(width).repeat(len(hooks)),
    )


def layer_scan(
    model: Any,
    knowledge: KnowledgeSet | Sequence[Fact],
    *,
    sites: Site | Iterable[Site] = SITES,
    baseline: Baseline = "corrupt",
    corruption: CorruptionKind | Corruption | None = None,
    direction: Direction = "denoise",
    donors: KnowledgeSet | None = None,
    metric: MetricName | None = None,
    contrast: Mapping[str, str] | None = None,
    samples: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    chunk_size: int | None = None,
    progress: bool = True,
) -> LayerScan:
    """Patch every (site, layer, position) for every fact; see the module docstring.

    Options are those of :func:`attribution.attribute`; the defaults are ROME's causal tracing.
    """
    model = check_model(model)
    knowledge = check_knowledge(knowledge)
    sites = (sites,) if isinstance(sites, str) else tuple(sites)
    if not sites:
        raise UsageError(f"sites is empty; use some of {', '.join(map(repr, SITES))}")
    for site in sites:
        site_hook(site, 0)
    batch_size = check_batch_size(batch_size)
    fact_metric = FactMetric.resolve(metric, contrast)
    fact_metric.check(knowledge)
    n_layers = model.cfg.n_layers
    hooks = tuple(site_hook(site, layer) for site in sites for layer in range(n_layers))
    if baseline == "corrupt" and corruption is None:
        corruption = "noise"
    baselines = Baselines(
        model,
        knowledge,
        hooks=hooks,
        baseline=baseline,
        direction=direction,
        corruption=corruption,
        donors=donors,
        positions="all",
        metric=fact_metric,
        seed=seed,
        samples=samples,
        batch_size=batch_size,
        progress=progress,
    )
    per_batch, classes, tokens, base, clean = [], [], [], [], []
    for facts, batch in tqdm(baselines.batches, disable=not progress, desc="layer scan"):
        setup = baselines.setup(facts, batch)
        width = setup.batch.input_ids.shape[1]
        effects, base_values = patch_effects(
            model, setup, _plan(sites, n_layers, width), chunk_size=chunk_size, progress=progress
        )
        effects = einops.rearrange(effects, "(site layer pos) fact -> fact site layer pos", site=len(sites), pos=width)
        real = setup.batch.attention_mask.bool().cpu()
        per_batch.append(effects * real[:, None, None, :])
        classes.append(position_classes(setup.batch).cpu())
        lengths = real.sum(-1).tolist()
        ids = setup.batch.input_ids.cpu()
        tokens += [tuple(model.tokenizer.convert_ids_to_tokens(ids[i, :n].tolist())) for i, n in enumerate(lengths)]
        base.append(base_values)
        clean.append(setup.clean_metric if setup.clean_metric is not None else base_values)
    width = max(e.shape[-1] for e in per_batch)
    effects = torch.cat([torch.nn.functional.pad(e, (0, width - e.shape[-1])) for e in per_batch])
    class_ids = torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[-1]), value=-1) for c in classes])
    base_metric, clean_metric = torch.cat(base), torch.cat(clean)
    finite_or_raise(base_metric, "the unpatched metric", knowledge.ids)
    finite_or_raise(effects, "the layer-scan effects")
    metadata = {
        "method": "activation_patching",
        "metric": fact_metric.name,
        "knowledge": knowledge.name,
        "n_facts": len(knowledge),
        "model": fingerprint(model).to_dict(),
        **baselines.describe(),
    }
    return LayerScan(
        fact_ids=knowledge.ids,
        sites=sites,  # type: ignore[arg-type]
        tokens=tuple(tokens),
        effects=effects,
        classes=class_ids,
        base_metric=base_metric,
        clean_metric=clean_metric,
        metadata=metadata,
    )
