"""TOFU's run configuration: the splits and sizes, the data files, and the key that names the cache.

A :class:`TofuConfig` holds everything that determines the two trained models (the original and the
retain model); its :meth:`~TofuConfig.key` (a hash of the config, the recipe version and the data
files' SHA-256) names their cache directory, so a changed recipe or data file trains anew.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from loka.base.errors import UsageError
from loka.testbed import default_cache_dir as testbed_cache_dir
from loka.testbed.training import ModelConfig, TrainConfig

__all__ = [
    "SPLITS", "SIZES", "METHODS", "TEMPLATE", "FILES", "HOLDOUT_FILES", "RECIPE_VERSION", "N_AUTHORS",
    "QA_PER_AUTHOR", "N_PERTURBED_AUTHORS", "VALIDATION_FRACTION", "EVAL_FRACTION", "MIN_RETAIN_AUTHORS",
    "TofuConfig", "default_cache_dir", "data_directory", "file_hashes", "make_config",
]  # fmt: skip

Split = Literal["forget01", "forget05", "forget10"]
Size = Literal["default", "tiny"]
MethodName = Literal["loka", "gradient_ascent", "npo", "rmu", "task_vector"]
SPLITS: tuple[Split, ...] = ("forget01", "forget05", "forget10")
SIZES: tuple[Size, ...] = ("default", "tiny")
METHODS: tuple[MethodName, ...] = ("loka", "gradient_ascent", "npo", "rmu", "task_vector")
# bump when the recipe changes in a way the config does not capture (2: the saved tokenizer adds
# BOS itself, loka.testbed.training.train_tokenizer; the weights are trained as before)
RECIPE_VERSION = 2
VALIDATION_FRACTION = 0.1  # of the retain authors: retain_validation (a method's budget choice)
EVAL_FRACTION = 0.3  # of the retain authors: retain_eval (scored only)
MIN_RETAIN_AUTHORS = 3  # one each for retain_train, retain_validation, retain_eval

N_AUTHORS = 200
QA_PER_AUTHOR = 20
N_PERTURBED_AUTHORS = 20  # retain_perturbed covers authors 0-19
TEMPLATE = "Question: {question}\nAnswer:"
_N_FORGET_AUTHORS = {"forget01": 2, "forget05": 10, "forget10": 20}
HOLDOUT_FILES = {"forget01": "holdout01", "forget05": "holdout05", "forget10": "holdout10"}
FILES = (
    "full",
    "forget01_perturbed",
    "forget05_perturbed",
    "forget10_perturbed",
    "retain_perturbed",
    "real_authors_perturbed",
    "world_facts_perturbed",
    "holdout01",
    "holdout05",
    "holdout10",
)


def default_cache_dir() -> Path:
    """``$LOKA_CACHE_DIR/tofu`` if set, else ``~/.cache/loka/tofu`` (the testbed cache's sibling)."""
    return testbed_cache_dir().parent / "tofu"


@dataclass(frozen=True)
class TofuConfig:
    """Everything that determines the two trained models; its hash names the cache directory.

    ``n_utility`` is how many real-authors and how many world-facts questions are used (the
    first ones of each; ``None``: all 100 and 117). ``data`` holds the SHA-256 of each data file.
    """

    split: Split
    n_retain_authors: int
    n_utility: int | None
    model: ModelConfig
    train: TrainConfig
    vocab_size: int
    template: str = TEMPLATE
    data: tuple[tuple[str, str], ...] = ()

    @property
    def n_forget_authors(self) -> int:
        return _N_FORGET_AUTHORS[self.split]

    @property
    def forget_authors(self) -> tuple[int, ...]:
        return tuple(range(N_AUTHORS - self.n_forget_authors, N_AUTHORS))

    @property
    def retain_authors(self) -> tuple[int, ...]:
        return tuple(range(self.n_retain_authors))

    def key(self) -> str:
        blob = json.dumps({"recipe": RECIPE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(
        n_retain_authors=10,
        n_utility=None,
        model=ModelConfig(n_layers=4, d_model=128, n_heads=4, d_mlp=512, vocab_size=2048, n_ctx=512),
        train=TrainConfig(epochs=30, batch_size=32, lr=3e-3, passage_repeats=1),
        vocab_size=2048,
    ),
    "tiny": dict(
        n_retain_authors=3,
        n_utility=10,
        model=ModelConfig(n_layers=2, d_model=64, n_heads=4, d_mlp=256, vocab_size=1024, n_ctx=512),
        train=TrainConfig(epochs=8, batch_size=16, lr=5e-3, passage_repeats=1),
        vocab_size=1024,
    ),
}


def data_directory(data_dir: str | os.PathLike[str] | None) -> Path:
    if data_dir is None:
        data_dir = os.environ.get("LOKA_TOFU_DIR")
        if not data_dir:
            raise UsageError("no TOFU data directory: pass data_dir= or set LOKA_TOFU_DIR to a directory of TOFU JSONL")
    path = Path(data_dir)
    missing = [f"{name}.jsonl" for name in FILES if not (path / f"{name}.jsonl").is_file()]
    if not path.is_dir() or missing:
        what = "does not exist" if not path.is_dir() else f"lacks {', '.join(missing)}"
        raise UsageError(
            f"TOFU data directory {str(path)!r} {what}; it must hold TOFU's JSONL files ({FILES[0]}.jsonl, ...)"
        )
    return path


def file_hashes(directory: Path) -> tuple[tuple[str, str], ...]:
    out = []
    for name in FILES:
        with (directory / f"{name}.jsonl").open("rb") as f:
            out.append((name, hashlib.file_digest(f, "sha256").hexdigest()))
    return tuple(out)


def make_config(
    split: str, *, n_retain_authors: int | None = None, size: str = "default", seed: int = 0, data_hashes: Any = ()
) -> TofuConfig:
    """The config of a run, with every argument checked (ValueError says what is allowed)."""
    if split not in SPLITS:
        raise UsageError(f"unknown TOFU split {split!r}; choose one of {', '.join(SPLITS)}")
    if size not in SIZES:
        raise UsageError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
    preset = dict(_PRESETS[size])
    most = N_AUTHORS - _N_FORGET_AUTHORS[split]
    if n_retain_authors is None:
        n_retain_authors = preset["n_retain_authors"]
    low = MIN_RETAIN_AUTHORS
    if (
        not isinstance(n_retain_authors, int)
        or isinstance(n_retain_authors, bool)
        or not low <= n_retain_authors <= most
    ):
        raise UsageError(
            f"n_retain_authors must be an integer from {low} to {most} for {split} (the retain authors are split "
            f"into retain_train, retain_validation and retain_eval), got {n_retain_authors!r}"
        )
    preset.update(n_retain_authors=n_retain_authors, train=replace(preset["train"], seed=seed))
    return TofuConfig(split=split, data=tuple(data_hashes), **preset)  # type: ignore[arg-type]
