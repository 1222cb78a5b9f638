"""Training models in worker processes with one progress bar, and building cache directories atomically.

A build (the testbed's original and oracle, TOFU's original and retain model) trains its models at
once, one worker process each: a fresh interpreter started with ``subprocess``, not
``multiprocessing``, so that it works from any script or notebook (no ``if __name__ ==
"__main__"`` guard needed), on one thread each, so the weights depend on the seed alone. The build
writes each job (training data and configs) as JSON; the worker trains, saves the HF directory and
its ``train_log.json``, and prints nothing: it reports its progress by rewriting a small file
(``NAME.progress``, the number of optimizer steps done) and its stderr goes to ``NAME.stderr``,
shown only if it fails. :func:`wait` polls those files and shows **one** tqdm bar for the whole
build in the calling process (a widget in a notebook, with ``ipywidgets``).

:func:`build_directory` gives a build a temporary directory beside its cache entry that is renamed
into place only when everything succeeded; :func:`build_once` makes processes that want the same
entry at once (two notebooks, test workers) build it once: the others wait for it. The testbed, its
planted variant and the TOFU benchmark use both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from loka.testbed.training import ModelConfig, TrainConfig, count_steps, train_model

__all__ = ["job", "train", "start", "wait", "build_directory", "build_once"]

logger = logging.getLogger(__name__)

Jobs = dict[str, "subprocess.Popen[bytes]"]
POLL_SECONDS = 0.2
"""How often :func:`wait` reads the workers' progress files (and a worker at most rewrites its own)."""


def job(
    directory: Path,
    name: str,
    facts: list[tuple[str, str]],
    passages: list[str],
    model: ModelConfig,
    train_config: TrainConfig,
) -> dict[str, Any]:
    """A job: train ``model`` on ``facts`` and ``passages`` with the tokenizer in
    ``directory/tokenizer``; save it to ``directory/name``; report progress to ``directory/name.progress``."""
    return {
        "facts": facts,
        "passages": passages,
        "model": asdict(model),
        "train": asdict(train_config),
        "tokenizer": str(directory / "tokenizer"),
        "out": str(directory / name),
        "progress_file": str(directory / f"{name}.progress"),
    }


def steps(spec: Mapping[str, Any]) -> int:
    """How many optimizer steps the job ``spec`` takes."""
    return count_steps(len(spec["facts"]), len(spec["passages"]), TrainConfig(**spec["train"]))


def _progress_writer(path: Path) -> Callable[[int], None]:
    """``on_step`` for :func:`loka.testbed.training.train_model`: rewrite ``path`` with the steps
    done, at most every :data:`POLL_SECONDS` (atomically, so a reader never sees half a number)."""
    last = 0.0

    def write(done: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= POLL_SECONDS:
            last = now
            tmp = path.with_suffix(".progress-tmp")
            tmp.write_text(str(done))
            os.replace(tmp, path)

    return write


def train(spec: Mapping[str, Any], *, on_step: Callable[[int], None] | None = None) -> None:
    """Run a job in this process: train, save the model and tokenizer, write ``train_log.json``.
    ``on_step(done)`` is called after every optimizer step (default: write the progress file)."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(spec["tokenizer"])
    report = on_step is None  # a worker process: the parent reads the progress file
    if on_step is None:
        on_step = _progress_writer(Path(spec["progress_file"]))
    model, log = train_model(
        [tuple(pair) for pair in spec["facts"]],
        spec["passages"],
        tokenizer,
        ModelConfig(**spec["model"]),
        TrainConfig(**spec["train"]),
        progress=False,
        on_step=on_step,
    )
    out = Path(spec["out"])
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    summary = {"steps": log.steps, "seconds": round(log.seconds, 2), "final_loss": round(log.epoch_losses[-1], 4)}
    (out / "train_log.json").write_text(json.dumps(summary))
    if report:
        Path(spec["progress_file"]).write_text(str(log.steps))


def _main(job_file: str) -> None:
    """The worker process: run the job in ``job_file`` (see :func:`start`)."""
    train(json.loads(Path(job_file).read_text()))


def start(directory: Path, name: str, spec: Mapping[str, Any]) -> subprocess.Popen[bytes]:
    """Start a worker process on ``spec``; it prints nothing (stderr goes to ``directory/name.stderr``)."""
    path = directory / f"{name}.job.json"
    path.write_text(json.dumps(spec))
    command = "import sys; from loka.testbed.worker import _main; _main(sys.argv[1])"
    with (directory / f"{name}.stderr").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", command, str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
        )


def _done(directory: Path, name: str) -> int:
    try:
        return int((directory / f"{name}.progress").read_text() or 0)
    except (OSError, ValueError):
        return 0


def _failure(directory: Path, name: str, process: subprocess.Popen[bytes], what: str) -> RuntimeError:
    tail = (directory / f"{name}.stderr").read_text(errors="replace")[-2000:]
    return RuntimeError(f"training {what.format(name=name)} failed (exit {process.returncode}):\n{tail}")


def wait(
    directory: Path,
    jobs: Jobs,
    specs: Mapping[str, Mapping[str, Any]],
    *,
    progress: bool,
    desc: str,
    what: str = "the {name} model",
) -> dict[str, dict[str, Any]]:
    """Wait for the workers in ``jobs`` (started on ``specs``) with one progress bar over all of
    their steps; return each one's ``train_log.json``. A worker that fails raises a RuntimeError
    with its stderr (``what`` names it, ``{name}`` filled in); :func:`build_directory` then stops
    the others."""
    total = sum(steps(specs[name]) for name in jobs)
    with tqdm(total=total, disable=not progress, desc=desc, unit="step", leave=False) as bar:
        while True:
            finished = {name: process.poll() for name, process in jobs.items()}
            for name, code in finished.items():
                if code not in (None, 0):
                    raise _failure(directory, name, jobs[name], what)
            bar.update(sum(_done(directory, name) for name in jobs) - bar.n)
            if all(code == 0 for code in finished.values()):
                break
            time.sleep(POLL_SECONDS)
    logs = {}
    for name in jobs:
        stderr = (directory / f"{name}.stderr").read_text(errors="replace")
        if stderr.strip():
            logger.debug("worker %s wrote to stderr:\n%s", name, stderr)
        for suffix in (".job.json", ".stderr", ".progress"):
            (directory / f"{name}{suffix}").unlink(missing_ok=True)
        logs[name] = json.loads((directory / name / "train_log.json").read_text())
    return logs


def build_once(root: Path, marker: str, build: Callable[[], None]) -> bool:
    """Call ``build`` unless ``root / marker`` exists, holding an exclusive lock on
    ``.{root.name}.lock`` beside ``root`` (``fcntl``; without it, as before: a process that finishes
    second keeps the first copy), so a second process asking for the same entry waits for the first
    one's build instead of repeating it. True when this call built it."""
    if (root / marker).is_file():
        return False
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX
        fcntl = None  # type: ignore[assignment]
    with open(root.parent / f".{root.name}.lock", "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (root / marker).is_file():  # built while this process waited
                return False
            build()
            return True
        finally:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def build_directory(root: Path) -> Iterator[tuple[Path, Jobs]]:
    """``with build_directory(root) as (tmp, jobs):`` build into ``tmp`` (beside ``root``); on
    success ``tmp`` becomes ``root`` (unless another process finished first: its copy is kept);
    on any error the workers in ``jobs`` are killed and ``tmp`` is removed."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    jobs: Jobs = {}
    try:
        yield tmp, jobs
        if root.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, root)
    except BaseException:
        for process in jobs.values():
            process.kill()
            process.wait()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
