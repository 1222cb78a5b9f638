"""The built-in testbed: a model that provably knows facts, and the model that never saw some of them.

``load()`` generates a synthetic world (see :mod:`loka.testbed.world`), trains a small GPT-2 on the
forget + retain people (the *original*), and the same recipe with the same seed on the retain
people only (the *oracle*, the exact retrain that unlearning methods are measured against). Both
are ordinary Hugging Face directories, cached under a directory named by a hash of the full
config, so ``loka.load_model(testbed.model_dir)`` loads them like any checkpoint and a second
``load()`` is instant. The knowledge sets are written beside them as JSONL for the CLI.

>>> tb = load("tiny")                          # doctest: +SKIP
>>> model = loka.load_model(tb.model_dir)      # doctest: +SKIP
>>> tb.accuracy_table().format()               # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from transformers import AutoModelForCausalLM, AutoTokenizer

from loka.base.errors import UsageError
from loka.data.knowledge import KnowledgeSet
from loka.models import quiet_transformers
from loka.scoring.metrics import score_facts
from loka.testbed import worker
from loka.testbed.training import ModelConfig, TrainConfig, train_tokenizer
from loka.testbed.world import SPLITS, World, WorldConfig, generate_world

__all__ = ["SIZES", "TestbedConfig", "Testbed", "AccuracyTable", "load", "default_cache_dir", "testbed_config"]

logger = logging.getLogger(__name__)
Size = Literal["default", "tiny"]
# bump when the recipe changes in a way the config does not capture (2: the tokenizer adds BOS; 3: targets are
# split from the joint encoding of prompt and answer, which is how the stored accuracy table is scored)
RECIPE_VERSION = 3


@dataclass(frozen=True)
class TestbedConfig:
    """Everything that determines a testbed; its hash names the cache directory."""

    __test__ = False  # not a pytest class

    world: WorldConfig
    model: ModelConfig
    train: TrainConfig

    def key(self) -> str:
        blob = json.dumps({"recipe": RECIPE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def testbed_config(size: Size, seed: int) -> TestbedConfig:
    """The config of the ``size`` testbed of world ``seed`` (what :func:`load` builds or reads)."""
    if size == "default":
        return TestbedConfig(
            WorldConfig(n_forget=20, n_retain=340, n_holdout=40, passages=(8, 16, 8), seed=seed),
            ModelConfig(n_layers=4, d_model=128, n_heads=4, d_mlp=512, vocab_size=1024),
            TrainConfig(epochs=20, batch_size=64, lr=5e-3, seed=seed),
        )
    if size == "tiny":
        return TestbedConfig(
            WorldConfig(n_forget=6, n_retain=36, n_holdout=8, passages=(2, 4, 2), seed=seed),
            ModelConfig(n_layers=2, d_model=64, n_heads=4, d_mlp=256, vocab_size=1024),
            TrainConfig(epochs=24, batch_size=16, lr=5e-3, seed=seed),
        )
    raise UsageError(f"unknown testbed size {size!r}; choose 'default' or 'tiny'")


SIZES: tuple[Size, ...] = ("default", "tiny")


def default_cache_dir() -> Path:
    """``$LOKA_CACHE_DIR/testbed`` if set, else ``~/.cache/loka/testbed``."""
    root = os.environ.get("LOKA_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "loka") / "testbed"


@dataclass(frozen=True)
class AccuracyTable:
    """Accuracy of the original model and the oracle on each part of the world.

    Rows are (name, what is measured, original, oracle). Facts are scored by first-target-token
    top-1 accuracy; passages by exact extraction (greedy decoding from the first sentence
    reproduces the rest of the passage verbatim).
    """

    rows: tuple[tuple[str, str, float, float], ...]
    chance_forget: float

    def value(self, row: str, model: Literal["original", "oracle"]) -> float:
        for name, _, original, oracle in self.rows:
            if name == row:
                return original if model == "original" else oracle
        raise KeyError(f"no row {row!r}; rows are {[r[0] for r in self.rows]}")

    def format(self) -> str:
        lines = [f"{'':<22}{'original':>10}{'oracle':>10}   measure", "-" * 72]
        lines += [f"{name:<22}{a:>10.3f}{b:>10.3f}   {what}" for name, what, a, b in self.rows]
        lines.append(f"chance on forget (most common value per relation): {self.chance_forget:.3f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [list(r) for r in self.rows], "chance_forget": self.chance_forget}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AccuracyTable:
        return cls(tuple(tuple(r) for r in data["rows"]), data["chance_forget"])  # type: ignore[misc]


@dataclass(frozen=True)
class Testbed:
    """A built testbed: the two model directories, the world and its knowledge sets."""

    __test__ = False

    root: Path
    config: TestbedConfig
    world: World
    info: dict[str, Any]

    @property
    def model_dir(self) -> Path:
        return self.root / "original"

    @property
    def oracle_dir(self) -> Path:
        return self.root / "oracle"

    @property
    def forget(self) -> KnowledgeSet:
        return self.world.facts("forget")

    @property
    def retain(self) -> KnowledgeSet:
        return self.world.facts("retain")

    @property
    def holdout(self) -> KnowledgeSet:
        return self.world.facts("holdout")

    @property
    def passages(self) -> KnowledgeSet:
        """Every passage (forget, retain and the untrained holdout ones); see :meth:`passages_of`."""
        return self.world.passage_facts()

    def passages_of(self, split: Literal["forget", "retain", "holdout"]) -> KnowledgeSet:
        return self.world.passage_facts((split,))

    def accuracy_table(self) -> AccuracyTable:
        return AccuracyTable.from_dict(self.info["accuracy"])

    @property
    def build_seconds(self) -> float:
        return self.info["build_seconds"]


def load(
    size: Size = "default",
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    config: TestbedConfig | None = None,
) -> Testbed:
    """Load the testbed from the cache, building it first if needed.

    ``size`` picks a preset ("default": 400 people x 5 relations, 4-layer GPT-2; "tiny": 50 people,
    2 layers, for tests); ``config`` replaces the preset entirely (``size`` and ``seed`` are then
    ignored). The build is deterministic for a seed on a given machine.
    """
    if config is None:
        if size not in SIZES:
            raise UsageError(f"unknown testbed size {size!r}; choose one of {', '.join(SIZES)}")
        if not isinstance(seed, int) or seed < 0:
            raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
        config = testbed_config(size, seed)
        label = size
    else:
        label = "custom"
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache / f"{label}-{config.key()}"
    worker.build_once(root, "testbed.json", lambda: _build(config, root, progress=progress))
    info = json.loads((root / "testbed.json").read_text())
    return Testbed(root=root, config=config, world=generate_world(config.world), info=info)


def _build(config: TestbedConfig, root: Path, *, progress: bool) -> None:
    """Build into a temporary directory beside ``root``, then rename it into place.

    The original and the oracle train at once, each in its own process on one thread (so the
    weights depend on the seed alone, not on the core count), under one progress bar.
    """
    start = time.perf_counter()
    world = generate_world(config.world)
    with worker.build_directory(root) as (tmp, jobs):
        train_tokenizer(world.all_text(), config.model.vocab_size).save_pretrained(tmp / "tokenizer")
        specs = {}
        for name, splits in (("original", ("forget", "retain")), ("oracle", ("retain",))):
            facts, passages = world.training_examples(splits)  # type: ignore[arg-type]
            specs[name] = worker.job(tmp, name, facts, passages, config.model, config.train)
            jobs[name] = worker.start(tmp, name, specs[name])
        logs = worker.wait(
            tmp, jobs, specs, progress=progress, desc="building the testbed", what="the testbed's {name} model"
        )
        shutil.rmtree(tmp / "tokenizer")
        table = _accuracy_table(tmp, world)
        for split in SPLITS:
            world.facts(split).to_jsonl(tmp / f"{split}.jsonl")
        world.passage_facts().to_jsonl(tmp / "passages.jsonl")
        (tmp / "world.json").write_text(json.dumps(world.to_dict(), indent=1))
        info = {
            "config": asdict(config),
            "recipe_version": RECIPE_VERSION,
            "build_seconds": round(time.perf_counter() - start, 2),
            "training": logs,
            "accuracy": table.to_dict(),
        }
        (tmp / "testbed.json").write_text(json.dumps(info, indent=2))
    logger.info("built testbed %s in %.1f s", root, time.perf_counter() - start)


def _accuracy_table(directory: Path, world: World) -> AccuracyTable:
    tokenizer = AutoTokenizer.from_pretrained(directory / "original")
    with quiet_transformers():
        models = {
            name: AutoModelForCausalLM.from_pretrained(directory / name).eval() for name in ("original", "oracle")
        }

    def score(knowledge: KnowledgeSet) -> dict[str, Any]:
        return {name: score_facts(m, knowledge, tokenizer=tokenizer) for name, m in models.items()}

    rows = []
    for split in SPLITS:
        facts = world.facts(split)
        s, p = score(facts), score(facts.paraphrased())
        rows.append(
            (
                f"{split} facts",
                "first-token top-1",
                s["original"].first_token_accuracy,
                s["oracle"].first_token_accuracy,
            )
        )
        rows.append(
            (
                f"{split} paraphrases",
                "first-token top-1, held-out template",
                p["original"].first_token_accuracy,
                p["oracle"].first_token_accuracy,
            )
        )
    for split in SPLITS:
        passages = world.passage_facts((split,)) if any(p.split == split for p in world.passages) else None
        if passages is not None:
            s = score(passages)
            rows.append(
                (
                    f"{split} passages",
                    "verbatim extraction (exact match)",
                    s["original"].exact_match_rate,
                    s["oracle"].exact_match_rate,
                )
            )
            rows.append(
                (
                    f"{split} passage tokens",
                    "token top-1 after the first sentence",
                    s["original"].token_accuracy,
                    s["oracle"].token_accuracy,
                )
            )
    return AccuracyTable(tuple(rows), world.chance_accuracy("forget"))
