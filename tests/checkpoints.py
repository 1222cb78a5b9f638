"""Tiny random Hugging Face checkpoints for tests: the package's builder, :mod:`loka.testbed.checkpoints`.

Nothing in the test suite may reach a model hub, so tests that need a real model directory build
one with :func:`build_tiny_checkpoint` (2 layers, d_model 32, vocab ~300; the same ``(arch, seed)``
always gives byte-identical weights). The builder lives in the package so that benches use it too.
"""

from __future__ import annotations

from loka.testbed import checkpoints as _builder
from loka.testbed.checkpoints import *  # noqa: F403

__all__ = list(_builder.__all__)
