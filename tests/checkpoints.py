"""Tiny random Hugging Face checkpoints for tests: the package's builder, :mod:`loka.testbed.checkpoints`.

Nothing in the test suite may reach a model hub, so tests that need a real model directory build
one with :func:`build_tiny_checkpoint` (2 layers, d_model 32, vocab ~300; the same ``(arch, seed)``
always gives byte-identical weights). The builder lives in the package so that benches use it too.
"""

from __future__ import annotations

from loka.testbed.checkpoints import (
    ARCHITECTURES,
    D_MLP,
    D_MODEL,
    MAX_POSITIONS,
    N_HEADS,
    N_KV_HEADS,
    N_LAYERS,
    VOCAB_SIZE,
    Architecture,
    build_tiny_checkpoint,
    build_tokenizer,
)

__all__ = [
    "ARCHITECTURES",
    "D_MLP",
    "D_MODEL",
    "MAX_POSITIONS",
    "N_HEADS",
    "N_KV_HEADS",
    "N_LAYERS",
    "VOCAB_SIZE",
    "Architecture",
    "build_tiny_checkpoint",
    "build_tokenizer",
]
