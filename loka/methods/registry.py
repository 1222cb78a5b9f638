"""The methods by name, their configs, and ``unlearn``: one entry point for every method."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Literal

import torch

from loka.base.distributed import active, all_reduce_sum
from loka.base.errors import UsageError
from loka.data.knowledge import KnowledgeSet
from loka.methods.budget import Budget, Compute, TokenMeter, last_step
from loka.methods.config import MethodConfig
from loka.methods.gradient_ascent import GradientAscentConfig, run_gradient_ascent
from loka.methods.localized.config import LokaConfig
from loka.methods.localized.driver import run_loka
from loka.methods.npo import NPOConfig, run_npo
from loka.methods.result import UnlearningResult
from loka.methods.retrain import RetrainConfig
from loka.methods.rmu import RMUConfig, rmu
from loka.methods.task_vector import TaskVectorConfig, run_task_vector
from loka.models import hf_model, load_model, same_kind_as
from loka.protocol import Seen

__all__ = ["Method", "METHODS", "unlearn", "CONFIGS", "method_config"]

Method = Literal["loka", "gradient_ascent", "npo", "rmu", "task_vector", "retrain"]


METHODS: tuple[Method, ...] = ("loka", "gradient_ascent", "npo", "rmu", "task_vector", "retrain")
_BUDGET_KEYS = ("target_forget_accuracy", "check_every", "max_steps")


def unlearn(
    model: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    method: Method,
    validation: KnowledgeSet | None = None,
    reference: KnowledgeSet | None = None,
    augment: KnowledgeSet | None = None,
    budget: Budget | None = None,
    seed: int = 0,
    progress: bool = True,
    tokenizer: Any = None,
    config: MethodConfig | None = None,
    **options: Any,
) -> UnlearningResult:
    """Remove ``forget`` from ``model`` while keeping ``retain``; returns an edited copy.

    ``validation`` are retain facts of other people that choose a method's hyper-parameters and
    are never trained on (default: a fifth of the ``retain`` people, held back from training).
    ``reference`` are facts about people the model never saw ("what unknown looks like"; LOKA's
    target). ``augment`` are extra wordings of the forget facts that a method may train on; the
    forget facts' own ``paraphrases`` are used too, so leave evaluation wordings out of what you
    pass (:class:`loka.protocol.Protocol` does). ``budget`` is the stopping rule shared by every
    method (:class:`Budget`; its fields may also be given as keywords). ``config`` is the
    method's own options (:class:`LokaConfig`, :class:`GradientAscentConfig`,
    :class:`TaskVectorConfig`, :class:`RetrainConfig`); the other keywords are sugar for it
    (``method="loka", size=0.02`` builds ``LokaConfig(size=0.02)``), and an unknown one is a
    :class:`loka.base.errors.UsageError` that lists the method's options. ``result.config`` records
    every option, what the method resolved or chose, the budget and the seed.
    """
    if method not in METHODS:
        raise UsageError(f"unknown unlearning method {method!r}; choose one of {', '.join(METHODS)}")
    named = {"forget": forget, "retain": retain}
    named.update(
        {k: v for k, v in (("validation", validation), ("reference", reference), ("augment", augment)) if v is not None}
    )
    for name, value in named.items():
        if not isinstance(value, KnowledgeSet):  # a KnowledgeSet is never empty
            raise UsageError(f"{name} must be a non-empty KnowledgeSet, got {type(value).__name__}")
    forgotten = Seen.of(forget, augment)
    for name in ("retain", "validation", "reference"):
        if name in named:
            shared = forgotten.clash(named[name])
            if shared is not None:
                raise UsageError(f"forget and {name} overlap ({shared} is in both); they must be disjoint")
    budget_keys = {k: options.pop(k) for k in _BUDGET_KEYS if k in options}
    if budget is not None and budget_keys:
        raise UsageError(f"give the budget either as budget= or as {', '.join(budget_keys)}=, not both")
    if budget is not None and not isinstance(budget, Budget):
        raise UsageError(f"budget must be a loka.methods.Budget, got {type(budget).__name__}")
    budget = budget or Budget(**budget_keys)
    config = method_config(method, config, **options)
    start = time.perf_counter()
    if isinstance(config, RetrainConfig):
        edited = load_model(config.oracle)
        return UnlearningResult(edited, method, config.to_dict(), time.perf_counter() - start)

    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise UsageError("this model has no tokenizer attached; pass tokenizer=...")
    if not isinstance(config, LokaConfig) and any(p.is_meta for p in hf_model(model).parameters()):
        raise UsageError(
            f"method {method!r} trains every weight, but this model's device_map offloads some (on 'meta' "
            "between calls); use method='loka', which trains only the located components' weights, or load "
            "the model where every weight is held (device=, or a device_map without 'disk')"
        )
    if validation is None:
        train_retain, validation = retain.split(0.2, seed=seed, by="subject" if retain.subjects else "fact")
    else:
        train_retain = retain
        shared = Seen.of(retain).clash(validation)
        if shared is not None:
            raise UsageError(f"retain and validation overlap ({shared} is in both); they must be disjoint")
    common = dict(tokenizer=tokenizer, seed=seed, progress=progress, budget=budget)
    given = forget if augment is None else forget + augment
    vocab = int(hf_model(model).get_input_embeddings().num_embeddings)
    mask = None
    with TokenMeter(vocab) as meter:
        if isinstance(config, GradientAscentConfig):
            edited, used, log = run_gradient_ascent(model, given, train_retain, config=config, **common)
        elif isinstance(config, NPOConfig):
            edited, used, log = run_npo(
                model, given, train_retain, config=config, validation_retain=validation, **common
            )
        elif isinstance(config, RMUConfig):
            edited, used, log = rmu(model, given, train_retain, config=config, validation_retain=validation, **common)
        elif isinstance(config, TaskVectorConfig):
            edited, used, log = run_task_vector(
                model, given, train_retain, config=config, validation_retain=validation, **common
            )
        else:
            assert isinstance(config, LokaConfig)
            edited, used, log, mask = run_loka(
                model, given, train_retain, config=config, validation_retain=validation, reference=reference, **common
            )
    seconds = time.perf_counter() - start
    forward, backward = meter.forward, meter.backward
    if active():  # every rank's tokens (data parallel: each ran its share)
        forward, backward = (int(v) for v in all_reduce_sum(torch.tensor([forward, backward], dtype=torch.float64)))
    compute = Compute(last_step(log), forward, backward, round(seconds, 3))
    recorded = {**config.to_dict(), **used, "budget": asdict(budget), "seed": seed}
    return UnlearningResult(
        same_kind_as(edited, model), method, recorded, seconds, tuple(log), mask=mask, compute=compute,
        seen=Seen.of(forget, augment, train_retain, validation, reference),
    )  # fmt: skip


CONFIGS: dict[str, type[MethodConfig]] = {
    "loka": LokaConfig,
    "gradient_ascent": GradientAscentConfig,
    "npo": NPOConfig,
    "rmu": RMUConfig,
    "task_vector": TaskVectorConfig,
    "retrain": RetrainConfig,
}
"""Each method's config class, by method name (the methods of :data:`loka.methods.METHODS`)."""


def method_config(method: str, config: MethodConfig | None = None, **options: Any) -> MethodConfig:
    """The config of ``method``: ``config`` as given, or one built from ``options`` (not both)."""
    if method not in CONFIGS:
        raise UsageError(f"unknown unlearning method {method!r}; choose one of {', '.join(CONFIGS)}")
    cls = CONFIGS[method]
    if config is None:
        return cls.from_options(options)
    if options:
        raise UsageError(f"give {method!r} its options either as config= or as keywords, not both ({sorted(options)})")
    if type(config) is not cls:
        raise UsageError(f"method {method!r} takes a {cls.__name__}, got {type(config).__name__}")
    return config
