"""A planted testbed: facts written into known neurons, the answer key for locators.

A locator (attribution) says *which* components carry some knowledge. On an ordinary model
nobody knows the right answer, so a locator can only be judged indirectly. Here the answer is
made known by construction, as in Chang et al.'s INJ benchmark (NAACL 2024, see
``notes/localization.md``): start from the testbed's trained original, invent a few **new
people** (drawn by the same generator as the testbed's people, so their names and values look
like everyone else's), and teach the model their facts by training **only** a chosen set of MLP
neurons per person. A neuron's own weights are its ``W_in`` column, its ``b_in`` entry and its
``W_out`` row (:func:`loka.models.neuron_input_weights`, :func:`loka.models.neuron_output_weights`);
every other weight stays bit-identical. Whatever the planted model knows about a new person that
the original did not, it can only have learned in that person's neurons, so those neurons are the
ground truth: Recall@k of a locator is the share of them in its top k% per layer.

How planting works (:func:`load_planted`):

* **Neurons.** Each person gets ``ceil(ratio * n_layers * d_mlp)`` neurons (at least 8), spread
  evenly over the layers (a layer gets ``count // n_layers``; the remaining ones go round-robin
  from a random layer) at random indices, disjoint between people, seeded.
* **Data.** A person's facts under every *training* template, read as the testbed reads its own
  people (``BOS + prompt + " value." + EOS``); the loss is on the answer tokens by default
  (``fact_loss="all"``: every token, the testbed's own recipe, learns new people several times
  slower); the held-out template stays a paraphrase nobody trained on.
* **One person at a time, only their neurons.** A *stage* trains person ``p``: Adam on the
  gradient masked to ``p``'s slices (a fresh optimizer, so no other entry can move), on ``p``'s
  wordings plus ``retain_per_step`` texts drawn from the *retain mix* (the training texts of
  ``mix_fraction`` of the testbed's retain people, and of the planted people already learned),
  plus a *do-no-harm* term: the KL divergence, at the answer positions of every other planted
  person's wordings, from what the model predicted when the stage began. The KL teaches ``p``'s
  neurons nothing about the others (its gradient is zero until ``p``'s neurons disturb them), so
  a person's facts live in their own neurons only. Training all people at once with their
  gradients routed to their own neurons did not converge on the tiny testbed: with nothing
  telling ``p``'s neurons to leave the other new names alone, they learned "an unfamiliar name
  means ``p``'s answers", and the people overwrote each other.
* **Stop rule.** Every ``check_every`` steps the answer accuracy of every planted person over their
  trained wordings and of the mixed retain people is measured (:func:`loka.scoring.metrics.score_facts`);
  a stage ends when ``p`` is at ``target_accuracy`` *and* the mixed retain people are within
  ``retain_tolerance`` of the original (stopping at the first step where ``p`` is learned left
  retain at 0.78-0.84 on the default testbed). Then the first person below the target (one that
  a later stage disturbed) gets another stage; planting ends when everyone is learned, or fails
  at ``max_steps`` steps in all (a UsageError; nothing is cached).

* **Pruning** (``prune_tolerance``, default 0.01 nats; ``None`` skips it). Adam moves every
  trained neuron, but on the default testbed (2%: 41 neurons a person) about half of them end
  up carrying nothing: putting those back to the original leaves the person's facts, the other
  people and retain exactly as they were, while putting back the other half takes the person to
  -5.5 to -7.0 nats (measured on seed 0). No locator can find a neuron that does nothing, so an
  answer key that lists them measures the planting, not the locator. So after planting, each
  person's neurons are put back to the original one at a time, weakest first (the drop in the
  person's mean log-probability when that neuron alone is put back), while the drop since
  pruning began stays within ``prune_tolerance``, the person and every other planted person
  stay at ``target_accuracy``, and at least one neuron remains. Pruning does not look at the
  mixed retain people: putting neurons back can cost them a little (default testbed, seeds 0-2,
  both ratios: 0.98 at the end of planting, 0.951-0.972 after pruning). The answer key is what remains:
  exactly the neurons that differ from the original (``planted.safetensors`` also holds the
  ``trained`` sets; ``planted.json`` every trained neuron's effect). :data:`MIN_NEURONS` bounds
  the *planting* (every person is trained into at least 8 neurons), not the key. Recipe 2 also
  stopped pruning at 8 neurons, and undid a person's pruning when it left another person below
  the target; at the 0.5% ratio (11 trained neurons a person on the default testbed) that kept
  28% of the key's neurons that carry nothing even together (put back all at once, they cost
  their person 0.000-0.012 nats and no answer; seeds 0-2), which no locator can find (recipe 3).

Every entry outside the answer key's slices is bit-identical to the original afterwards (checked
before saving, and by the tests). Measured (CPU): the default testbed, 4 people x 41 neurons
(2%), 250 steps, 37 s, retain (untouched people) 1.00 -> 0.94; the tiny testbed, 2 people x 11
neurons, 125 steps, 3 s, retain 1.00 -> 0.97 (4 people there take 1425 steps and leave 0.81: two
of them share three of five answers and their neurons keep pulling on each other).

The result is cached like the testbed, in ``planted-{size}-{hash of the config}`` beside the
testbed directories: the planted model as a Hugging Face directory, the planted neurons as
safetensors, everything a person reads (config, people, their neurons as ``L{l}N{i}`` labels,
accuracies before and after, timing) as JSON, and the knowledge sets as JSONL.

The model before planting *is* the testbed's original, so it is an exact oracle for the new
people: ``oracle_dir`` points at it, and forgetting them perfectly means answering like it.

>>> planted = load_planted("default", ratio=0.02, n_people=4)     # doctest: +SKIP
>>> model = loka.load_model(planted.model_dir)                      # doctest: +SKIP
>>> planted.planted["Kalo Mimi"].components[:2]                     # doctest: +SKIP
[Component(kind='neuron', layer=0, index=17), Component(kind='neuron', layer=0, index=203)]
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from jaxtyping import Bool, Float
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from loka.base.checks import check_number
from loka.base.components import Component, from_masks
from loka.base.errors import UsageError
from loka.data.facts import Fact
from loka.data.knowledge import KnowledgeSet
from loka.models import neuron_input_weights, neuron_output_weights, quiet_transformers
from loka.scoring.metrics import score_facts
from loka.testbed import SIZES, Size, Testbed, default_cache_dir, load, testbed_config, worker
from loka.testbed.world import Person, World, person_names

__all__ = [
    "MIN_NEURONS",
    "PlantConfig",
    "PlantedNeurons",
    "PlantedTestbed",
    "load_planted",
    "new_people",
    "planted_neurons",
]

logger = logging.getLogger(__name__)

FactLoss = Literal["all", "answer"]
FACT_LOSSES: tuple[FactLoss, ...] = get_args(FactLoss)
MIN_NEURONS = 8
"""The fewest neurons a person may be planted into (a smaller set is too easy to find by chance);
pruning may leave fewer in the answer key, the ones the facts need."""
# bump when planting changes in a way the config does not capture
# 2: the pruning step (prune_tolerance); 3: pruning may go below MIN_NEURONS, and checks every person at each step
PLANT_RECIPE_VERSION = 3
INFO_FILE = "planted.json"
NEURONS_FILE = "planted.safetensors"


def _check_open(name: str, value: Any, low: float, high: float, *, high_closed: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (low < value and (value <= high if high_closed else value < high)):
        interval = f"({low:g}, {high:g}{']' if high_closed else ')'}"
        raise UsageError(f"{name} must be a number in {interval}, got {value!r}")


@dataclass(frozen=True)
class PlantConfig:
    """Everything that determines a planted testbed; its hash (with the testbed's) names the cache.

    ``size`` and ``world_seed`` pick the testbed (``loka.testbed.load(size, world_seed)``) whose
    original is planted into. ``ratio`` is the share of all MLP neurons (``n_layers * d_mlp``)
    each of the ``n_people`` new people gets (``ceil(ratio * n_layers * d_mlp)`` neurons, at least
    8; the people's sets are disjoint, so ``n_people`` of them must fit). ``seed`` draws the
    people, their neurons and the retain mix. Training (see the module docstring): Adam at ``lr``
    (no weight decay) for at most ``max_steps`` steps in all; every ``check_every`` steps a
    person's answer accuracy over their trained wordings is checked against ``target_accuracy``
    and the mixed retain people's against the original's minus ``retain_tolerance``;
    ``retain_per_step`` retain texts per step, drawn from the ``mix_fraction`` of the testbed's
    retain people (the *mixed* people; the others are :attr:`PlantedTestbed.retain`);
    ``fact_loss`` is ``"answer"`` (answer tokens) or ``"all"`` (every token, the testbed's recipe).
    ``prune_tolerance`` (nats, or ``None`` to keep every trained neuron) bounds the pruning step
    (the module docstring): how much of a person's mean log-probability putting back their spare
    neurons may cost. Invalid values raise a one-line UsageError when the config is made.
    """

    size: Size = "default"
    world_seed: int = 0
    ratio: float = 0.02
    n_people: int = 4
    seed: int = 0
    max_steps: int = 3000
    lr: float = 1e-2
    target_accuracy: float = 1.0
    check_every: int = 25
    retain_per_step: int = 16
    mix_fraction: float = 0.5
    fact_loss: FactLoss = "answer"
    retain_tolerance: float = 0.02
    prune_tolerance: float | None = 0.01

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise UsageError(f"unknown testbed size {self.size!r}; choose one of {', '.join(SIZES)}")
        check_number("world_seed", self.world_seed, low=0, integer=True)
        check_number("seed", self.seed, low=0, integer=True)
        _check_open("ratio", self.ratio, 0.0, 1.0)
        check_number("n_people", self.n_people, low=1, integer=True)
        check_number("max_steps", self.max_steps, low=1, integer=True)
        _check_open("lr", self.lr, 0.0, math.inf)
        _check_open("target_accuracy", self.target_accuracy, 0.0, 1.0, high_closed=True)
        check_number("check_every", self.check_every, low=1, integer=True)
        check_number("retain_per_step", self.retain_per_step, low=0, integer=True)
        _check_open("mix_fraction", self.mix_fraction, 0.0, 1.0)
        if (
            isinstance(self.retain_tolerance, bool)
            or not isinstance(self.retain_tolerance, int | float)
            or not (0 <= self.retain_tolerance <= 1)
        ):
            raise UsageError(f"retain_tolerance must be a number in [0, 1], got {self.retain_tolerance!r}")
        if self.prune_tolerance is not None:
            check_number("prune_tolerance", self.prune_tolerance, low=0)
        if self.fact_loss not in FACT_LOSSES:
            raise UsageError(f"unknown fact_loss {self.fact_loss!r}; choose one of {', '.join(FACT_LOSSES)}")
        n_layers, d_mlp = self.shape
        count, total = self.neurons_per_person, n_layers * d_mlp
        if count < MIN_NEURONS:
            raise UsageError(
                f"ratio={self.ratio:g} plants {count} neuron(s) per person in the {self.size} testbed's {total} "
                f"MLP neurons; at least {MIN_NEURONS} are needed (ratio >= {MIN_NEURONS / total:.4g})"
            )
        if count * self.n_people > total:
            raise UsageError(
                f"{self.n_people} people x {count} neurons (ratio={self.ratio:g}) is more than the {total} MLP "
                f"neurons of the {self.size} testbed; lower ratio or n_people"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_layers, d_mlp)`` of the testbed's model."""
        model = testbed_config(self.size, self.world_seed).model
        return model.n_layers, model.d_mlp

    @property
    def neurons_per_person(self) -> int:
        """``ceil(ratio * n_layers * d_mlp)``: the smallest count that is at least that share."""
        n_layers, d_mlp = self.shape
        return math.ceil(self.ratio * n_layers * d_mlp - 1e-9)

    def key(self) -> str:
        blob = json.dumps(
            {
                "recipe": PLANT_RECIPE_VERSION,
                "config": asdict(self),
                "testbed": testbed_config(self.size, self.world_seed).key(),
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class PlantedNeurons:
    """The neurons one person's facts were planted into: ``mask[l, i]`` is True for neuron ``i`` of layer ``l``."""

    person: str
    mask: Bool[Tensor, "n_layers d_mlp"]

    @property
    def components(self) -> list[Component]:
        """The planted neurons as ``("neuron", layer, index)`` addresses, in (layer, index) order."""
        return from_masks(self.mask, None)

    @property
    def per_layer(self) -> list[int]:
        return self.mask.sum(dim=1).tolist()

    def __len__(self) -> int:
        return int(self.mask.sum())


@dataclass(frozen=True)
class PlantedTestbed:
    """A built planted testbed (see the module docstring)."""

    __test__ = False  # not a pytest class

    root: Path
    config: PlantConfig
    testbed: Testbed
    people: tuple[Person, ...]
    planted: dict[str, PlantedNeurons] = field(hash=False)
    info: dict[str, Any] = field(hash=False)

    @property
    def model_dir(self) -> Path:
        """The planted model (a Hugging Face directory)."""
        return self.root / "planted"

    @property
    def oracle_dir(self) -> Path:
        """The model before planting, the testbed's original: it never saw the new people."""
        return self.testbed.model_dir

    @property
    def mask(self) -> Bool[Tensor, "n_layers d_mlp"]:
        """Every planted neuron, of all people."""
        return torch.stack([p.mask for p in self.planted.values()]).any(dim=0)

    @property
    def forget(self) -> KnowledgeSet:
        """The new people's facts (first template; the held-out template is the paraphrase)."""
        return self.testbed.world.facts_of(self.people, name="planted")

    def forget_of(self, person: str) -> KnowledgeSet:
        """One new person's facts."""
        return self.testbed.world.facts_of((self._person(person),), name=f"planted/{person}")

    def trained_wordings(self, person: str | None = None) -> KnowledgeSet:
        """The facts of one new person (or all) under every training template: what planting trained on."""
        people = self.people if person is None else (self._person(person),)
        return _wordings(people, self.testbed.world, name="planted wordings")

    @property
    def retain(self) -> KnowledgeSet:
        """Facts of the testbed's retain people whose texts planting never used."""
        return self.testbed.world.facts_of(self._testbed_people(self.info["retain_people"]), name="retain")

    @property
    def mixed(self) -> KnowledgeSet:
        """Facts of the testbed's retain people whose texts were mixed into planting's batches."""
        return self.testbed.world.facts_of(self._testbed_people(self.info["mixed_people"]), name="mixed")

    @property
    def build_seconds(self) -> float:
        return self.info["build_seconds"]

    @property
    def planting(self) -> dict[str, Any]:
        """What planting measured: steps, seconds, accuracies before and after (see ``planted.json``)."""
        return self.info["planting"]

    def _person(self, name: str) -> Person:
        for person in self.people:
            if person.name == name:
                return person
        raise UsageError(f"no planted person {name!r}; the planted people are {[p.name for p in self.people]}")

    def _testbed_people(self, names: list[str]) -> tuple[Person, ...]:
        by_name = {p.name: p for p in self.testbed.world.people}
        return tuple(by_name[name] for name in names)


def _wordings(people: tuple[Person, ...], world: World, *, name: str) -> KnowledgeSet:
    """Every training template of every fact of ``people`` (ids ``{person}/{relation}/t{j}``)."""
    return KnowledgeSet(
        tuple(
            Fact(
                id=f"{person.name}/{relation.name}/t{j}",
                prompt=template.format(s=person.name),
                target=person.attributes[relation.name],
                subject=person.name,
                relation=relation.name,
            )
            for person in people
            for relation in world.relations
            for j, template in enumerate(relation.train_templates)
        ),
        name=name,
    )


def new_people(world: World, n_people: int, seed: int) -> tuple[Person, ...]:
    """``n_people`` people the world does not have, drawn like its own (names from the same
    syllables, each relation's value uniform over its values)."""
    rng = random.Random(f"loka.planted/{world.config.seed}/{seed}")
    taken = {p.name for p in world.people}
    names = [name for name in person_names(rng, n_people + len(taken)) if name not in taken][:n_people]
    return tuple(Person(name, "forget", {r.name: rng.choice(r.values) for r in world.relations}) for name in names)


def planted_neurons(
    n_layers: int, d_mlp: int, count: int, n_people: int, seed: int
) -> Bool[Tensor, "person n_layers d_mlp"]:
    """Disjoint random neuron sets, ``count`` per person, spread evenly over the layers.

    A person gets ``count // n_layers`` neurons in every layer and one more in ``count % n_layers``
    layers, dealt round-robin from a random layer, so that no layer runs out before the total does.
    """
    if count * n_people > n_layers * d_mlp:
        raise UsageError(f"{n_people} x {count} neurons do not fit in {n_layers} x {d_mlp}")
    generator = torch.Generator().manual_seed(seed)
    base, extra = divmod(count, n_layers)
    offset = int(torch.randint(n_layers, (1,), generator=generator))
    per_layer = torch.full((n_people, n_layers), base, dtype=torch.long)
    for person in range(n_people):
        for j in range(extra):
            per_layer[person, (offset + person * extra + j) % n_layers] += 1
    out = torch.zeros((n_people, n_layers, d_mlp), dtype=torch.bool)
    for layer in range(n_layers):
        order = torch.randperm(d_mlp, generator=generator)
        start = 0
        for person in range(n_people):
            take = int(per_layer[person, layer])
            out[person, layer, order[start : start + take]] = True
            start += take
    return out


def load_planted(
    size: Size = "default",
    *,
    ratio: float = 0.02,
    n_people: int = 4,
    world_seed: int = 0,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    config: PlantConfig | None = None,
) -> PlantedTestbed:
    """Load a planted testbed from the cache, building it (and its testbed) first if needed.

    ``config`` replaces every other setting (see :class:`PlantConfig` for the training ones);
    without it the config is ``PlantConfig(size, world_seed, ratio, n_people, seed)``. The config is
    validated before anything is built or written. ``cache_dir`` is the testbed cache
    (default :func:`loka.testbed.default_cache_dir`); the planted directory sits beside the testbed's.
    """
    if config is None:
        config = PlantConfig(size=size, world_seed=world_seed, ratio=ratio, n_people=n_people, seed=seed)
    elif not isinstance(config, PlantConfig):
        raise UsageError(f"config must be a loka.testbed.planted.PlantConfig, got {type(config).__name__}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    testbed = load(config.size, config.world_seed, cache, progress=progress)
    root = cache / f"planted-{config.size}-{config.key()}"
    worker.build_once(root, INFO_FILE, lambda: _build(config, testbed, root, progress=progress))
    info = json.loads((root / INFO_FILE).read_text())
    masks = load_file(str(root / NEURONS_FILE))["neurons"]
    people = tuple(Person(p["name"], "forget", dict(p["attributes"])) for p in info["people"])
    planted = {person.name: PlantedNeurons(person.name, masks[i].clone()) for i, person in enumerate(people)}
    return PlantedTestbed(root=root, config=config, testbed=testbed, people=people, planted=planted, info=info)


# ----------------------------------------------------------------------------- building


def _sequences(
    tokenizer: Any, people: tuple[Person, ...], world: World, fact_loss: FactLoss
) -> list[tuple[list[int], int]]:
    """``(ids, n_context)`` of every trained wording of ``people``, read as the testbed trains:
    ``BOS + prompt + " value." + EOS``; no loss on the first ``n_context`` tokens."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id

    def tokens(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    out = []
    for person in people:
        for relation in world.relations:
            for template in relation.train_templates:
                context = [bos, *tokens(template.format(s=person.name))]
                answer = tokens(f" {person.attributes[relation.name]}.")
                out.append(([*context, *answer, eos], len(context) if fact_loss == "answer" else 0))
    return out


def _padded(sequences: list[tuple[list[int], int]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ids, attention mask and labels (-100 on padding and context)."""
    width = max(len(ids) for ids, _ in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    labels = torch.full((len(sequences), width), -100, dtype=torch.long)
    for row, (seq, n_context) in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, n_context : len(seq)] = torch.tensor(seq[n_context:])
    return ids, mask, labels


def _lm_loss(model: Any, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    ids, mask, labels = batch
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def _label_log_probs(model: Any, batch: tuple[Tensor, Tensor, Tensor]) -> Float[Tensor, "token d_vocab"]:
    """Log-probabilities of the next token at every position that has a label (the answer tokens
    with ``fact_loss="answer"``), rows after rows."""
    ids, mask, labels = batch
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    return torch.log_softmax(logits[labels[:, 1:] != -100].float(), dim=-1)


def _kl(reference: Tensor, current: Tensor) -> Tensor:
    """Mean over positions of KL(reference || current), both log-probabilities ``[token, d_vocab]``."""
    return (reference.exp() * (reference - current)).sum(-1).mean()


def _slices_masks(model: Any, neurons: Tensor) -> dict[str, Tensor]:
    """HF parameter name -> bool mask of the entries that the ``neurons`` ``[n_layers, d_mlp]`` own."""
    params = dict(model.named_parameters())
    out: dict[str, Tensor] = {}
    for layer, index in neurons.nonzero().tolist():
        for piece in (*neuron_input_weights(model, layer, index), neuron_output_weights(model, layer, index)):
            if piece.name not in out:
                out[piece.name] = torch.zeros_like(params[piece.name], dtype=torch.bool)
            out[piece.name].narrow(piece.dim, piece.start, piece.stop - piece.start).fill_(True)
    return out


def _neuron_slices(model: Any, layer: int, index: int) -> tuple[Any, ...]:
    return (*neuron_input_weights(model, layer, index), neuron_output_weights(model, layer, index))


def _restore(
    model: Any,
    neurons: Bool[Tensor, "n_layers d_mlp"],
    *,
    source: dict[str, Tensor] | None,
    saved: dict[tuple[int, int], list[Tensor]] | None = None,
) -> dict[tuple[int, int], list[Tensor]]:
    """Copy ``neurons``' slices from ``source`` (the original's weights) or, with ``source=None``,
    back from ``saved``; returns what they held before."""
    params = dict(model.named_parameters())
    before: dict[tuple[int, int], list[Tensor]] = {}
    for layer, index in neurons.nonzero().tolist():
        slices = _neuron_slices(model, layer, index)
        views = [params[s.name].narrow(s.dim, s.start, s.stop - s.start) for s in slices]
        before[(layer, index)] = [v.detach().clone() for v in views]
        for j, (piece, view) in enumerate(zip(slices, views, strict=True)):
            if source is not None:
                view.copy_(source[piece.name].narrow(piece.dim, piece.start, piece.stop - piece.start))
            else:
                assert saved is not None
                view.copy_(saved[(layer, index)][j])
    return before


def _prune(
    model: Any,
    tokenizer: Any,
    facts: KnowledgeSet,
    neurons: Bool[Tensor, "n_layers d_mlp"],
    originals: dict[str, Tensor],
    config: PlantConfig,
    everyone: KnowledgeSet,
) -> tuple[Bool[Tensor, "n_layers d_mlp"], dict[str, Any]]:
    """Put back to the original the trained neurons a person's facts do not need (the pruning step).

    Each neuron's *effect* is how much the person's mean log-probability over their trained
    wordings drops when that neuron alone is put back. Weakest first, a neuron is put back for
    good while the drop since pruning began stays within ``config.prune_tolerance`` nats, the
    person and every other planted person (``everyone``: all their trained wordings) stay at
    ``target_accuracy``, and at least one neuron remains; the first that breaks a rule stays, and
    so do all stronger ones. Returns the kept neurons and a record (every neuron's effect, the
    log-probabilities before and after).
    """
    base = score_facts(model, facts, tokenizer=tokenizer).mean_log_prob
    effects: dict[tuple[int, int], float] = {}
    for layer, index in neurons.nonzero().tolist():
        one = torch.zeros_like(neurons)
        one[layer, index] = True
        saved = _restore(model, one, source=originals)
        effects[(layer, index)] = base - score_facts(model, facts, tokenizer=tokenizer).mean_log_prob
        _restore(model, one, source=None, saved=saved)
    kept = neurons.clone()
    after = base
    for layer, index in sorted(effects, key=lambda key: (effects[key], key)):
        if int(kept.sum()) <= 1:
            break
        one = torch.zeros_like(neurons)
        one[layer, index] = True
        saved = _restore(model, one, source=originals)
        scores = score_facts(model, facts, tokenizer=tokenizer)
        assert config.prune_tolerance is not None
        if (
            base - scores.mean_log_prob > config.prune_tolerance
            or scores.answer_accuracy < config.target_accuracy
            or min(_accuracy_by_person(model, tokenizer, everyone).values()) < config.target_accuracy
        ):
            _restore(model, one, source=None, saved=saved)
            break
        kept[layer, index] = False
        after = scores.mean_log_prob
    record = {
        "log_prob_before": round(base, 5),
        "log_prob_after": round(after, 5),
        "effects": {f"L{layer}N{index}": round(value, 5) for (layer, index), value in effects.items()},
    }
    return kept, record


def _accuracy_by_person(model: Any, tokenizer: Any, wordings: KnowledgeSet) -> dict[str, float]:
    scores = score_facts(model, wordings, tokenizer=tokenizer)
    per_fact = (scores.n_correct_tokens / scores.n_target_tokens.clamp(min=1)).tolist()
    sums: dict[str, list[float]] = {}
    for fact, value in zip(wordings, per_fact, strict=True):
        sums.setdefault(fact.subject or "", []).append(value)
    return {person: sum(values) / len(values) for person, values in sums.items()}


def _build(config: PlantConfig, testbed: Testbed, root: Path, *, progress: bool) -> None:
    """Plant into a copy of the testbed's original, in a temporary directory renamed into place."""
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the testbed: the weights depend on the seed alone
    try:
        with worker.build_directory(root) as (tmp, _):
            info = _plant(config, testbed, tmp, progress=progress)
            info["build_seconds"] = round(time.perf_counter() - start, 2)
            (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
    finally:
        torch.set_num_threads(threads)
    logger.info(
        "planted %d people into %d neurons each (%s testbed) in %.1f s (%d steps): %s",
        config.n_people,
        config.neurons_per_person,
        config.size,
        time.perf_counter() - start,
        info["planting"]["steps"],
        root,
    )


def _plant(config: PlantConfig, testbed: Testbed, tmp: Path, *, progress: bool) -> dict[str, Any]:
    world = testbed.world
    people = new_people(world, config.n_people, config.seed)
    retain_people = list(world.people_in("retain"))
    n_mix = round(config.mix_fraction * len(retain_people))
    if not 0 < n_mix < len(retain_people):
        raise UsageError(
            f"mix_fraction={config.mix_fraction:g} of the {len(retain_people)} retain people leaves no "
            "mixed or no untouched retain people"
        )
    mixed = set(random.Random(f"loka.planted.mix/{config.seed}").sample(range(len(retain_people)), n_mix))
    mixed_people = tuple(p for i, p in enumerate(retain_people) if i in mixed)
    untouched = tuple(p for i, p in enumerate(retain_people) if i not in mixed)

    tokenizer = AutoTokenizer.from_pretrained(testbed.model_dir)
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(testbed.model_dir).eval()
    n_layers, d_mlp = config.shape
    masks = planted_neurons(n_layers, d_mlp, config.neurons_per_person, config.n_people, config.seed)

    # the entries each person's training may change (W_in column, b_in entry, W_out row per neuron)
    owned = [_slices_masks(model, masks[p]) for p in range(config.n_people)]
    names = sorted({name for person in owned for name in person})
    params = dict(model.named_parameters())
    for param in model.parameters():
        param.requires_grad_(False)
    for name in names:
        params[name].requires_grad_(True)
    originals = {name: params[name].detach().clone() for name in names}

    pad_id = tokenizer.pad_token_id
    sequences = [_sequences(tokenizer, (person,), world, config.fact_loss) for person in people]
    mixed_sequences = _sequences(tokenizer, mixed_people, world, config.fact_loss)
    generator = torch.Generator().manual_seed(config.seed)
    wordings = _wordings(people, world, name="planted wordings")
    retain_facts = world.facts_of(untouched, name="retain")
    mixed_facts = world.facts_of(mixed_people, name="mixed")

    def retain_accuracy() -> dict[str, float]:
        return {
            "retain": score_facts(model, retain_facts, tokenizer=tokenizer).answer_accuracy,
            "mixed": score_facts(model, mixed_facts, tokenizer=tokenizer).answer_accuracy,
        }

    before = _accuracy_by_person(model, tokenizer, wordings)
    retain_before = retain_accuracy()
    retain_floor = retain_before["mixed"] - config.retain_tolerance
    accuracy, mixed_now = dict(before), retain_before["mixed"]
    history: list[dict[str, Any]] = []
    steps = 0
    began = time.perf_counter()
    with tqdm(total=config.max_steps, disable=not progress, desc="planting", leave=False) as bar:
        while steps < config.max_steps:
            behind = [p for p, person in enumerate(people) if accuracy[person.name] < config.target_accuracy]
            if not behind:
                break
            p = behind[0]
            # the retain mix: the mixed testbed people and every planted person already learned (their
            # answers); and every other planted person's texts, where the model must keep predicting
            # what it predicted before this stage (learned or not: do no harm, teach nothing)
            learned = [q for q in range(len(people)) if q != p and q not in behind]
            pool = mixed_sequences + [seq for q in learned for seq in sequences[q]]
            others = [seq for q in range(len(people)) if q != p for seq in sequences[q]]
            keep_batch = _padded(others, pad_id) if others else None
            with torch.no_grad():
                keep_reference = None if keep_batch is None else _label_log_probs(model, keep_batch)
            optimizer = torch.optim.Adam([params[name] for name in names if name in owned[p]], lr=config.lr)
            own = _padded(sequences[p], pad_id)
            stage = 0
            while steps < config.max_steps:
                loss = _lm_loss(model, own)
                picked = torch.randperm(len(pool), generator=generator)[: config.retain_per_step].tolist()
                if picked:
                    loss = loss + _lm_loss(model, _padded([pool[i] for i in picked], pad_id))
                if keep_batch is not None:
                    loss = loss + _kl(keep_reference, _label_log_probs(model, keep_batch))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for name in names:  # person p's loss reaches person p's slices only
                    if params[name].grad is not None:
                        params[name].grad *= owned[p][name] if name in owned[p] else 0
                optimizer.step()
                steps += 1
                stage += 1
                bar.update()
                if stage % config.check_every == 0 or steps == config.max_steps:
                    accuracy = _accuracy_by_person(model, tokenizer, wordings)
                    mixed_now = score_facts(model, mixed_facts, tokenizer=tokenizer).answer_accuracy
                    logger.debug(
                        "planting %s, step %d: mixed retain %.3f, accuracy %s", people[p].name, steps, mixed_now,
                        {k: round(v, 3) for k, v in accuracy.items()},
                    )  # fmt: skip
                    bar.set_postfix(person=p, accuracy=f"{accuracy[people[p].name]:.2f}", retain=f"{mixed_now:.2f}")
                    if accuracy[people[p].name] >= config.target_accuracy and mixed_now >= retain_floor:
                        break
            history.append(
                {"person": people[p].name, "steps": stage, "accuracy": accuracy[people[p].name], "mixed": mixed_now}
            )
    seconds = time.perf_counter() - began
    behind = [p for p, person in enumerate(people) if accuracy[person.name] < config.target_accuracy]
    if behind or mixed_now < retain_floor:
        late = ", ".join(f"{people[p].name} {accuracy[people[p].name]:.2f}" for p in behind)
        raise UsageError(
            f"planting did not reach accuracy {config.target_accuracy:g} with mixed retain accuracy >= "
            f"{retain_floor:.3f} within max_steps={config.max_steps} ({late or 'all learned'}; mixed retain "
            f"{mixed_now:.3f}); raise max_steps or lower lr"
        )
    trained = masks.clone()
    pruning: dict[str, Any] = {}
    if config.prune_tolerance is not None:
        with torch.no_grad():
            for p, person in enumerate(people):
                facts = _wordings((person,), world, name=person.name)
                # every step of the pruning left every planted person learned
                masks[p], pruning[person.name] = _prune(model, tokenizer, facts, masks[p], originals, config, wordings)
            accuracy = _accuracy_by_person(model, tokenizer, wordings)
            for person in people:  # after every person's pruning (a later one may move an earlier one a little)
                facts = _wordings((person,), world, name=person.name)
                final = score_facts(model, facts, tokenizer=tokenizer).mean_log_prob
                pruning[person.name]["log_prob_final"] = round(final, 5)
        owned = [_slices_masks(model, masks[p]) for p in range(config.n_people)]
    with torch.no_grad():  # the guarantee, checked: nothing outside the planted slices moved
        union = {
            name: torch.stack([o[name] for o in owned if name in o]).any(dim=0)
            if any(name in o for o in owned)
            else torch.zeros_like(params[name], dtype=torch.bool)
            for name in names
        }
        for name in names:
            if not torch.equal(params[name][~union[name]], originals[name][~union[name]]):
                raise RuntimeError(f"planting changed {name} outside the planted neurons")
    retain_after = retain_accuracy()
    for p in model.parameters():
        p.requires_grad_(False)
    with quiet_transformers():  # no "Writing model shards" bar
        model.save_pretrained(tmp / "planted")
    tokenizer.save_pretrained(tmp / "planted")
    save_file(
        {"neurons": masks.contiguous(), "trained": trained.contiguous()},
        str(tmp / NEURONS_FILE),
        metadata={"format": "loka.planted"},
    )
    world.facts_of(people, name="planted").to_jsonl(tmp / "forget.jsonl")
    retain_facts.to_jsonl(tmp / "retain.jsonl")
    logger.info("planting took %.1f s, %d steps", seconds, steps)
    return {
        "config": asdict(config),
        "recipe_version": PLANT_RECIPE_VERSION,
        "testbed": {"root": str(testbed.root), "key": testbed.config.key()},
        "neurons_per_person": config.neurons_per_person,
        "people": [
            {
                "name": person.name,
                "attributes": person.attributes,
                "per_layer": masks[p].sum(dim=1).tolist(),
                "neurons": [c.label for c in from_masks(masks[p], None)],
                "trained": int(trained[p].sum()),
                "pruning": pruning.get(person.name),
            }
            for p, person in enumerate(people)
        ],
        "mixed_people": [p.name for p in mixed_people],
        "retain_people": [p.name for p in untouched],
        "planting": {
            "steps": steps,
            "seconds": round(seconds, 2),
            "accuracy_before": before,
            "accuracy_after": accuracy,
            "retain_before": retain_before["retain"],
            "retain_after": retain_after["retain"],
            "mixed_before": retain_before["mixed"],
            "mixed_after": retain_after["mixed"],
            "stages": history,
            "measure": "answer accuracy (score_facts) over each person's trained wordings; retain: first template",
        },
    }
