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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loka  # noqa: E402
from loka.testbed import Testbed, TestbedConfig  # noqa: E402
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=int, default=0)
    testbed = load_testbed("larger", parser.parse_args().world)
    print(testbed.root, f"built in {testbed.build_seconds:.0f} s")
    print(testbed.accuracy.format() if hasattr(testbed, "accuracy") else testbed.info["accuracy"])
