"""Worker process of the testbed build: ``python -m loka.testbed.worker JOB.json`` trains one model.

The build starts one such process per model (a fresh interpreter, not multiprocessing, so that it
works from any script or notebook), writes the job (training data and configs) as JSON, and reads
back the saved HF directory and its ``train_log.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from loka.testbed.training import ModelConfig, TrainConfig, train_model


def _main(job_path: str) -> None:
    """Train the model that the JSON job file describes and save it where the job says."""
    job = json.loads(Path(job_path).read_text())
    tokenizer = PreTrainedTokenizerFast.from_pretrained(job["tokenizer"])
    model, log = train_model(
        [tuple(pair) for pair in job["facts"]],
        job["passages"],
        tokenizer,
        ModelConfig(**job["model"]),
        TrainConfig(**job["train"]),
        progress=job["progress"],
        desc=job["desc"],
        position=job["position"],
    )
    out = Path(job["out"])
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    summary = {"steps": log.steps, "seconds": round(log.seconds, 2), "final_loss": round(log.epoch_losses[-1], 4)}
    (out / "train_log.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    _main(sys.argv[1])
