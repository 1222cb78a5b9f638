"""What an activation is replaced with: the baselines, and the corrupted runs they come from.

Patching a component means running the model with that component's activation replaced by a
*baseline* value and reading how the metric moves. The baselines:

- ``"zero"``: 0 (zero ablation).
- ``"mean"``: the mean activation over a donor KnowledgeSet (``donors``; default: the set being
  attributed), taken per position class (:func:`attribution.positions.position_classes`: BOS,
  subject tokens, last prompt token, target tokens, ...), so that a last-token activation is
  replaced by the mean last-token activation and not by an average over unlike positions.
- ``"resample"``: the same component's activation on another fact's run (a *donor* from the
  donor set: another fact, about another subject where subjects are known, of the same
  prompt length where there is one). Positions are aligned at the last prompt token.
- ``"corrupt"``: the same component's activation on a *corrupted* run of the same fact, where the
  subject is obscured, ROME-style (:mod:`attribution.corruption`: Gaussian noise on the subject's
  embeddings, or on the whole prompt of a fact without a subject; or another subject of the same
  token length).

Two directions (``direction``):

- ``"ablate"``: run the clean fact, replace one component's activation by its baseline; effect =
  metric(ablated) - metric(clean). A component the fact needs has a negative effect.
- ``"denoise"`` (``baseline="corrupt"`` only): run the corrupted fact, restore one component's
  clean activation; effect = metric(restored) - metric(corrupted), ROME's indirect effect. A
  component that carries the fact has a positive effect.

With several samples (noise draws, donors), each sample is its own run and effects are averaged
over samples, then over facts. Rows are laid out sample-major: row ``s * n_facts + i`` is sample
``s`` of fact ``i``. All randomness is seeded per fact (by the seed and the fact's id), so results
do not depend on how facts are batched.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import einops
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from attribution.corruption import (
    Corruption,
    CorruptionKind,
    allowed,
    embedding_std,
    fact_seed,
    noise_run,
    noised_spans,
    subject_replaced_run,
)
from attribution.metric import FactMetric, Targets
from attribution.positions import POSITION_CLASSES, Positions, position_classes, position_mask, subject_tokens
from attribution.runs import Run, forward
from loka.base.errors import UsageError
from loka.data.encoding import FactBatch, encode_facts
from loka.data.facts import Fact
from loka.data.knowledge import KnowledgeSet
from loka.models import input_device
from loka.models.recording import class_means, record

__all__ = [
    "Baseline",
    "BASELINES",
    "Direction",
    "DIRECTIONS",
    "Baselines",
    "Setup",
    "corrupted_run",
]

Baseline = Literal["zero", "mean", "resample", "corrupt"]
BASELINES: tuple[Baseline, ...] = get_args(Baseline)
Direction = Literal["ablate", "denoise"]
DIRECTIONS: tuple[Direction, ...] = get_args(Direction)


@dataclass(frozen=True, eq=False)  # holds tensors: compare fields, not objects
class Setup:
    """One batch of facts, ready to intervene on.

    ``base`` is the run interventions are applied to (``samples * n_facts`` rows, sample-major):
    the clean facts repeated per sample for ``"ablate"``, the corrupted runs for ``"denoise"``.
    ``sources[hook]`` holds, for every row, the values patched in at ``hook``
    (``[row, pos, ...]``; ``None`` means zeros). When ``base_repeats > 1`` the base rows are that
    many copies of the first ``n_facts`` rows (so a gradient needs the first block only).
    """

    facts: tuple[Fact, ...]
    batch: FactBatch
    samples: int
    base: Run
    targets: Targets
    mask: Bool[Tensor, "row pos"]
    sources: dict[str, Tensor | None]
    base_repeats: int
    clean_metric: Float[Tensor, " fact"] | None = None
    """The clean run's metric per fact when the base run is not clean (denoising), else None."""

    @property
    def n_facts(self) -> int:
        return len(self.facts)

    def per_fact(self, values: Float[Tensor, "... row"]) -> Float[Tensor, "... fact"]:
        """Average the trailing row axis over samples."""
        return einops.reduce(values, "... (sample fact) -> ... fact", "mean", sample=self.samples)


class Baselines:
    """Builds :class:`Setup` s for one attribution: baseline, direction, corruption, donors.

    Construction encodes the knowledge set once, in batches of ``batch_size`` (:attr:`batches`:
    pass each to :meth:`setup`), validates the options against it (and, for ``"mean"``, runs the
    donor set once to average its activations at ``hooks``).
    """

    def __init__(
        self,
        model: Any,
        knowledge: KnowledgeSet,
        *,
        hooks: Sequence[str],
        baseline: str,
        direction: str,
        corruption: Corruption | str | None,
        donors: KnowledgeSet | None,
        positions: Positions,
        metric: FactMetric,
        seed: int = 0,
        samples: int = 1,
        batch_size: int = 16,
        progress: bool = False,
    ) -> None:
        if baseline not in BASELINES:
            raise UsageError(f"unknown baseline {baseline!r}; use one of {allowed(BASELINES)}")
        if direction not in DIRECTIONS:
            raise UsageError(f"unknown direction {direction!r}; use one of {allowed(DIRECTIONS)}")
        if direction == "denoise" and baseline != "corrupt":
            raise UsageError(
                "direction='denoise' restores clean activations into a corrupted run, so it needs "
                f"baseline='corrupt' (got baseline={baseline!r})"
            )
        if baseline != "corrupt" and corruption is not None:
            raise UsageError(f"a corruption only applies to baseline='corrupt', not baseline={baseline!r}")
        self.corruption = Corruption.parse(corruption or "noise") if baseline == "corrupt" else None
        uses_donors = baseline in ("mean", "resample") or (
            self.corruption is not None and self.corruption.kind == "subject"
        )
        if donors is not None and not uses_donors:
            raise UsageError(
                "a donor set (donors=) is only read by baseline='mean', baseline='resample' and the "
                f"'subject' corruption, not by baseline={baseline!r}"
            )
        if donors is not None and not isinstance(donors, KnowledgeSet):
            raise UsageError(f"donors must be a KnowledgeSet, got {type(donors).__name__}")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise UsageError(f"samples must be a positive integer, got {samples!r}")
        if baseline in ("zero", "mean") and samples != 1:
            raise UsageError(f"baseline={baseline!r} is deterministic; samples must be 1, got {samples}")
        if self.corruption is not None and samples != 1:
            raise UsageError(
                "give the number of corrupted samples once, in Corruption(samples=...); "
                f"samples={samples} is for baseline='resample'"
            )

        self.model = model
        self.device = input_device(model)
        self.hooks = tuple(hooks)
        self.baseline: Baseline = baseline  # type: ignore[assignment]
        self.direction: Direction = direction  # type: ignore[assignment]
        self.positions = positions
        self.seed = seed
        self.donors = donors if donors is not None else knowledge
        self.samples = self.corruption.n_samples if self.corruption is not None else samples
        self.noise_std: float | None = None
        self.noised: dict[str, int] = {}
        self.means: dict[str, Tensor] = {}
        self._pool: tuple[str, ...] = ()
        self._donor_lengths: list[int] = []

        # Encode every batch once, and validate everything a batch will need now, not after
        # minutes of work.
        self.batches: list[tuple[tuple[Fact, ...], FactBatch]] = _encoded(knowledge, model, batch_size)
        encoded = [batch for _, batch in self.batches]
        for batch in encoded:
            position_mask(batch, positions)
        self.metric = metric.encoded(knowledge, model)
        if self.corruption is not None:
            if self.corruption.kind == "noise":
                spans = [s for batch in encoded for s in noised_spans(batch, self.corruption.span)]  # ValueError
                self.noised = {span: spans.count(span) for span in ("subject", "prompt")}
                self.noise_std = embedding_std(self.model, encoded, self.corruption.span)
            else:
                has_subject = [has for batch in encoded for has in subject_tokens(batch).any(-1).tolist()]
                missing = [i for i, has in zip(knowledge.ids, has_subject, strict=True) if not has]
                if missing:
                    raise UsageError(
                        f"corruption 'subject' replaces each fact's subject; {len(missing)} fact(s) have none in "
                        f"their prompt, e.g. {missing[0]!r} (corruption='noise' noises their whole prompt instead)"
                    )
                self._pool = self.corruption.subjects or tuple(dict.fromkeys(knowledge.subjects + self.donors.subjects))
        if baseline in ("mean", "resample"):
            donor_batches = encoded if donors is None else [b for _, b in _encoded(donors, model, batch_size)]
            self._donor_lengths = torch.cat([b.answer_positions for b in donor_batches]).tolist()
            if baseline == "mean":
                self.means = self._class_means(donor_batches, progress)

    # ------------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The options as a JSON-ready dict (for result metadata)."""
        out: dict[str, Any] = {"baseline": self.baseline, "direction": self.direction, "samples": self.samples}
        if self.corruption is not None:
            out["corruption"] = self.corruption.to_dict()
            if self.noise_std is not None:
                out["corruption"]["embedding_std"] = self.noise_std
                out["corruption"]["noised"] = dict(self.noised)
        if self.baseline in ("mean", "resample") or (self.corruption and self.corruption.kind == "subject"):
            out["donors"] = {"name": self.donors.name, "n_facts": len(self.donors)}
        if self.baseline in ("resample", "corrupt"):
            out["seed"] = self.seed
        return out

    def setup(self, facts: Sequence[Fact], batch: FactBatch, *, sources: bool = True) -> Setup:
        """Build the base run of ``facts`` (encoded as ``batch``, one of :attr:`batches`); with
        ``sources``, also run whatever the patched-in values come from (corrupted runs, donors,
        or the clean run when denoising)."""
        facts = tuple(facts)
        batch = batch.to(self.device)
        clean = Run(batch.input_ids, batch.attention_mask)
        targets = self.metric.targets(batch)
        mask = position_mask(batch, self.positions)
        s = self.samples
        corrupted = self._corrupted_run(facts, batch) if self.baseline == "corrupt" else None
        if self.direction == "denoise":
            assert corrupted is not None
            base, base_repeats = corrupted, 1
        else:
            base, base_repeats = clean.repeat(s), s
        found: dict[str, Tensor | None] = {}
        clean_metric = None
        if sources and self.direction == "denoise":
            acts, values = self._capture(clean, targets)
            found = {name: act.repeat(s, *[1] * (act.ndim - 1)) for name, act in acts.items()}
            clean_metric = values.cpu()
        elif sources:
            found = self._sources(facts, batch, corrupted, targets)
        return Setup(
            facts=facts,
            batch=batch,
            samples=s,
            base=base,
            targets=targets.repeat(s),
            mask=mask.repeat(s, 1),
            sources=found,
            base_repeats=base_repeats,
            clean_metric=clean_metric,
        )

    # ------------------------------------------------------------------------------------------
    def _capture(self, run: Run, targets: Targets) -> tuple[dict[str, Tensor], Tensor]:
        """The activations at ``self.hooks`` on ``run``, and the metric of its rows."""
        store: dict[str, Tensor] = {}
        values = forward(self.model, run, targets, hooks=[record(store, name) for name in self.hooks])[0]
        return store, values

    def _sources(
        self, facts: tuple[Fact, ...], batch: FactBatch, corrupted: Run | None, targets: Targets
    ) -> dict[str, Tensor | None]:
        """Ablation sources: what replaces each clean activation, for every row."""
        s = self.samples
        if self.baseline == "zero":
            return dict.fromkeys(self.hooks)
        if self.baseline == "mean":
            classes = position_classes(batch).clamp(min=0)  # padding reads class 0; it never matters
            return {name: self.means[name][classes].repeat(s, *[1] * (self.means[name].ndim)) for name in self.hooks}
        if self.baseline == "corrupt":
            assert corrupted is not None
            return dict(self._capture(corrupted, targets.repeat(s))[0])
        return self._donor_sources(facts, batch)

    # corruption -------------------------------------------------------------------------------
    def _corrupted_run(self, facts: tuple[Fact, ...], batch: FactBatch) -> Run:
        assert self.corruption is not None
        if self.corruption.kind == "noise":
            assert self.noise_std is not None
            return noise_run(self.model, facts, batch, self.corruption, std=self.noise_std, seed=self.seed)
        return subject_replaced_run(self.model, facts, batch, self.corruption, pool=self._pool, seed=self.seed)

    # resample ---------------------------------------------------------------------------------
    def _donors(self, fact: Fact, length: int) -> list[int]:
        """Indices into the donor set of ``samples`` donors for ``fact``."""
        candidates = [
            j
            for j, other in enumerate(self.donors.facts)
            if other.id != fact.id and (fact.subject is None or other.subject != fact.subject)
        ]
        if not candidates:
            raise UsageError(
                f"baseline='resample' needs another fact to take activations from; the donor set "
                f"{self.donors.name!r} has none for fact {fact.id!r} (pass a larger donors=...)"
            )
        same = [j for j in candidates if self._donor_lengths[j] == length]
        pool = same or candidates
        rng = random.Random(fact_seed(self.seed, fact.id))
        return [pool[rng.randrange(len(pool))] for _ in range(self.samples)]

    def _donor_sources(self, facts: tuple[Fact, ...], batch: FactBatch) -> dict[str, Tensor | None]:
        answer = batch.answer_positions
        picked = [self._donors(fact, int(answer[i])) for i, fact in enumerate(facts)]
        donor_facts = [self.donors.facts[picked[i][s]] for s in range(self.samples) for i in range(len(facts))]
        donor_batch = encode_facts(donor_facts, self.model).to(self.device)
        donor_run = Run(donor_batch.input_ids, donor_batch.attention_mask)
        acts, _ = self._capture(donor_run, metric_free_targets(donor_batch))
        # Align at the last prompt token: position p of the fact reads position p - a + a' of the donor.
        width = batch.input_ids.shape[1]
        index = torch.arange(width, device=self.device)[None] - answer.repeat(self.samples)[:, None]
        index = index + donor_batch.answer_positions[:, None]
        index = index.clamp(min=0).minimum(donor_batch.attention_mask.sum(-1, keepdim=True) - 1)
        out: dict[str, Tensor | None] = {}
        for name, act in acts.items():
            expanded = index.view(*index.shape, *[1] * (act.ndim - 2)).expand(-1, -1, *act.shape[2:])
            out[name] = act.gather(1, expanded)
        return out

    # mean -------------------------------------------------------------------------------------
    def _class_means(self, donor_batches: Sequence[FactBatch], progress: bool) -> dict[str, Tensor]:
        """Per hook, the mean activation of every position class over the donor set
        (``[n_classes, ...]``); a class the donors never have gets the mean over all tokens."""
        batches = (
            ({"input_ids": b.input_ids, "attention_mask": b.attention_mask}, position_classes(b))
            for b in (batch.to(self.device) for batch in donor_batches)
        )
        n_classes = len(POSITION_CLASSES)
        shown = tqdm(batches, total=len(donor_batches), disable=not progress, desc="mean activations", leave=False)
        per_class, counts = class_means(self.model, shown, self.hooks, n_classes)
        means = {}
        for name, mean in per_class.items():
            weights = (counts / counts.sum()).view(n_classes, *[1] * (mean.dim() - 1))
            overall = (mean * weights).sum(0)
            mean[counts == 0] = overall
            means[name] = mean.to(self.device)
        return means


def metric_free_targets(batch: FactBatch) -> Targets:
    """Targets for a run whose metric nobody reads (the log-prob of the batch's own targets)."""
    return Targets("log_prob", batch.prediction_positions, batch.target_ids, batch.target_mask)


def corrupted_run(
    model: Any,
    knowledge: KnowledgeSet,
    corruption: Corruption | CorruptionKind = "noise",
    *,
    donors: KnowledgeSet | None = None,
    seed: int = 0,
) -> Run:
    """The corrupted runs of every fact of ``knowledge``, exactly as attribution builds them:
    ``samples * len(knowledge)`` rows, sample-major, right-padded to the longest fact.

    For ``"subject"`` the rows hold the replaced token ids; for ``"noise"`` the clean ids plus
    ``embed_noise`` (added to ``hook_embed``). Useful to inspect a corruption, or to feed the
    same corrupted inputs to another tool.
    """
    corruption = Corruption.parse(corruption)
    baselines = Baselines(
        model,
        knowledge,
        hooks=(),
        baseline="corrupt",
        direction="denoise",
        corruption=corruption,
        donors=donors if corruption.kind == "subject" else None,
        positions="all",
        metric=FactMetric(),
        seed=seed,
        batch_size=len(knowledge),
    )
    return baselines.setup(*baselines.batches[0], sources=False).base


def _encoded(knowledge: KnowledgeSet, model: Any, batch_size: int) -> list[tuple[tuple[Fact, ...], FactBatch]]:
    """The facts of ``knowledge`` in batches of ``batch_size``, each encoded once."""
    chunks = [knowledge.facts[i : i + batch_size] for i in range(0, len(knowledge), batch_size)]
    return [(facts, encode_facts(facts, model)) for facts in chunks]
