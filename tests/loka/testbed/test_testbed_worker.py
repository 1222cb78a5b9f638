"""The testbed's worker processes: a build shows one progress bar in the calling process, and its
workers print nothing (their progress reaches the parent through files; their stderr is kept only
to explain a failure)."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from loka import testbed
from loka.testbed import worker
from loka.testbed.training import ModelConfig, TrainConfig, count_steps
from loka.testbed.world import WorldConfig

SMALL = testbed.TestbedConfig(
    WorldConfig(n_forget=1, n_retain=3, n_holdout=1, passages=(1, 1, 0)),
    ModelConfig(n_layers=1, d_model=32, n_heads=2, d_mlp=64, vocab_size=512, n_ctx=256),
    TrainConfig(epochs=2, batch_size=16),
)


@pytest.mark.slow
def test_a_build_shows_one_bar_and_its_workers_print_nothing(tmp_path, capfd):
    built = testbed.load(config=SMALL, cache_dir=tmp_path, progress=False)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")  # workers silent, and no bar when progress is off
    assert not [p.name for p in built.root.iterdir() if p.suffix in (".progress", ".stderr") or ".job" in p.name]
    logs = built.info["training"]
    world = built.world
    for name, splits in (("original", ("forget", "retain")), ("oracle", ("retain",))):
        facts, passages = world.training_examples(splits)
        assert logs[name]["steps"] == count_steps(len(facts), len(passages), SMALL.train)

    testbed.load(config=SMALL, cache_dir=tmp_path / "again", progress=True)
    _, err = capfd.readouterr()
    updates = [u for u in re.split(r"[\r\n]", err) if u.strip()]
    assert updates, "the build showed no progress bar"
    assert all(u.startswith("building the testbed") for u in updates), updates[:5]  # one bar, the parent's


@pytest.mark.slow
def test_a_failing_worker_says_why(tmp_path):
    with pytest.raises(RuntimeError, match=r"(?s)training the broken model failed \(exit 1\):\n.*tokenizer"):
        with worker.build_directory(tmp_path / "out") as (tmp, jobs):
            spec = worker.job(tmp, "broken", [("a", "b")], [], ModelConfig(n_layers=1, d_model=32), TrainConfig())
            jobs["broken"] = worker.start(tmp, "broken", spec)  # no tokenizer in tmp: the worker fails
            worker.wait(tmp, jobs, {"broken": spec}, progress=False, desc="test")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == []


def test_two_callers_at_once_build_an_entry_once(tmp_path):
    """``build_once``: the second caller waits for the first one's build and then finds it built."""
    root = tmp_path / "entry"
    calls: list[int] = []

    def build() -> None:
        calls.append(1)
        time.sleep(0.3)  # long enough for the other thread to reach the lock
        root.mkdir()
        (root / "done.json").write_text("{}")

    with ThreadPoolExecutor(2) as pool:
        built = list(pool.map(lambda _: worker.build_once(root, "done.json", build), range(2)))
    assert calls == [1] and sorted(built) == [False, True]
    assert worker.build_once(root, "done.json", build) is False and calls == [1]
