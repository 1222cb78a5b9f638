"""Fixtures shared by the attribution tests: the tiny testbed's model, a donor pool (one torch
thread: tests/conftest.py)."""

from __future__ import annotations

import pytest
from transformer_lens.model_bridge import TransformerBridge

from loka.data import KnowledgeSet
from loka.models import load_model
from loka.testbed import Testbed


@pytest.fixture(scope="module")
def model(tiny_testbed: Testbed) -> TransformerBridge:
    return load_model(tiny_testbed.model_dir)


@pytest.fixture(scope="module")
def pool(tiny_testbed: Testbed) -> KnowledgeSet:
    """Donors for resampling and subject replacement: every trained fact."""
    return tiny_testbed.forget + tiny_testbed.retain
