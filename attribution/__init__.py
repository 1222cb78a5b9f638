"""attribution: which MLP neurons and attention heads carry this knowledge? (reads a model, never changes it)

The question is answered by intervening: replace a component's activation with a baseline (zero,
a mean, another fact's run, a corrupted run) and read how the metric of "knowing the fact" moves
(the log-probability of its target, or a logit difference against a contrast answer).

- :func:`attribute` scores every neuron (``blocks.{l}.mlp.hook_post``, ``[n_layers, d_mlp]``) and
  head (``blocks.{l}.attn.hook_z``, ``[n_layers, n_heads]``), exactly (``"activation_patching"``,
  batched) or by the first-order estimate (``"grad_x_act"``, one backward pass per batch), and
  returns :class:`AttributionScores` (``.top()``, ``.contrast()``, ``.plot()``, ``.save()``).
  The defaults (noise-corrupted runs, denoising) are the settings where the
  estimate agrees with exact patching; see :mod:`attribution.api` for when it does not.
- :func:`patch_components` patches chosen components exactly, per fact;
  :func:`validate` uses it to check an estimate's top components
  (:class:`ScoreCheck`: rank correlation and top-k agreement with exact patching).
- :func:`layer_scan` is ROME's causal tracing: per layer and token position, the effect of the
  residual stream, attention output and MLP output.
- :func:`metric_values` is the metric itself, per fact.
- ``attribute(..., method="integrated_gradients" | "activation_magnitude" | "learned_mask")``:
  the locators Chang et al. (NAACL 2024) compare (:class:`LearnedMaskConfig` configures the
  learned mask); :func:`recall_at_k` scores any locator against planted neurons (:class:`Recall`).
- :func:`peel` ranks by peeling: attribute, zero-ablate the top components, attribute again, so
  that backups of the strongest components surface (:class:`Peeling`).

Sign convention: a score is metric(intervened) - metric(unpatched); when ablating, the components
a fact needs are negative. See :mod:`attribution.scores`.
"""

from attribution.api import ATTRIBUTION_METHODS, AttributionMethod, ComponentEffects, attribute, patch_components
from attribution.baselines import BASELINES, DIRECTIONS, Baseline, Direction, corrupted_run
from attribution.corruption import CORRUPTIONS, SPANS, Corruption, CorruptionKind, CorruptionSpan
from attribution.learned_mask import LEARNED_MASK_KINDS, MASK_OBJECTIVES, LearnedMaskConfig
from attribution.metric import METRICS, FactMetric, MetricName, MetricValues, metric_values
from attribution.peeling import PEEL_FRACTION, Peeling, peel
from attribution.positions import POSITION_CLASSES, POSITIONS, Positions
from attribution.recall import Recall, recall_at_k
from attribution.scores import AttributionScores, ContrastKind, ScoresMetadata
from attribution.tracing import SITES, LayerScan, Site, layer_scan
from attribution.validation import KindCheck, ScoreCheck, validate

__all__ = [
    "attribute",
    "AttributionScores",
    "ScoresMetadata",
    "ContrastKind",
    "patch_components",
    "ComponentEffects",
    "peel",
    "Peeling",
    "PEEL_FRACTION",
    "layer_scan",
    "LayerScan",
    "Site",
    "SITES",
    "metric_values",
    "MetricValues",
    "FactMetric",
    "MetricName",
    "METRICS",
    "AttributionMethod",
    "ATTRIBUTION_METHODS",
    "Baseline",
    "BASELINES",
    "Direction",
    "DIRECTIONS",
    "Corruption",
    "CorruptionKind",
    "corrupted_run",
    "CORRUPTIONS",
    "CorruptionSpan",
    "SPANS",
    "validate",
    "ScoreCheck",
    "KindCheck",
    "Positions",
    "POSITIONS",
    "POSITION_CLASSES",
    "LearnedMaskConfig",
    "LEARNED_MASK_KINDS",
    "MASK_OBJECTIVES",
    "recall_at_k",
    "Recall",
]
