"""The residual-knowledge probe (the model-update check): is a fact still readable inside the model
after its output is gone?

An edit can stop a model from *saying* a fact while the fact is still computed inside it: the
answer is suppressed on the way out, not erased (Hong et al. 2024, "Intrinsic evaluation of
unlearning using parametric knowledge traces"; Lynch et al. 2024, "Eight methods to evaluate
robust unlearning in LLMs", use linear probes the same way). The probe asks the model's own
activations, not its output:

1. For every fact, run its prompt and take the input of each block's MLP at the **last prompt
   token** (the position that predicts the answer). Fitting and reading use the same prompts.
2. Per relation (birthplace, employer, ...), fit a multinomial logistic regression (sklearn,
   standardised features) from that vector to the relation's value, on **retain** facts: people
   the model knows and is meant to keep knowing. Fitting never sees a forget fact.
3. Choose the block on retain people held out of the fit (25%, split by person), refit there on
   all retain facts, and read every **forget** fact. ``forget_accuracy`` is the share read
   correctly; ``forget_correct`` says which.

A model that never saw the forget people (the exact-retrain oracle) holds nothing about them, so
its probe reads them at chance; the original model's probe reads them as well as it reads
held-out retain people. :func:`probe_informative` tells whether a probe separates the two at all
(a paired bootstrap over people); where it does not, report "uninformative", not a number.

Why this site. Measured on the default testbed (4-layer GPT-2, 340 retain and 20 forget people,
5 relations with 16 values each, 100 forget facts; always guessing each relation's most common
forget value scores 0.16). Forget readout of the original and of the oracle, held-out retain
accuracy of the original in brackets; logistic regression, C = 0.1, the facts' own prompts:

==============================================  ======================  ======
site                                            original (held-out)     oracle
==============================================  ======================  ======
last subject token, residual after block 0..3   0.11-0.19 (0.15-0.16)   ~0.05
mean over the subject's tokens, after 0..3      0.11-0.12 (0.10-0.13)   ~0.04
last prompt token, residual after block 0       0.05 (0.16)             0.05
last prompt token, residual after block 1       0.25 (0.26)             0.04
last prompt token, residual after block 2       0.54 (0.54)             0.08
last prompt token, MLP input of block 0 / 1     0.08 / 0.25             0.06
last prompt token, MLP input of block 2         0.43 (0.44)             0.05
last prompt token, MLP input of block 3         **0.82 (0.82)**         0.07
last prompt token, final residual (output)      0.96 (0.91)             0.05
==============================================  ======================  ======

In a model this small the subject's tokens carry the name, not linearly readable attributes
(unlike the enriched subject representations of Geva et al. 2023, "Dissecting recall of factual
associations in auto-regressive language models"): the last position's attention heads read the
name's tokens one by one, and the answer is assembled at the last position. So the probe reads the
last prompt token, and only *upstream of the final MLP*. The final residual stream is what the
unembedding reads: a probe there re-reads the output (the behavioural forget accuracy already
measures that) and misses an edit confined to the output side (the final MLP, the final layer
norm, the unembedding), the cheapest way to make a model stop saying a fact. Constructed case:
fine-tuning only the last MLP until the default testbed's original says none of the forget answers
(forget 1.00 -> 0.00, retain 0.999 -> 1.00) drops a final-residual probe from 0.96 to 0.12, while
this probe still reads 0.82 (oracle 0.07). The input of the last block's MLP is the latest site
before the output side; held-out retain accuracy chooses it on the default testbed (per block
0.14 / 0.28 / 0.42 / 0.83); every block is a candidate, so a deeper model may choose an earlier
one. Concatenating blocks lowered held-out accuracy (0.73-0.77: more features, the same ~20
examples per value); C in 0.1-3 gave 0.80-0.82 (0.03: 0.78); shrinkage LDA 0.78. Fitting costs
about 1.7 s of one CPU core per model.

The readout is limited by the retain people per value: fitted on the 204 people of
``Protocol.retain_train`` it reads 0.69 of the forget facts (oracle 0.04). ``templates`` (the
wordings the model was trained on) fits on every wording and reads each forget fact by summing its
wordings' log-probabilities: 0.84 with all retain people (held-out 0.88, oracle 0.06), 0.77 with
``retain_train`` (oracle 0.03), at about 3x the cost.

Under a process group the forward passes that read the states are shared out over the ranks
(:mod:`loka.base.distributed`); every rank gathers all states and fits the same probe.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

from loka.base.distributed import agreed, gather_rows, shard
from loka.base.errors import UsageError
from loka.data.facts import Fact
from loka.data.knowledge import KnowledgeSet
from loka.evaluation.intervals import paired_gap
from loka.models import architecture, hf_model, input_device
from loka.models import logits as model_logits
from loka.models.weights import hf_submodule

__all__ = ["Probe", "fit_probe", "probe_gap", "probe_informative", "MIN_RETAIN_PEOPLE"]

MIN_RETAIN_PEOPLE = 4
"""Fewest retain people (by subject; facts without one count alone) a probe is fitted on."""
_HELD_OUT = 0.25  # share of retain people that chooses the block
_C = 0.1  # inverse L2 strength of every logistic regression (standardised features)


@dataclass(frozen=True)
class Probe:
    """Per-relation logistic-regression probes on the input of block ``layer``'s MLP at the last
    prompt token, fitted on retain facts and read on forget facts.

    ``forget_correct[i]`` is whether forget fact ``i`` (in the forget set's order) was read
    correctly; it is False where the fact is not readable (``forget_readable[i]`` False: its
    relation has no probe, because the retain facts have fewer than two values for it).
    ``forget_accuracy`` is the mean over readable facts. ``forget_people`` names each fact's
    person (its subject, or ``fact:{id}`` when it has none), the unit to resample over.
    ``layer_retain_accuracy`` / ``layer_forget_accuracy`` hold, for every block, the held-out
    retain accuracy that chose ``layer`` and the forget readout of the probe fitted without the
    held-out people (None for the blocks not tried when ``fit_probe`` was given a ``layer``, so that
    two evaluations of one model compare equal).
    """

    layer: int
    retain_accuracy: float  # held-out retain people, at the chosen block
    forget_accuracy: float
    chance: float  # always guessing each relation's most common forget value (readable facts)
    forget_correct: tuple[bool, ...] = ()
    forget_readable: tuple[bool, ...] = ()
    forget_ids: tuple[str, ...] = ()
    forget_people: tuple[str, ...] = ()
    layer_retain_accuracy: tuple[float | None, ...] = ()
    layer_forget_accuracy: tuple[float | None, ...] = ()
    n_retain_people: int = 0


def fit_probe(
    model: Any,
    tokenizer: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    seed: int = 0,
    templates: Mapping[str, Sequence[str]] | None = None,
    layer: int | None = None,
    batch_size: int = 128,
) -> Probe:
    """Fit the probe on ``retain`` and read ``forget`` (see the module docstring).

    ``model`` is a TransformerBridge or an HF causal LM (GPT-2, NeoX or Llama). ``seed`` picks the
    held-out retain people. ``templates`` maps a relation to extra wordings (``"{s} was born
    in"``, ``{s}`` is the subject) that the model was trained on: every fact with a subject and
    that relation is then also read through those wordings. ``layer`` fixes the block instead of
    choosing it on held-out retain people.
    """
    for name, value in (("forget", forget), ("retain", retain)):
        if not isinstance(value, KnowledgeSet):
            raise UsageError(f"{name} must be a KnowledgeSet, got {type(value).__name__}")
    n_layers = int(hf_model(model).config.num_hidden_layers)
    if layer is not None and not (isinstance(layer, int) and 0 <= layer < n_layers):
        raise UsageError(f"layer must be a block index in range(0, {n_layers}) or None, got {layer!r}")
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}")
    _check_templates(templates, (*forget, *retain))
    retain_people = _people(retain)
    if len(set(retain_people)) < MIN_RETAIN_PEOPLE:
        raise UsageError(
            f"the probe needs retain facts about at least {MIN_RETAIN_PEOPLE} people to fit and choose a block "
            f"on, got {len(set(retain_people))}"
        )
    probed = _probed_relations(retain)
    readable = tuple(f.relation in probed for f in forget)
    if not any(readable):
        wanted = sorted({str(f.relation) for f in forget})
        raise UsageError(
            f"no forget fact can be read: the probe is fitted per relation on retain facts, and the retain facts "
            f"have fewer than two values for every forget relation ({', '.join(wanted)})"
        )
    with warnings.catch_warnings():  # few examples per value is expected here
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        warnings.filterwarnings("ignore", message="The number of unique classes", category=UserWarning)
        return _fit(model, tokenizer, forget, retain, readable, retain_people, seed, templates, layer, batch_size)


def _check_templates(templates: Mapping[str, Sequence[str]] | None, facts: Sequence[Fact]) -> None:
    if templates is None:
        return
    if not isinstance(templates, Mapping):
        raise UsageError(f"templates must map a relation to wordings with '{{s}}', got {type(templates).__name__}")
    for relation, wordings in templates.items():
        if isinstance(wordings, str) or not all(isinstance(w, str) and "{s}" in w for w in wordings):
            raise UsageError(f"templates[{relation!r}] must be a list of wordings that each contain '{{s}}'")
    usable = {f.relation for f in facts if f.subject is not None and f.relation in templates}
    if not usable:
        raise UsageError(
            f"templates name the relations {sorted(templates)}, but no fact with a subject has one of them; "
            "a wording needs the fact's subject and relation"
        )


def _people(knowledge: KnowledgeSet) -> tuple[str, ...]:
    return tuple(f.subject if f.subject is not None else f"fact:{f.id}" for f in knowledge)


def _probed_relations(retain: KnowledgeSet) -> set[str | None]:
    values: dict[str | None, set[str]] = {}
    for fact in retain:
        values.setdefault(fact.relation, set()).add(fact.target)
    return {relation for relation, seen in values.items() if len(seen) >= 2}


def _prompts(fact: Fact, templates: Mapping[str, Sequence[str]] | None) -> list[str]:
    """The fact's own prompt, then its relation's other wordings (facts with a subject only)."""
    prompts = [fact.prompt]
    if templates is not None and fact.subject is not None and fact.relation in templates:
        for template in templates[fact.relation]:
            prompt = template.format(s=fact.subject)
            if prompt not in prompts:
                prompts.append(prompt)
    return prompts


def _mlp_inputs(model: Any) -> list[nn.Module]:
    """Per block, the module that owns the MLP's (first) input projection: its input is what the
    block's MLP reads. Found through loka.models' weight names, so a bridge works too."""
    hf = hf_model(model)
    spec = architecture(model)
    n_layers = int(hf.config.num_hidden_layers)
    names = [spec.name(spec.mlp_in_weights[0], layer).rpartition(".")[0] for layer in range(n_layers)]
    return [hf_submodule(hf, name) for name in names]


@torch.no_grad()
def _states(model: Any, tokenizer: Any, facts: Sequence[Fact], batch_size: int) -> np.ndarray:
    """MLP inputs at each fact's last prompt token, ``[layer, fact, d_model]`` (float32)."""
    hf = hf_model(model)
    device = input_device(hf)
    modules = _mlp_inputs(model)
    out: list[list[Tensor]] = [[] for _ in modules]
    rows: Tensor | None = None
    positions: Tensor | None = None

    def grab(layer: int) -> Any:
        def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
            state = args[0]  # on this block's device, which a device_map may make another one
            out[layer].append(state[rows.to(state.device), positions.to(state.device)].float().cpu())

        return hook

    handles = [module.register_forward_pre_hook(grab(layer)) for layer, module in enumerate(modules)]
    starts = range(0, len(facts), batch_size)
    local: list[list[Tensor]] = []  # per batch of this rank: its states, layer by layer
    try:
        with agreed():
            for index in shard(starts):  # data parallel: this rank's block of the batches
                start = starts[index]
                batch = KnowledgeSet(tuple(facts[start : start + batch_size])).encode(tokenizer).to(device)
                rows, positions = torch.arange(len(batch), device=device), batch.answer_positions
                model_logits(model, batch.input_ids, attention_mask=batch.attention_mask)  # the hooks keep them
                local.append([parts[-1] for parts in out])
    finally:
        for handle in handles:
            handle.remove()
    batches = gather_rows(local)  # every rank's, in order
    return np.stack([torch.cat([states[layer] for states in batches]).numpy() for layer in range(len(modules))])


def _read(model: Any, tokenizer: Any, knowledge: KnowledgeSet, templates: Any, batch_size: int) -> tuple:
    """States of every (fact, wording) pair and the index of the fact each row belongs to."""
    facts, owner = [], []
    for index, fact in enumerate(knowledge):
        for j, prompt in enumerate(_prompts(fact, templates)):
            facts.append(Fact(f"{index}/{j}", prompt, fact.target, fact.subject, fact.relation))
            owner.append(index)
    return _states(model, tokenizer, facts, batch_size), np.array(owner)


class _RelationProbe:
    """One logistic regression per relation; reads a fact by summing its wordings' log-probabilities."""

    def __init__(self, x: np.ndarray, relations: np.ndarray, targets: np.ndarray, probed: set) -> None:
        self.models: dict[Any, Any] = {}
        for relation in probed:
            mask = relations == relation
            if len(set(targets[mask])) >= 2:
                pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=_C, max_iter=500))
                self.models[relation] = pipeline.fit(x[mask], targets[mask])

    def predict(self, x: np.ndarray, relations: np.ndarray, owner: np.ndarray, n: int) -> list[str | None]:
        """The value read for each of ``n`` facts (None where the relation has no probe)."""
        out: list[str | None] = [None] * n
        for relation, model in self.models.items():
            rows = np.flatnonzero(relations == relation)
            if not len(rows):
                continue
            log_p = model.predict_log_proba(x[rows])
            facts = np.unique(owner[rows])
            summed = np.zeros((len(facts), log_p.shape[1]))
            np.add.at(summed, np.searchsorted(facts, owner[rows]), log_p)
            for fact, best in zip(facts, summed.argmax(1), strict=True):
                out[int(fact)] = str(model.classes_[best])
        return out


def _fit(
    model: Any,
    tokenizer: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    readable: tuple[bool, ...],
    retain_people: tuple[str, ...],
    seed: int,
    templates: Mapping[str, Sequence[str]] | None,
    layer: int | None,
    batch_size: int,
) -> Probe:
    probed = _probed_relations(retain)
    retain_x, retain_owner = _read(model, tokenizer, retain, templates, batch_size)
    forget_x, forget_owner = _read(model, tokenizer, forget, templates, batch_size)

    def column(knowledge: KnowledgeSet, owner: np.ndarray, key: str) -> np.ndarray:
        return np.array([getattr(knowledge[int(i)], key) for i in owner], dtype=object)

    retain_rel, retain_y = column(retain, retain_owner, "relation"), column(retain, retain_owner, "target")
    forget_rel = column(forget, forget_owner, "relation")
    targets = [f.target for f in forget]

    def hits(predicted: list[str | None], truth: Sequence[str]) -> np.ndarray:
        return np.array([p is not None and p == t for p, t in zip(predicted, truth, strict=True)])

    # choose the block on held-out retain people (only facts of a probed relation are scored)
    people = np.array(retain_people, dtype=object)[retain_owner]
    split = GroupShuffleSplit(n_splits=1, test_size=_HELD_OUT, random_state=seed)
    fit_rows, held_rows = next(split.split(retain_x[0], groups=people))
    held_rows = held_rows[np.isin(retain_owner[held_rows], [i for i, f in enumerate(retain) if f.relation in probed])]
    held_facts, held_owner = np.unique(retain_owner[held_rows], return_inverse=True)
    held_truth = [retain[int(i)].target for i in held_facts]
    layers = range(retain_x.shape[0]) if layer is None else [layer]
    retain_scores, forget_scores = [], []
    for candidate in range(retain_x.shape[0]):
        if candidate not in layers:
            retain_scores.append(float("nan"))
            forget_scores.append(float("nan"))
            continue
        probe = _RelationProbe(retain_x[candidate][fit_rows], retain_rel[fit_rows], retain_y[fit_rows], probed)
        read = probe.predict(retain_x[candidate][held_rows], retain_rel[held_rows], held_owner, len(held_facts))
        retain_scores.append(float(hits(read, held_truth).mean()) if len(held_facts) else float("nan"))
        read = probe.predict(forget_x[candidate], forget_rel, forget_owner, len(forget))
        forget_scores.append(float(hits(read, targets)[list(readable)].mean()))
    if layer is not None:
        chosen = layer
    elif np.isnan(retain_scores).all():  # no held-out person has a probed relation: take the latest block
        chosen = len(retain_scores) - 1
    else:
        chosen = int(np.nanargmax(retain_scores))

    # refit on every retain fact and read the forget facts
    probe = _RelationProbe(retain_x[chosen], retain_rel, retain_y, probed)
    correct = hits(probe.predict(forget_x[chosen], forget_rel, forget_owner, len(forget)), targets)
    mask = np.array(readable)
    chance_hits = 0
    for relation in {f.relation for f, ok in zip(forget, readable, strict=True) if ok}:
        values = [f.target for f, ok in zip(forget, readable, strict=True) if ok and f.relation == relation]
        chance_hits += max(values.count(v) for v in set(values))
    return Probe(
        layer=chosen,
        retain_accuracy=retain_scores[chosen],
        forget_accuracy=float(correct[mask].mean()),
        chance=chance_hits / int(mask.sum()),
        forget_correct=tuple(bool(c) for c in correct),
        forget_readable=readable,
        forget_ids=forget.ids,
        forget_people=_people(forget),
        layer_retain_accuracy=tuple(None if np.isnan(v) else v for v in retain_scores),  # None: not tried
        layer_forget_accuracy=tuple(None if np.isnan(v) else v for v in forget_scores),
        n_retain_people=len(set(retain_people)),
    )


def probe_gap(
    original: Probe, oracle: Probe, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """How much better ``original`` reads the forget facts than ``oracle``: the difference of
    their forget accuracies and its one-sided lower confidence bound, from a paired bootstrap over
    people (:func:`loka.evaluation.intervals.paired_gap`)."""
    if not original.forget_ids or original.forget_ids != oracle.forget_ids:
        raise UsageError("the two probes must read the same forget facts (fit both with the same forget set)")
    readable = np.array(original.forget_readable) & np.array(oracle.forget_readable)
    if not readable.any():
        raise UsageError("no forget fact is readable by both probes")
    people = np.array(original.forget_people, dtype=object)[readable]
    a = np.array(original.forget_correct, dtype=float)[readable]
    b = np.array(oracle.forget_correct, dtype=float)[readable]
    return paired_gap(people, a, b, confidence=confidence, n_resamples=n_resamples, seed=seed)


def probe_informative(original: Probe, oracle: Probe, *, confidence: float = 0.95, seed: int = 0) -> bool:
    """Whether the probe tells the original model from the oracle: the original reads the forget
    facts better than the oracle, with the lower bound of :func:`probe_gap` above zero. When it
    is False, a probe reading of an edited model means nothing: report it as uninformative."""
    gap, low = probe_gap(original, oracle, confidence=confidence, seed=seed)
    return gap > 0 and low > 0
