"""Session fixtures: the tiny testbed, built once and cached between sessions.

Where testbeds are cached:

- ``$LOKA_TEST_CACHE`` if set;
- else pytest's cache directory (``.pytest_cache/d/loka-testbed`` in the checkout), so the first
  session of a clone builds the tiny testbed (about a minute) and later ones reuse it;
  ``pytest --cache-clear`` builds it again;
- else (``-p no:cacheprovider``) a fresh temporary directory: every session builds from scratch.

A cached build is named by a hash of its config and ``loka.testbed.RECIPE_VERSION``, so another
config is another directory; ``tests/loka/testbed/test_testbed.py::test_tiny_rebuild_gives_the_same_weights``
rebuilds from scratch and fails when the cache no longer matches the code (a recipe change
without a ``RECIPE_VERSION`` bump).

``LOKA_TEST_SEED=<n>`` runs the session on the tiny testbed of another seed (default 0): a model
this machine did not happen to train, for checking that bounds on trained models are margins
and not properties of one model. Tests that name the seed-0 world's people skip under it
(``seed0_world``).

Torch runs on one intra-op thread in every test (``LOKA_TEST_THREADS`` to change it): the models
here are tiny, and on a small shared machine torch's thread pool spin-waits against other
processes (a forward of the tiny testbed took 43 ms on two threads, 1.5 ms on one).

Markers: ``slow`` (registered in pyproject.toml); ``pytest -m "not slow"`` is the fast tier.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from loka import testbed

TEST_SEED = int(os.environ.get("LOKA_TEST_SEED", "0"))
THREADS = int(os.environ.get("LOKA_TEST_THREADS", "1"))
STARTED = time.time()  # this process's session start: a cached build written after it was built by this session


@pytest.fixture(scope="session", autouse=True)
def torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def testbed_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's testbeds are cached (see the module docstring)."""
    shared = os.environ.get("LOKA_TEST_CACHE")
    if shared:
        return Path(shared)
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("loka-testbed"))
    return tmp_path_factory.mktemp("testbed-cache")


@pytest.fixture(scope="session")
def session_start() -> float:
    """When this test process started (a testbed whose ``testbed.json`` is newer was built by this session)."""
    return STARTED


@pytest.fixture(scope="session")
def tiny_testbed(testbed_cache: Path) -> testbed.Testbed:
    return testbed.load("tiny", seed=TEST_SEED, cache_dir=testbed_cache, progress=False)


@pytest.fixture
def seed0_world() -> None:
    """For tests that name people or tokens of the seed-0 world: skip under ``LOKA_TEST_SEED``."""
    if TEST_SEED != 0:
        pytest.skip(f"names the seed-0 world's people (LOKA_TEST_SEED={TEST_SEED})")
