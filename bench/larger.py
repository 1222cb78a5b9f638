"""A larger testbed for the deletion benches: the default world (400 people x 5 relations), a
6-layer GPT-2 of width 256 with 1024 neurons per layer (5.0 M parameters, 5x the default's), built once
and cached like the presets (``loka.testbed.load(config=...)``, cache entry ``custom-<hash>``).

    python bench/larger.py [--world 0]      # build (about 15 minutes on 2 cores) and print its table

Published deletion gaps were measured on models of 124 M parameters and more; this asks whether
the default testbed's non-selective deletion is a matter of its size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loka  # noqa: E402
from loka.data import KnowledgeSet  # noqa: E402
from loka.protocol import Protocol  # noqa: E402
from loka.testbed import Testbed, TestbedConfig  # noqa: E402
from loka.testbed.planted import load_planted  # noqa: E402
from loka.testbed.training import ModelConfig, TrainConfig  # noqa: E402
from loka.testbed.world import WorldConfig  # noqa: E402


def larger_config(world: int) -> TestbedConfig:
    return TestbedConfig(
        WorldConfig(n_forget=20, n_retain=340, n_holdout=40, passages=(8, 16, 8), seed=world),
        ModelConfig(n_layers=6, d_model=256, n_heads=8, d_mlp=1024, vocab_size=1024),
        TrainConfig(epochs=20, batch_size=64, lr=3e-3, seed=world),
    )


def load_testbed(size: str, world: int) -> Testbed:
    """The preset ``size`` ("default", "tiny") or this file's ``"larger"`` testbed of world ``world``."""
    if size == "larger":
        return loka.testbed.load(config=larger_config(world))
    return loka.testbed.load(size, world)  # type: ignore[arg-type]


def load_case(size: str, world: int, planted: float | None = None, plant_seed: int = 0) -> SimpleNamespace:
    """What the deletion benches read: ``model_dir``, ``oracle_dir``, ``forget``, ``retain`` (what
    locators may read), ``validation`` (retain scored), ``paraphrases`` (None on the planted
    testbed), ``key`` (the planted neurons, else None) and a ``label``. ``planted``: the planted
    testbed of that ratio, whose retain people (testbed people planting never used) are halved
    into train and validation; else the testbed's protocol splits."""
    if planted:
        case = load_planted(size, ratio=planted, world_seed=world, seed=plant_seed)  # type: ignore[arg-type]
        half = len(case.retain) // 2
        return SimpleNamespace(
            model_dir=case.model_dir, oracle_dir=case.oracle_dir, forget=case.forget, key=case.mask, paraphrases=None,
            retain=KnowledgeSet(case.retain.facts[:half], name="retain_train"),
            validation=KnowledgeSet(case.retain.facts[half:], name="retain_validation"),
            label=f"planted {size} w{world} ratio {planted:g} seed {plant_seed}",
        )  # fmt: skip
    testbed = load_testbed(size, world)
    protocol = Protocol.from_testbed(testbed)
    return SimpleNamespace(
        model_dir=testbed.model_dir, oracle_dir=testbed.oracle_dir, forget=protocol.forget, key=None,
        retain=protocol.retain_train, validation=protocol.retain_validation, paraphrases=protocol.paraphrase_eval,
        label=f"testbed {size} w{world}",
    )  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=int, default=0)
    testbed = load_testbed("larger", parser.parse_args().world)
    print(testbed.root, f"built in {testbed.build_seconds:.0f} s")
    print(testbed.accuracy.format() if hasattr(testbed, "accuracy") else testbed.info["accuracy"])
