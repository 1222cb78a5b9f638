"""Training TOFU's two models (the original and the retain model) into a cache directory."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from loka.base.errors import UsageError
from loka.benchmarks.tofu.config import RECIPE_VERSION, TofuConfig
from loka.benchmarks.tofu.data import TofuData
from loka.testbed import worker
from loka.testbed.training import train_tokenizer

__all__ = ["build_models"]

logger = logging.getLogger(__name__)


def build_models(config: TofuConfig, data: TofuData, root: Path, *, progress: bool, workers: bool = True) -> None:
    """Train the original and the retain model at once, each in its own single-threaded worker
    process (:mod:`loka.testbed.worker`), under one progress bar, in a temporary directory renamed
    into place. ``workers=False`` trains them one after the other in this process (for tiny models,
    where starting two interpreters costs more than the training)."""
    start = time.perf_counter()
    with worker.build_directory(root) as (tmp, jobs):
        tokenizer = train_tokenizer(data.all_text(), config.vocab_size)
        tokenizer.save_pretrained(tmp / "tokenizer")
        longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in data.all_text()) + 2
        if longest > config.model.n_ctx:
            raise UsageError(f"a TOFU text is {longest} tokens, longer than n_ctx={config.model.n_ctx}")
        specs = {
            name: worker.job(tmp, name, data.training_pairs(name), [], config.model, config.train)  # type: ignore[arg-type]
            for name in ("original", "retain")
        }
        if workers:
            for name, spec in specs.items():
                jobs[name] = worker.start(tmp, name, spec)
            logs = worker.wait(
                tmp, jobs, specs, progress=progress, desc="training TOFU's models", what="the TOFU {name} model"
            )
        else:
            total = sum(worker.steps(spec) for spec in specs.values())
            logs = {}
            with tqdm(
                total=total, disable=not progress, desc="training TOFU's models", unit="step", leave=False
            ) as bar:
                for name, spec in specs.items():
                    before = bar.n
                    worker.train(spec, on_step=lambda done, before=before: bar.update(before + done - bar.n))
                    logs[name] = json.loads((tmp / name / "train_log.json").read_text())
        shutil.rmtree(tmp / "tokenizer")
        info = {
            "config": asdict(config),
            "recipe_version": RECIPE_VERSION,
            "build_seconds": round(time.perf_counter() - start, 2),
            "training": logs,
            "n_training_qa": {
                "original": len(data.training_pairs("original")),
                "retain": len(data.training_pairs("retain")),
            },
        }
        (tmp / "build.json").write_text(json.dumps(info, indent=2))
    logger.info("built TOFU models %s in %.1f s", root, time.perf_counter() - start)
