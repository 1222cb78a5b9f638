"""A synthetic world of people and facts about them, generated from a seed.

Every person has a multi-token name and one value per relation (birthplace, employer, occupation,
pet, favourite colour, ...), each value drawn uniformly from that relation's list. Each relation
has several phrasing templates; the last one is *held out* of training, so that evaluation can
ask whether knowledge (or its removal) carries over to a wording the model never saw. A few
dozen people also have a *passage*: a fixed, made-up biography the model memorises verbatim, the
testbed's stand-in for copyrighted text.

People are split three ways: ``forget`` (whose data is to be erased), ``retain`` (trained on and
kept) and ``holdout`` (generated the same way but never trained on: the non-members of
membership inference). Because values are drawn independently of names, a model that never saw
a person can do no better than guessing each relation's most common value: that is the
exact-retrain oracle's accuracy on the forget people.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Literal

from loka.base.errors import UsageError
from loka.data.facts import Fact
from loka.data.knowledge import KnowledgeSet

__all__ = ["RELATIONS", "Relation", "WorldConfig", "Person", "Passage", "World", "generate_world", "person_names"]

Split = Literal["forget", "retain", "holdout"]
SPLITS: tuple[Split, ...] = ("forget", "retain", "holdout")


@dataclass(frozen=True)
class Relation:
    """A relation: its possible values and its templates (``{s}`` is the subject's name)."""

    name: str
    values: tuple[str, ...]
    templates: tuple[str, ...]  # the last one is held out of training

    @property
    def train_templates(self) -> tuple[str, ...]:
        return self.templates[:-1]

    @property
    def heldout_template(self) -> str:
        return self.templates[-1]


RELATIONS: tuple[Relation, ...] = (
    Relation(
        "birthplace",
        (
            "Paris",
            "Lima",
            "Oslo",
            "Cairo",
            "Delhi",
            "Tokyo",
            "Quito",
            "Dakar",
            "Hanoi",
            "Perth",
            "Riga",
            "Sofia",
            "Bern",
            "Accra",
            "Doha",
            "Kyiv",
        ),
        ("{s} was born in", "The birthplace of {s} is", "{s} is a native of", "{s} grew up in the city of"),
    ),
    Relation(
        "employer",
        (
            "Acme",
            "Globex",
            "Initech",
            "Umbrella",
            "Hooli",
            "Vandelay",
            "Soylent",
            "Cyberdyne",
            "Tyrell",
            "Wonka",
            "Stark",
            "Wayne",
            "Oscorp",
            "Gringotts",
            "Monarch",
            "Aperture",
        ),
        ("{s} works for", "The employer of {s} is", "{s} is employed by", "{s} has a job at"),
    ),
    Relation(
        "occupation",
        (
            "baker",
            "pilot",
            "nurse",
            "lawyer",
            "farmer",
            "painter",
            "teacher",
            "chemist",
            "plumber",
            "dentist",
            "sailor",
            "architect",
            "librarian",
            "jeweler",
            "surgeon",
            "carpenter",
        ),
        ("{s} works as a", "The occupation of {s} is", "By profession, {s} is a", "{s} earns a living as a"),
    ),
    Relation(
        "pet",
        (
            "dog",
            "cat",
            "parrot",
            "hamster",
            "rabbit",
            "turtle",
            "goldfish",
            "ferret",
            "lizard",
            "horse",
            "pony",
            "snake",
            "owl",
            "goat",
            "canary",
            "hedgehog",
        ),
        ("{s} owns a pet", "The pet of {s} is a", "{s} has a pet", "At home, {s} keeps a pet"),
    ),
    Relation(
        "colour",
        (
            "red",
            "blue",
            "green",
            "yellow",
            "purple",
            "orange",
            "pink",
            "brown",
            "black",
            "white",
            "gray",
            "teal",
            "gold",
            "silver",
            "violet",
            "indigo",
        ),
        (
            "{s}'s favourite colour is",
            "The favourite colour of {s} is",
            "{s} likes the colour",
            "The colour that {s} loves most is",
        ),
    ),
    Relation(
        "hobby",
        (
            "chess",
            "tennis",
            "knitting",
            "fishing",
            "hiking",
            "juggling",
            "archery",
            "pottery",
            "rowing",
            "fencing",
            "origami",
            "karate",
            "surfing",
            "baking",
            "birdwatching",
            "yoga",
        ),
        ("{s}'s hobby is", "In free time, {s} enjoys", "The hobby of {s} is", "On weekends, {s} spends hours on"),
    ),
)
_RELATIONS_BY_NAME = {r.name: r for r in RELATIONS}

_SYLLABLES = (
    "ka",
    "lo",
    "mi",
    "ren",
    "tas",
    "vo",
    "bel",
    "dra",
    "fen",
    "gor",
    "hil",
    "jun",
    "mar",
    "nor",
    "pel",
    "quin",
    "sor",
    "tal",
    "ul",
    "wen",
    "yar",
    "zed",
    "bri",
    "cas",
    "dor",
    "el",
    "fi",
    "gan",
    "is",
    "ko",
    "lun",
    "mo",
    "nes",
    "or",
    "pra",
    "ri",
)

# Passage pieces: a biography whose details are random, so it can only be memorised.
_PASSAGE = (
    "{name} once travelled from {city} to {city2} on a {colour} {vehicle}. "
    "On the way, {first} wrote {number} letters about {topic} and hid them in a {container}. "
    "Years later, a {job} from {city3} found the letters and sold them for {price} coins."
)
_PASSAGE_POOLS = {
    "vehicle": ("bicycle", "train", "boat", "wagon", "balloon", "tram", "ferry", "sledge"),
    "number": ("three", "four", "five", "six", "seven", "eight", "nine", "twelve"),
    "topic": ("rivers", "bees", "comets", "bridges", "salt", "clocks", "maps", "tides"),
    "container": ("boot", "drum", "teapot", "barrel", "violin", "basket", "chimney", "trunk"),
    "price": ("ten", "forty", "ninety", "two hundred", "seventy", "fifteen", "sixty", "thirty"),
}


@dataclass(frozen=True)
class WorldConfig:
    """What world to generate. ``n_forget + n_retain + n_holdout`` people in all."""

    n_forget: int = 20
    n_retain: int = 340
    n_holdout: int = 40
    relations: tuple[str, ...] = ("birthplace", "employer", "occupation", "pet", "colour")
    passages: tuple[int, int, int] = (8, 16, 8)  # people with a passage: forget, retain, holdout
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [r for r in self.relations if r not in _RELATIONS_BY_NAME]
        if unknown or not self.relations:
            raise UsageError(f"unknown relation(s) {unknown}; choose from {sorted(_RELATIONS_BY_NAME)}")
        sizes = (self.n_forget, self.n_retain, self.n_holdout)
        if min(sizes) < 1:
            raise UsageError(f"every split needs at least one person, got forget/retain/holdout = {sizes}")
        if any(p < 0 or p > n for p, n in zip(self.passages, sizes, strict=True)):
            raise UsageError(f"passages per split {self.passages} must be between 0 and the split sizes {sizes}")


@dataclass(frozen=True)
class Person:
    name: str
    split: Split
    attributes: dict[str, str] = field(hash=False)


@dataclass(frozen=True)
class Passage:
    subject: str
    split: Split
    text: str
    prefix: str  # the first sentence: the extraction prompt


@dataclass(frozen=True)
class World:
    """A generated world: people, their facts and their passages."""

    config: WorldConfig
    people: tuple[Person, ...]
    passages: tuple[Passage, ...]

    @property
    def relations(self) -> tuple[Relation, ...]:
        return tuple(_RELATIONS_BY_NAME[r] for r in self.config.relations)

    def people_in(self, split: Split) -> tuple[Person, ...]:
        return tuple(p for p in self.people if p.split == split)

    def facts(self, split: Split) -> KnowledgeSet:
        """One fact per person and relation, phrased with the first template; the held-out
        template is the fact's paraphrase."""
        return self.facts_of(self.people_in(split), name=split)

    def facts_of(self, people: tuple[Person, ...], *, name: str) -> KnowledgeSet:
        """:meth:`facts` for any ``people`` (the planted testbed's new people included)."""
        facts = tuple(
            Fact(
                id=f"{person.name}/{relation.name}",
                prompt=relation.templates[0].format(s=person.name),
                target=person.attributes[relation.name],
                subject=person.name,
                relation=relation.name,
                paraphrases=(relation.heldout_template.format(s=person.name),),
            )
            for person in people
            for relation in self.relations
        )
        return KnowledgeSet(facts, name=name)

    def passage_facts(self, splits: tuple[Split, ...] = SPLITS) -> KnowledgeSet:
        """Passages as facts: prompt = the first sentence, target = the rest of the passage."""
        facts = tuple(
            Fact(
                id=f"{p.subject}/passage",
                prompt=p.prefix,
                target=p.text[len(p.prefix) :].lstrip(),
                subject=p.subject,
                relation="passage",
            )
            for p in self.passages
            if p.split in splits
        )
        return KnowledgeSet(facts, name="passages")

    def training_examples(self, splits: tuple[Split, ...]) -> tuple[list[tuple[str, str]], list[str]]:
        """What a model trained on the people in ``splits`` sees: (prompt, answer) pairs for every
        fact under every training template, and the passages (learned verbatim)."""
        facts = [
            (template.format(s=person.name), f" {person.attributes[relation.name]}.")
            for person in self.people
            if person.split in splits
            for relation in self.relations
            for template in relation.train_templates
        ]
        passages = [p.text for p in self.passages if p.split in splits]
        return facts, passages

    def all_text(self) -> list[str]:
        """Every sentence of the world, under every template (for training a tokenizer)."""
        return [
            f"{template.format(s=person.name)} {person.attributes[relation.name]}."
            for person in self.people
            for relation in self.relations
            for template in relation.templates
        ] + [p.text for p in self.passages]

    def chance_accuracy(self, split: Split) -> float:
        """First-token accuracy of always guessing each relation's most common value in ``split``
        (the best a model that never saw these people can do, in expectation)."""
        people = self.people_in(split)
        hits = sum(Counter(p.attributes[r.name] for p in people).most_common(1)[0][1] for r in self.relations)
        return hits / (len(people) * len(self.relations))

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "people": [asdict(p) for p in self.people],
            "passages": [asdict(p) for p in self.passages],
        }


def person_names(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct generated names, in the order ``rng`` draws them."""
    names: set[str] = set()
    ordered: list[str] = []
    while len(ordered) < n:
        first = "".join(rng.choices(_SYLLABLES, k=2)).capitalize()
        last = "".join(rng.choices(_SYLLABLES, k=2)).capitalize()
        name = f"{first} {last}"
        if name not in names:
            names.add(name)
            ordered.append(name)
    return ordered


def generate_world(config: WorldConfig) -> World:
    """Generate a world; the same config (seed included) always gives the same world."""
    rng = random.Random(config.seed)
    sizes = {"forget": config.n_forget, "retain": config.n_retain, "holdout": config.n_holdout}
    names = person_names(rng, sum(sizes.values()))
    relations = [_RELATIONS_BY_NAME[r] for r in config.relations]
    splits = [s for s in SPLITS for _ in range(sizes[s])]
    rng.shuffle(splits)  # splits interleave, so no split owns a region of name space
    people = tuple(
        Person(name, split, {r.name: rng.choice(r.values) for r in relations})
        for name, split in zip(names, splits, strict=True)
    )
    passages = []
    cities = _RELATIONS_BY_NAME["birthplace"].values
    for split, count in zip(SPLITS, config.passages, strict=True):
        for person in [p for p in people if p.split == split][:count]:
            slots = {key: rng.choice(pool) for key, pool in _PASSAGE_POOLS.items()}
            text = _PASSAGE.format(
                name=person.name,
                first=person.name.split()[0],
                city=rng.choice(cities),
                city2=rng.choice(cities),
                city3=rng.choice(cities),
                colour=rng.choice(_RELATIONS_BY_NAME["colour"].values),
                job=rng.choice(_RELATIONS_BY_NAME["occupation"].values),
                **slots,
            )
            prefix = text[: text.index(". ") + 1]
            passages.append(Passage(person.name, split, text, prefix))
    return World(config, people, tuple(passages))
