"""Session fixtures: the tiny testbed, built once per test session into a temporary cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loka import testbed


@pytest.fixture(scope="session")
def testbed_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's testbeds are cached: ``$LOKA_TEST_CACHE`` if set (reused across runs),
    else a fresh temporary directory (every session builds from scratch)."""
    shared = os.environ.get("LOKA_TEST_CACHE")
    return Path(shared) if shared else tmp_path_factory.mktemp("testbed-cache")


@pytest.fixture(scope="session")
def tiny_testbed(testbed_cache: Path) -> testbed.Testbed:
    return testbed.load("tiny", seed=0, cache_dir=testbed_cache, progress=False)
