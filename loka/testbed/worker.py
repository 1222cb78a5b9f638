"""Training models in worker processes, and building cache directories atomically.

``python -m loka.testbed.worker JOB.json`` trains one model: the build writes the job (training
data and configs) as JSON, starts one such process per model (a fresh interpreter, not
multiprocessing, so that it works from any script or notebook; one thread each, so the weights
depend on the seed alone) and reads back the saved HF directory and its ``train_log.json``.
:func:`build_directory` gives a build a temporary directory beside its cache entry that is renamed
into place only when everything succeeded; the testbed and the TOFU benchmark both use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast

from loka.testbed.training import ModelConfig, TrainConfig, train_model

__all__ = ["job", "train", "start", "finish", "build_directory"]

Jobs = dict[str, "subprocess.Popen[bytes]"]


def job(
    directory: Path,
    name: str,
    facts: list[tuple[str, str]],
    passages: list[str],
    model: ModelConfig,
    train_config: TrainConfig,
    *,
    progress: bool,
    position: int,
    desc: str,
) -> dict[str, Any]:
    """A job: train ``model`` on ``facts`` and ``passages`` with the tokenizer in
    ``directory/tokenizer``; save it to ``directory/name``."""
    return {
        "facts": facts,
        "passages": passages,
        "model": asdict(model),
        "train": asdict(train_config),
        "tokenizer": str(directory / "tokenizer"),
        "out": str(directory / name),
        "progress": progress,
        "position": position,
        "desc": desc,
    }


def train(spec: Mapping[str, Any]) -> None:
    """Run a job in this process: train, save the model and tokenizer, write ``train_log.json``."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(spec["tokenizer"])
    model, log = train_model(
        [tuple(pair) for pair in spec["facts"]],
        spec["passages"],
        tokenizer,
        ModelConfig(**spec["model"]),
        TrainConfig(**spec["train"]),
        progress=spec["progress"],
        desc=spec["desc"],
        position=spec["position"],
    )
    out = Path(spec["out"])
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    summary = {"steps": log.steps, "seconds": round(log.seconds, 2), "final_loss": round(log.epoch_losses[-1], 4)}
    (out / "train_log.json").write_text(json.dumps(summary))


def start(directory: Path, name: str, spec: Mapping[str, Any]) -> subprocess.Popen[bytes]:
    """Start ``python -m loka.testbed.worker`` on ``spec`` in its own process."""
    path = directory / f"{name}.job.json"
    path.write_text(json.dumps(spec))
    with (directory / f"{name}.stderr").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "loka.testbed.worker", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=None if spec["progress"] else log,
        )


def finish(directory: Path, name: str, process: subprocess.Popen[bytes], what: str) -> dict[str, Any]:
    """Wait for a worker; its ``train_log.json`` (RuntimeError with its stderr if it failed)."""
    if process.wait() != 0:
        tail = (directory / f"{name}.stderr").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"training {what} failed (exit {process.returncode}):\n{tail}")
    (directory / f"{name}.job.json").unlink()
    (directory / f"{name}.stderr").unlink()
    return json.loads((directory / name / "train_log.json").read_text())


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


if __name__ == "__main__":
    train(json.loads(Path(sys.argv[1]).read_text()))
