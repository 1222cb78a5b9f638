"""Running a comparison: the jobs (method x seed, each with its random control), the worker pool that
runs them beside the original's and the oracle's evaluations, and :func:`compare` / :func:`compare_testbed`
that gather them into a :class:`loka.comparison.Comparison` (what the comparison is: the package's docstring)."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import attribution
from ablation import random_edit_like
from loka.base.errors import UsageError
from loka.comparison.curve import budget_curve, check_sizes
from loka.comparison.outcomes import DEFAULT_METHODS, LOCATION_PREFIX, MethodOutcome
from loka.comparison.table import Comparison
from loka.data.knowledge import KnowledgeSet
from loka.evaluation.attacks.probe import fit_probe
from loka.evaluation.cache import cached_evaluate
from loka.evaluation.pipeline import evaluate
from loka.evaluation.result import UnlearningEvaluation
from loka.methods.budget import Budget
from loka.methods.localized.localization import LOCATIONS
from loka.methods.registry import METHODS, method_config, unlearn
from loka.methods.result import UnlearningResult
from loka.models import load_model
from loka.protocol import Protocol

__all__ = ["compare", "compare_testbed"]

logger = logging.getLogger(__name__)


def _control(model: Any, result: UnlearningResult, seed: int) -> Any:
    return random_edit_like(model, result.model, seed=seed)


_Job = tuple[str, str, dict[str, Any], int, bool]  # row name, method, options, seed, with a control


def _run(
    model: Any,
    job: _Job,
    protocol: Protocol,
    budget: Budget,
    common: Mapping[str, Any],
    oracle: UnlearningEvaluation | None,
    progress: bool,
) -> tuple[UnlearningResult, UnlearningEvaluation, UnlearningEvaluation | None]:
    """One method run and its evaluation (and its random control's); the result without its model."""
    name, method, method_options, run_seed, with_control = job
    logger.info("running %s (seed %d)", name, run_seed)
    result = unlearn(
        model, protocol.forget, protocol.retain_train, method=method, validation=protocol.retain_validation,
        reference=protocol.reference, augment=protocol.augment, budget=budget, seed=run_seed,
        progress=progress, **method_options,
    )  # fmt: skip
    evaluation = evaluate(result.model, **common, oracle=oracle, seen=result.seen, label=name)
    controlled = (
        evaluate(_control(model, result, run_seed), **common, label=f"{name} control") if with_control else None
    )
    return dataclasses.replace(result, model=None), evaluation, controlled


def _run_group(
    model: Any,
    jobs: Sequence[_Job],
    protocol: Protocol,
    budget: Budget,
    common: Mapping[str, Any],
    oracle: UnlearningEvaluation | None,
    progress: bool,
) -> list[tuple[UnlearningResult, UnlearningEvaluation, UnlearningEvaluation | None]]:
    """:func:`_run` for each job of a group (:func:`_groups`), in order, with one model."""
    if isinstance(model, str | Path):  # in a worker process
        torch.set_num_threads(1)
        model = load_model(model)
    return [_run(model, job, protocol, budget, common, oracle, progress) for job in jobs]


def _groups(jobs: Sequence[_Job]) -> list[list[int]]:
    """The jobs' indices in the groups that run together, in order: a LOKA location row's run goes
    right after the LOKA run it controls (same seed, same options but the location), in the same
    process, so that it reads that run's ranking instead of computing it again (the scores are
    the same either way: attribution is seeded); every other job is a group of its own."""
    groups: list[list[int]] = []
    owner: dict[tuple[int, str], list[int]] = {}
    for i, (_, method, options, run_seed, _) in enumerate(jobs):
        base = {k: v for k, v in options.items() if k not in ("location", "location_seed")}
        key = (run_seed, repr(sorted(base.items())))
        if method == "loka" and "location" in options and key in owner:
            owner[key].append(i)
            continue
        groups.append([i])
        if method == "loka" and "location" not in options:
            owner.setdefault(key, groups[-1])
    return groups


def compare(
    model: Any,
    *,
    protocol: Protocol | None = None,
    forget: KnowledgeSet | None = None,
    retain: KnowledgeSet | None = None,
    holdout: KnowledgeSet | None = None,
    oracle: Any = None,
    oracle_seconds: float | None = None,
    passages: KnowledgeSet | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    budget: Budget | None = None,
    seeds: int | Sequence[int] = 3,
    control_seeds: int | None = None,
    control: bool = True,
    locations: Sequence[str] | None = None,
    location_seeds: int | None = None,
    curve: Sequence[float] | None = None,
    probe: bool = True,
    relearn: bool = True,
    attribute: bool = True,
    seed: int = 0,
    progress: bool = True,
    workers: int = 1,
    title: str = "loka comparison",
    evaluation_cache: str | Path | None = None,
) -> Comparison:
    """Run ``methods`` on ``model`` (a TransformerBridge or a directory) under one protocol and
    evaluate each run.

    The sets come from ``protocol`` (:class:`loka.protocol.Protocol`), or are built from
    ``forget`` / ``retain`` / ``holdout`` (and ``passages``) with :meth:`Protocol.from_sets`
    (seeded by ``seed``). Every method gets the same sets, the same ``budget`` (:class:`Budget`:
    the stopping rule) and runs once per method seed (``seeds``: a count or the seeds
    themselves); each number is then a mean with a 95% interval over people and seeds, and every
    verdict reads all seeds.
    ``oracle`` (a model directory or model trained without ``forget``) is evaluated once and is
    every row's yardstick; ``oracle_seconds`` (its training time) goes in its row. ``options``
    maps a method name to its options for :func:`loka.unlearn`. ``variants`` adds rows of a method
    with other options, by row name (``{"loka subject": {"erase": "subject"}}``: the method is
    ``"loka"`` unless a ``"method"`` key names another; the options go on top of that method's
    ``options``), under the same sets, budget and seeds. ``control`` adds, for every run of every
    method (the first ``control_seeds`` runs when given: fewer seeds, and the verdict then meets
    the control on those seeds only), the evaluation of a random edit of the same size (same
    singular values, random directions). ``locations`` (default: ``("random",)`` when LOKA
    is among the methods) adds LOKA's localization controls
    (:data:`loka.methods.localized.localization.LOCATIONS`: ``"random"``, ``"least"``, ``"complement"``,
    ``"layers"``, ``"full"``) as rows ``loka @random`` ...: the same edit, objective, budget and
    seeds on other components (the first ``location_seeds`` seeds; default all);
    :meth:`Comparison.localization` says which won. ``curve`` (sizes,
    fractions of the components) adds LOKA's budget curve, located vs random, for the same seeds
    (:func:`loka.comparison.curve.budget_curve`; the report plots it).
    ``attribute`` attaches forget-set attribution scores for the report's heatmaps.
    ``workers`` > 1 runs the method runs (and their evaluations) in that many worker processes of
    one torch thread each (``model`` must then be a directory; a script that calls it needs an
    ``if __name__ == "__main__":`` guard); every run is seeded on its own, so the numbers are the
    same as with one process on one thread. ``evaluation_cache`` (a directory; the testbed's own
    for :func:`compare_testbed`) keeps the original's and the oracle's evaluations and reads them
    back when the weights, protocol, options and evaluation code are the same
    (:func:`loka.evaluation.cache.cached_evaluate`).
    """
    unknown = [m for m in methods if m not in METHODS or m == "retrain"]
    if unknown:
        allowed = ", ".join(m for m in METHODS if m != "retrain")
        raise UsageError(f"unknown method {unknown[0]!r} for compare; choose from {allowed} (the oracle is oracle=)")
    if len(set(methods)) != len(methods):
        raise UsageError(f"methods repeat a name: {list(methods)}")
    options = dict(options or {})
    stray = sorted(set(options) - set(methods))
    if stray:
        raise UsageError(f"options given for {stray[0]!r}, which is not among the methods {list(methods)}")
    extra = []
    for label, given in (variants or {}).items():
        given = dict(given)
        method = given.pop("method", "loka")
        if method not in METHODS or method == "retrain":
            raise UsageError(f"variant {label!r}: unknown method {method!r}")
        if label in methods or label.startswith(LOCATION_PREFIX):
            raise UsageError(f"variant name {label!r} is taken by a method or a location row; choose another")
        extra.append((label, method, {**options.get(method, {}), **given}))
    for name in methods:  # a bad option fails here, before any method runs
        method_config(name, **options.get(name, {}))
    for _, method, given in extra:
        method_config(method, **given)
    run_seeds = list(range(seeds)) if isinstance(seeds, int) and not isinstance(seeds, bool) else list(seeds)
    if not run_seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in run_seeds):
        raise UsageError(f"seeds must be a positive count or a list of non-negative integers, got {seeds!r}")
    if locations is None:
        locations = ("random",) if "loka" in methods else ()
    bad = [x for x in locations if x not in LOCATIONS or x == "located"]
    if isinstance(locations, str) or bad:
        allowed = ", ".join(x for x in LOCATIONS if x != "located")
        raise UsageError(f"unknown location {bad[0] if bad else locations!r}; locations are a list of {allowed}")
    if curve is not None:
        check_sizes(curve)
    if (locations or curve) and "loka" not in methods:
        raise UsageError("locations and curve are about LOKA's edit; include 'loka' in methods or leave them out")
    if control_seeds is not None and (isinstance(control_seeds, bool) or not isinstance(control_seeds, int)
                                      or control_seeds < 0):  # fmt: skip
        raise UsageError(f"control_seeds must be a non-negative integer or None (every seed), got {control_seeds!r}")
    if control_seeds is None:
        control_seeds = len(run_seeds)
    if protocol is None:
        missing = [n for n, v in (("forget", forget), ("retain", retain), ("holdout", holdout)) if v is None]
        if missing:
            raise UsageError(f"compare needs protocol= or all of forget=, retain=, holdout= (missing {missing})")
        protocol = Protocol.from_sets(forget=forget, retain=retain, holdout=holdout, passages=passages, seed=seed)
    elif any(v is not None for v in (forget, retain, holdout, passages)):
        raise UsageError("give either protocol= or forget=/retain=/holdout=/passages=, not both")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"workers must be a positive integer, got {workers!r}")
    source = model if isinstance(model, str | Path) else None
    if workers > 1 and source is None:
        raise UsageError("workers > 1 needs the model as a directory (each worker process loads it)")
    if isinstance(model, str | Path):
        model = load_model(model)
    budget = budget or Budget()
    common: dict[str, Any] = dict(protocol=protocol, probe=probe, relearn=relearn)
    rows = [(name, name, dict(options.get(name, {}))) for name in methods] + extra
    rows += [(f"{LOCATION_PREFIX}{x}", "loka", {**options.get("loka", {}), "location": x}) for x in locations]
    if location_seeds is not None and (isinstance(location_seeds, bool) or not isinstance(location_seeds, int)
                                       or location_seeds < 1):  # fmt: skip
        raise UsageError(f"location_seeds must be a positive integer or None, got {location_seeds!r}")
    jobs: list[_Job] = []
    for name, method, method_options in rows:
        for i, run_seed in enumerate(run_seeds[:location_seeds] if " @" in name else run_seeds):
            if "location" in method_options:  # each seed draws its own control components
                method_options = {**method_options, "location_seed": run_seed}
            # LOKA's own controls are the location rows; the direction control is for whole-model edits
            jobs.append((name, method, method_options, run_seed, control and method != "loka" and i < control_seeds))
    # the probe reads every model at the block where it reads the original best (chosen on held-out
    # retain people of the original): one readout location for all, fixed like the relearning grid
    pool = None
    if workers > 1:  # the method runs start now, beside the original's and the oracle's evaluations
        if probe:
            retain = protocol.retain_train + protocol.retain_validation + protocol.retain_eval
            common["probe_layer"] = fit_probe(model, model.tokenizer, protocol.forget, retain).layer
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    threads = torch.get_num_threads()
    if pool is not None:  # this process works beside the workers: one thread, or the pools spin against each other
        torch.set_num_threads(1)
    try:
        groups = _groups(jobs)
        futures = [] if pool is None else [
            pool.submit(_run_group, str(source), [jobs[i] for i in group], protocol, budget, dict(common), None, False)
            for group in groups
        ]  # fmt: skip
        outcomes = []
        cache = None if evaluation_cache is None else Path(evaluation_cache).expanduser()
        original = cached_evaluate(model, cache, **common, label="original")
        common["probe_layer"] = original.probe.layer if original.probe is not None else None
        oracle_evaluation = None
        if oracle is not None:
            oracle_model = load_model(oracle) if isinstance(oracle, str | Path) else oracle
            oracle_evaluation = cached_evaluate(oracle_model, cache, **common, label="oracle")
            original = dataclasses.replace(original, oracle=oracle_evaluation)
        outcomes.append(MethodOutcome("original", (original,)))
        if oracle_evaluation is not None:
            outcomes.append(MethodOutcome("oracle", (oracle_evaluation,), configs=({"oracle": str(oracle)},),
                                          seconds=oracle_seconds))  # fmt: skip
        scores = None
        if attribute:
            scores = attribution.attribute(
                model, protocol.forget, method="grad_x_act", baseline="corrupt", direction="denoise",
                positions="last", seed=seed, progress=progress,
            )  # fmt: skip
        if pool is None:
            grouped = _run_jobs(model, jobs, groups, protocol, budget, common, oracle_evaluation, progress)
        else:
            grouped = _collect(futures, oracle_evaluation, progress)
        by_job = {i: outcome for group, outcomes in zip(groups, grouped, strict=True)
                  for i, outcome in zip(group, outcomes, strict=True)}  # fmt: skip
        done = [by_job[i] for i in range(len(jobs))]
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
            torch.set_num_threads(threads)
    runs: dict[str, list[tuple[UnlearningResult, UnlearningEvaluation, UnlearningEvaluation | None]]] = {}
    for job, outcome in zip(jobs, done, strict=True):
        runs.setdefault(job[0], []).append(outcome)
    for name, _, _ in rows:
        done = runs[name]
        outcomes.append(
            MethodOutcome(
                name,
                tuple(ev for _, ev, _ in done),
                computes=tuple(r.compute for r, _, _ in done if r.compute is not None),
                configs=tuple(dict(r.config) for r, _, _ in done),
                controls=tuple(c for _, _, c in done if c is not None),
                mask=done[0][0].mask,
                seconds=float(np.mean([r.seconds for r, _, _ in done])),
            )
        )
    budget_curve_ = None
    if curve is not None:
        budget_curve_ = budget_curve(
            model, protocol, sizes=curve, seeds=run_seeds, budget=budget, options=options.get("loka"), progress=progress
        )
    return Comparison(tuple(outcomes), scores, title, protocol.sizes(), protocol.describe(), budget_curve_)


def _run_jobs(
    model: Any,
    jobs: Sequence[_Job],
    groups: Sequence[Sequence[int]],
    protocol: Protocol,
    budget: Budget,
    common: Mapping[str, Any],
    oracle: UnlearningEvaluation | None,
    progress: bool,
) -> list[list[tuple[UnlearningResult, UnlearningEvaluation, UnlearningEvaluation | None]]]:
    """Every group's outcomes (:func:`_groups`), in group order, in this process."""
    bar = tqdm(total=len(jobs), desc="compare: method runs", disable=not progress, leave=False)
    out = []
    for group in groups:
        out.append(_run_group(model, [jobs[i] for i in group], protocol, budget, common, oracle, progress))
        bar.update(len(group))
    bar.close()
    return out


def _collect(
    futures: Sequence[Future], oracle: UnlearningEvaluation | None, progress: bool
) -> list[list[tuple[UnlearningResult, UnlearningEvaluation, UnlearningEvaluation | None]]]:
    """The worker processes' outcomes, a list per group in group order, each evaluation with the
    oracle's attached (the workers ran before it was known; ``evaluate(oracle=an evaluation)``
    only stores it)."""
    bar = tqdm(total=len(futures), desc="compare: method runs", disable=not progress, leave=False)
    for _ in as_completed(futures):
        bar.update()
    bar.close()
    return [
        [(result, dataclasses.replace(evaluation, oracle=oracle), controlled)
         for result, evaluation, controlled in future.result()]
        for future in futures
    ]  # fmt: skip


def compare_testbed(testbed: Any, **kwargs: Any) -> Comparison:
    """:func:`compare` on a :class:`loka.testbed.Testbed` under its protocol
    (:meth:`loka.protocol.Protocol.from_testbed`): its original model, its oracle, the forget
    facts in one wording (the others scored as paraphrases), retain people split into train /
    validation / eval, holdout people split into reference and MIA non-members, and the forget
    people's passages (verbatim extraction). The original's and the oracle's evaluations are kept
    in the testbed's ``evaluations/`` directory (``evaluation_cache``) and read back next time."""
    config = testbed.config
    protocol = kwargs.pop("protocol", None) or Protocol.from_testbed(testbed, seed=kwargs.get("seed", 0))
    kwargs.setdefault(
        "title",
        f"loka comparison on the {testbed.root.name.split('-')[0]} testbed (world seed {config.world.seed}): "
        f"{len(protocol.forget)} forget facts / {len(protocol.retain_eval)} retain-eval facts",
    )
    kwargs.setdefault("evaluation_cache", testbed.root / "evaluations")
    return compare(
        testbed.model_dir if kwargs.get("workers", 1) > 1 else load_model(testbed.model_dir),
        protocol=protocol,
        oracle=testbed.oracle_dir,
        oracle_seconds=testbed.info["training"]["oracle"]["seconds"],
        **kwargs,
    )
