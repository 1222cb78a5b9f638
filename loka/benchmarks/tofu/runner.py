"""TOFU's protocol: build or load the two models, run every method under one budget, score them all."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from loka.base.checks import check_number
from loka.base.errors import UsageError
from loka.benchmarks.tofu import metrics as tm
from loka.benchmarks.tofu.building import build_models
from loka.benchmarks.tofu.config import METHODS, data_directory, default_cache_dir, file_hashes, make_config
from loka.benchmarks.tofu.data import load_data
from loka.benchmarks.tofu.report import TofuReport
from loka.benchmarks.tofu.scoring import TofuScores, evaluate_model, jsonable
from loka.methods.budget import Budget
from loka.methods.registry import unlearn
from loka.models import load_model, quiet_transformers
from loka.protocol import Protocol, Seen
from loka.scoring.metrics import score_facts
from loka.testbed import worker

__all__ = ["run"]

# set by the protocol (the same for every method), never a method option
_PROTOCOL_OPTIONS = frozenset(
    {"validation", "reference", "augment", "budget", "seed", "progress", "tokenizer", "method",
     "target_forget_accuracy", "check_every", "max_steps"}
)  # fmt: skip


def _check_unseen(method: str, seen: Seen, protocol: Protocol) -> None:
    """Refuse to score a method on a retain_eval or non-member author it was shown."""
    for name in ("retain_eval", "nonmembers"):
        shared = seen.clash(getattr(protocol, name))
        if shared is not None:
            raise UsageError(
                f"{method} was given {shared}, which TOFU scores it on ({name}); a method may see only forget, "
                "retain_train, retain_validation and reference"
            )


def run(
    split: str = "forget01",
    *,
    n_retain_authors: int | None = None,
    size: str = "default",
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    methods: Sequence[str] = METHODS,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
    seed: int = 0,
    seeds: int = 1,
    budget: Budget | None = None,
    relative_target: float | None = None,
) -> TofuReport:
    """Run TOFU's protocol on a CPU-sized model and return its table (see the module docstring).

    ``split``: ``"forget01"`` | ``"forget05"`` | ``"forget10"`` (2 / 10 / 20 forget authors).
    ``n_retain_authors``: how many other authors (the first ones of ``full``) both models train
    on (default: 10, or 3 for ``size="tiny"``; from 3 to 200 minus the forget authors).
    ``data_dir``: TOFU's JSONL files (default ``$LOKA_TOFU_DIR``). ``cache_dir``: where the trained
    models are kept (default :func:`default_cache_dir`). ``methods``: any of ``"loka"``,
    ``"gradient_ascent"``, ``"npo"``, ``"rmu"``, ``"task_vector"``, in row order. ``method_options``: per-method options
    passed to :func:`loka.methods.unlearn` (e.g. ``{"gradient_ascent": {"lr": 1e-4}}``); the sets,
    seed and budget are the protocol's and cannot be set there. ``seed``: the models' training
    seed, the author split's seed and the first method seed; ``seeds``: how many method seeds
    (``seed``, ``seed + 1``, ...) each method runs with. ``budget``: the stopping rule every method
    follows (default ``Budget()``). ``relative_target``: stop instead at that share of the
    original's own forget accuracy (``0 < relative_target <= 1``; ``budget.target_forget_accuracy``
    is then replaced by ``relative_target x`` the original's answer accuracy on the forget prompts,
    measured as the budget measures it), so that one setting means "lose this share of what you
    knew" on any split and model size. Measured on forget01 (default size): the original answers
    0.997 of the forget answers' tokens and the retain model, which never saw those authors,
    0.087; under the fixed 0.1, NPO ran to its 500-step cap and RMU's candidates stopped at 0.38
    (``bench/results/tofu_forget01_npo_rmu.json``).
    """
    start = time.perf_counter()
    if relative_target is not None:
        check_number("relative_target", relative_target, low=0.0, high=1.0, above=True)
    directory = data_directory(data_dir)
    config = make_config(split, n_retain_authors=n_retain_authors, size=size, seed=seed)
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or len(set(methods)) != len(methods):
        raise UsageError(f"methods must be distinct names among {', '.join(METHODS)}; got {list(methods)}")
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise UsageError(f"seeds must be a positive integer (how many method seeds), got {seeds!r}")
    if budget is None:
        budget = Budget()
    elif not isinstance(budget, Budget):
        raise UsageError(f"budget must be a loka.methods.Budget, got {type(budget).__name__}")
    method_options = dict(method_options or {})
    stray = sorted(set(method_options) - set(methods))
    if stray:
        raise UsageError(f"method_options names method(s) {stray} that are not run; methods are {list(methods)}")
    for method, options in method_options.items():
        fixed = sorted(set(options) & _PROTOCOL_OPTIONS)
        if fixed:
            raise UsageError(
                f"method_options for {method!r} set {fixed}: every method gets the protocol's sets, seeds and "
                "budget (pass run(budget=Budget(...)), run(seed=..., seeds=...))"
            )
    config = replace(config, data=file_hashes(directory))
    data = load_data(config, directory)
    protocol = data.protocol
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache / f"{size}-{split}-r{config.n_retain_authors}-{config.key()}"
    built_now = worker.build_once(
        root, "build.json", lambda: build_models(config, data, root, progress=progress, workers=size != "tiny")
    )
    build = json.loads((root / "build.json").read_text())
    build_seconds = time.perf_counter() - start

    tokenizer = AutoTokenizer.from_pretrained(root / "original")
    with quiet_transformers():
        retain_model = AutoModelForCausalLM.from_pretrained(root / "retain").eval()
        # LOKA reads the model through TransformerLens hooks; the other methods take a plain HF model
        original = (
            load_model(root / "original")
            if "loka" in methods
            else AutoModelForCausalLM.from_pretrained(root / "original").eval()
        )
    original_accuracy = None
    if relative_target is not None:
        original_accuracy = score_facts(original, protocol.forget, tokenizer=tokenizer).answer_accuracy
        budget = replace(budget, target_forget_accuracy=relative_target * original_accuracy)
    models: list[TofuScores] = []
    timings: dict[str, float] = {}
    method_seeds = list(range(seed, seed + seeds))
    bar = tqdm(total=2 + len(methods) * seeds, disable=not progress, desc=f"TOFU {split}", leave=False)
    t = time.perf_counter()
    retain_scores = evaluate_model(retain_model, data, tokenizer=tokenizer, name="retain", template=config.template)
    reference_ratios = retain_scores.forget_truth_ratios
    retain_scores = replace(
        retain_scores,
        forget_quality=tm.forget_quality(reference_ratios, reference_ratios),
        seconds=build["training"]["retain"]["seconds"],
    )
    timings["evaluate retain"] = time.perf_counter() - t
    bar.update()
    t = time.perf_counter()
    original_scores = evaluate_model(
        original,
        data,
        tokenizer=tokenizer,
        name="original",
        template=config.template,
        retain_model_ratios=reference_ratios,
    )
    models += [replace(original_scores, seconds=build["training"]["original"]["seconds"]), retain_scores]
    timings["evaluate original"] = time.perf_counter() - t
    bar.update()
    for method in methods:
        for method_seed in method_seeds:
            bar.set_postfix(method=method, seed=method_seed)
            result = unlearn(
                original,
                protocol.forget,
                protocol.retain_train,
                method=method,  # type: ignore[arg-type]
                validation=protocol.retain_validation,
                reference=protocol.reference,
                budget=budget,
                seed=method_seed,
                progress=False,
                tokenizer=tokenizer,
                **method_options.get(method, {}),
            )
            _check_unseen(method, result.seen, protocol)
            t = time.perf_counter()
            scores = evaluate_model(
                result.model,
                data,
                tokenizer=tokenizer,
                name=method,
                template=config.template,
                retain_model_ratios=reference_ratios,
            )
            timings[f"evaluate {method} seed {method_seed}"] = time.perf_counter() - t
            compute = None if result.compute is None else result.compute.to_dict()
            models.append(
                replace(
                    scores, seconds=result.seconds, config=jsonable(result.config), seed=method_seed, compute=compute
                )
            )
            del result
            bar.update()
    bar.close()
    info = {
        "config": asdict(config),
        "cache_dir": str(root),
        "data_dir": str(directory),
        "forget_authors": list(config.forget_authors),
        "authors": {  # who is in which protocol set (fact-id prefixes)
            "retain_train": [f"tofu/a{a:03d}" for a in data.authors.retain_train],
            "retain_validation": [f"tofu/a{a:03d}" for a in data.authors.retain_validation],
            "retain_eval": [f"tofu/a{a:03d}" for a in data.authors.retain_eval],
            "reference": [f"tofu/holdout/a{a:03d}" for a in data.authors.reference],
            "nonmembers": [f"tofu/holdout/a{a:03d}" for a in data.authors.nonmembers],
        },
        "protocol": protocol.sizes(),
        "budget": asdict(budget),
        **(
            {"relative_target": relative_target, "original_forget_accuracy": original_accuracy}
            if relative_target is not None
            else {}
        ),
        "method_seeds": method_seeds,
        "n_qa": {
            "forget": len(data.forget),
            "retain": len(data.retain),
            "utility": len(data.utility),
            "holdout": len(data.holdout),
            **{f"eval {k}": len(v) for k, v in data.evals.items()},
        },
        "training": build["training"],
        "built_now": built_now,
        "seconds": {
            "build or load": round(build_seconds, 2),
            **{k: round(v, 2) for k, v in timings.items()},
            **{f"unlearn {m.name} seed {m.seed}": round(m.seconds, 2) for m in models[2:] if m.seconds is not None},
            "total": round(time.perf_counter() - start, 2),
        },
    }
    return TofuReport(
        split=split,
        size=size,
        n_retain_authors=config.n_retain_authors,
        seed=seed,
        models=tuple(models),
        info=info,
        seeds=seeds,
    )
