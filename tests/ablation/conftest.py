"""Fixtures shared by the ablation tests: one tiny random checkpoint per architecture, loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformer_lens.model_bridge import TransformerBridge

from loka.models import load_model
from tests.checkpoints import ARCHITECTURES, build_tiny_checkpoint


@pytest.fixture(scope="module", params=ARCHITECTURES)
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint of each architecture, in its own directory (exports go beside it)."""
    return build_tiny_checkpoint(request.param, tmp_path_factory.mktemp(request.param) / "source")


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> TransformerBridge:
    return load_model(checkpoint)
