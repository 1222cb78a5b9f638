"""Unlearning methods behind one interface: ``unlearn(model, forget, retain, method=...)``.

Every method returns an edited **copy** (the input model is untouched) in an
:class:`UnlearningResult`, with its configuration, wall time and a per-step log, so that the shared
evaluation (:func:`loka.evaluate`) can compare them on equal terms.

- ``"gradient_ascent"``: the user's baseline. Each step pairs a forget batch and a retain batch
  and minimises ``alpha * (-loss_forget) + (1 - alpha) * loss_retain`` with AdamW over all
  weights (ascent on what to forget, descent on what to keep; the literature also calls this
  "gradient difference"). It stops early once forget accuracy reaches ``target_forget_accuracy``.
- ``"task_vector"``: fine-tune a copy on the forget facts, take the task vector
  ``tau = theta_finetuned - theta`` and return ``theta - scale * tau`` (Ilharco et al. 2023). The
  scale is chosen on validation: the largest on the grid that keeps validation-retain accuracy
  above ``retain_floor``.
- ``"loka"``: localized knowledge ablation. *Locate*: attribution patching (gradient x
  activation on a subject-noised run, denoising direction, at the answer position) scores every
  MLP neuron for the forget facts; the layers whose neurons restore the most are the candidates.
  *Edit*: a closed-form, retain-covariance-constrained rewrite of those layers' MLP output
  projections (:func:`ablation.rewrite`) maps the forget facts' keys to what the model outputs for
  people it does not know. *Budget*: candidates are tried from the smallest intervention up (one
  layer before two; the strongest retain constraint ``lam`` first), and the first that brings
  forget accuracy to ``target_forget_accuracy`` while validation-retain accuracy stays above
  ``retain_floor`` is returned; if none does, the one with the best retain-minus-forget margin.
- ``"retrain"``: the exact-retrain oracle (pass ``oracle=`` a model directory, e.g. the testbed's
  ``oracle_dir``), so that the gold standard sits in every comparison table.

Losses are next-token losses over the fact's whole text (BOS + prompt + target), as in the
user's reference code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

import attribution
from ablation import key_covariance, rewrite
from loka.data import KnowledgeSet
from loka.metrics import score_facts
from loka.models import hf_state_dict, load_model, plain_copy, same_kind_as

__all__ = ["METHODS", "UnlearningResult", "unlearn"]

logger = logging.getLogger(__name__)
Method = Literal["loka", "gradient_ascent", "task_vector", "retrain"]


@dataclass(frozen=True)
class UnlearningResult:
    """What a method produced: the edited copy, how, and how long it took."""

    model: Any
    method: str
    config: Mapping[str, Any]
    seconds: float
    log: tuple[Mapping[str, float], ...] = ()
    mask: Any = None
    components: tuple[Any, ...] = field(default=())


def _lm_loss(model: Any, batch: Any) -> torch.Tensor:
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss


def _batches(knowledge: KnowledgeSet, tokenizer: Any, batch_size: int, generator: torch.Generator) -> list[Any]:
    order = torch.randperm(len(knowledge), generator=generator).tolist()
    shuffled = KnowledgeSet(tuple(knowledge[i] for i in order), name=knowledge.name)
    return list(shuffled.batches(tokenizer, batch_size))


def _check(name: str, value: Any, *, low: float = 0.0, high: float | None = None, integer: bool = False) -> None:
    ok = isinstance(value, int if integer else int | float) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'} {bound}, got {value!r}")


def _gradient_ascent(
    model: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    tokenizer: Any,
    seed: int,
    progress: bool,
    epochs: int = 10,
    lr: float = 5e-4,
    alpha: float = 0.5,
    batch_size: int = 16,
    target_forget_accuracy: float = 0.05,
) -> tuple[Any, dict[str, Any], list[dict[str, float]]]:
    _check("epochs", epochs, low=1, integer=True)
    _check("lr", lr)
    _check("alpha", alpha, high=1.0)
    _check("batch_size", batch_size, low=1, integer=True)
    config = dict(
        epochs=epochs, lr=lr, alpha=alpha, batch_size=batch_size, target_forget_accuracy=target_forget_accuracy
    )
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    student = plain_copy(model).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    log: list[dict[str, float]] = []
    for epoch in tqdm(range(epochs), disable=not progress, desc="gradient ascent", leave=False):
        # as in the reference algorithm, an epoch is as many steps as the shorter of the two sets
        pairs = zip(
            _batches(forget, tokenizer, batch_size, generator),
            _batches(retain, tokenizer, batch_size, generator),
            strict=False,
        )
        for forget_batch, retain_batch in pairs:
            forget_loss, retain_loss = _lm_loss(student, forget_batch), _lm_loss(student, retain_batch)
            loss = alpha * -forget_loss + (1 - alpha) * retain_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            log.append({"epoch": epoch, "forget_loss": forget_loss.item(), "retain_loss": retain_loss.item()})
        student.eval()
        accuracy = score_facts(student, forget, tokenizer=tokenizer).first_token_accuracy
        student.train()
        log[-1]["forget_accuracy"] = accuracy
        if accuracy <= target_forget_accuracy:
            break
    return student.eval(), config, log


def _task_vector(
    model: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    tokenizer: Any,
    seed: int,
    progress: bool,
    validation_retain: KnowledgeSet,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 16,
    scales: tuple[float, ...] = (0.5, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0),
    retain_floor: float = 0.9,
) -> tuple[Any, dict[str, Any], list[dict[str, float]]]:
    _check("epochs", epochs, low=1, integer=True)
    _check("lr", lr)
    _check("retain_floor", retain_floor, high=1.0)
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive numbers, got {scales!r}")
    config = dict(epochs=epochs, lr=lr, batch_size=batch_size, scales=list(scales), retain_floor=retain_floor)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    tuned = plain_copy(model).train()
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=lr)
    log: list[dict[str, float]] = []
    for epoch in tqdm(range(epochs), disable=not progress, desc="task vector: fine-tune", leave=False):
        for batch in _batches(forget, tokenizer, batch_size, generator):
            loss = _lm_loss(tuned, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            log.append({"epoch": epoch, "forget_loss": loss.item()})
    base = {k: v.detach().clone() for k, v in hf_state_dict(model).items()}
    tuned_state = tuned.state_dict()
    vector = {k: tuned_state[k] - v for k, v in base.items()}
    chosen, best = None, None
    for scale in sorted(scales):
        candidate = plain_copy(model, state={k: base[k] - scale * vector[k] for k in base})
        retain_accuracy = score_facts(candidate, validation_retain, tokenizer=tokenizer).first_token_accuracy
        forget_accuracy = score_facts(candidate, forget, tokenizer=tokenizer).first_token_accuracy
        log.append({"scale": scale, "retain_accuracy": retain_accuracy, "forget_accuracy": forget_accuracy})
        if retain_accuracy < retain_floor:
            break
        chosen, best = scale, candidate
    if best is None:  # even the smallest scale breaks retain: return the smallest, and say so
        chosen = min(scales)
        best = plain_copy(model, state={k: base[k] - chosen * vector[k] for k in base})
        logger.warning("task_vector: every scale drops validation retain accuracy below %.2f", retain_floor)
    config["chosen_scale"] = chosen
    return best, config, log


def _loka(
    model: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    tokenizer: Any,
    seed: int,
    progress: bool,
    validation_retain: KnowledgeSet,
    reference: KnowledgeSet | None = None,
    target_forget_accuracy: float = 0.1,
    retain_floor: float = 0.9,
    max_layers: int = 2,
    lams: tuple[float, ...] = (10.0, 3.0, 1.0, 0.3, 0.1),
) -> tuple[Any, dict[str, Any], list[dict[str, float]]]:
    _check("target_forget_accuracy", target_forget_accuracy, high=1.0)
    _check("retain_floor", retain_floor, high=1.0)
    _check("max_layers", max_layers, low=1, integer=True)
    if not lams or any(not isinstance(v, int | float) or v < 0 for v in lams):
        raise ValueError(f"lams must be non-negative numbers, got {lams!r}")
    scores = attribution.attribute(
        model, forget, method="grad_x_act", components=("neurons",), baseline="corrupt",
        direction="denoise", positions="last", seed=seed, progress=progress,
    )  # fmt: skip
    per_layer = scores.neurons.clamp(min=0).sum(-1)
    config: dict[str, Any] = dict(
        target_forget_accuracy=target_forget_accuracy, retain_floor=retain_floor, max_layers=max_layers,
        lams=list(lams), layer_attribution=[round(v, 6) for v in per_layer.tolist()],
    )  # fmt: skip
    ranked = per_layer.argsort(descending=True).tolist()
    # Layer sets from attribution (the n layers that restore the most) and MEMIT's choice (the last
    # n layers, which write the answer at the answer position); smaller sets first.
    sizes = range(1, min(max_layers, len(ranked)) + 1)
    candidates = list(dict.fromkeys(
        tuple(layers) for n in sizes for layers in (sorted(ranked[:n]), list(range(len(ranked) - n, len(ranked))))
    ))  # fmt: skip
    covariance = key_covariance(model, retain, layers=sorted({layer for c in candidates for layer in c}))
    log: list[dict[str, float]] = []
    best: tuple[float, Any, dict[str, Any]] | None = None
    for layers in candidates:
        for lam in sorted(lams, reverse=True):
            result = rewrite(
                model, forget, retain=retain, layers=layers, lam=lam, covariance=covariance, reference=reference
            )
            forget_accuracy = score_facts(result.model, forget, tokenizer=tokenizer).first_token_accuracy
            retain_accuracy = score_facts(result.model, validation_retain, tokenizer=tokenizer).first_token_accuracy
            log.append(
                {"layers": layers, "lam": lam, "forget_accuracy": forget_accuracy, "retain_accuracy": retain_accuracy}
            )
            chosen = {
                "layers": list(layers),
                "lam": lam,
                "update_norms": list(result.norms),
                "ranks": list(result.ranks),
            }
            if forget_accuracy <= target_forget_accuracy and retain_accuracy >= retain_floor:
                return result.model, {**config, "chosen": chosen}, log
            margin = retain_accuracy - forget_accuracy
            if best is None or margin > best[0]:
                best = (margin, result.model, chosen)
    assert best is not None
    logger.warning(
        "loka: no candidate reached forget <= %.2f with retain >= %.2f", target_forget_accuracy, retain_floor
    )
    return best[1], {**config, "chosen": best[2]}, log


METHODS: tuple[Method, ...] = ("loka", "gradient_ascent", "task_vector", "retrain")
_RUNNERS: dict[str, Callable[..., tuple[Any, dict[str, Any], list[dict[str, float]]]]] = {
    "gradient_ascent": _gradient_ascent,
    "task_vector": _task_vector,
    "loka": _loka,
}


def unlearn(
    model: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    method: Method,
    validation: tuple[KnowledgeSet, KnowledgeSet] | None = None,
    seed: int = 0,
    progress: bool = True,
    tokenizer: Any = None,
    **config: Any,
) -> UnlearningResult:
    """Remove ``forget`` from ``model`` while keeping ``retain``; returns an edited copy.

    ``validation`` is ``(forget_val, retain_val)``, the facts that choose a method's budget
    (default: ``forget`` itself and a fifth of the retain subjects, which the method then does
    not train on). ``config`` holds the method's own options (see the module docstring); an
    unknown option is an error.
    """
    if method not in METHODS:
        raise ValueError(f"unknown unlearning method {method!r}; choose one of {', '.join(METHODS)}")
    overlap = set(forget.ids) & set(retain.ids) or set(forget.subjects) & set(retain.subjects)
    if overlap:
        raise ValueError(f"forget and retain overlap ({sorted(overlap)[0]!r} is in both); they must be disjoint")
    start = time.perf_counter()
    if method == "retrain":
        oracle = config.pop("oracle", None)
        if config:
            raise ValueError(f"unknown option(s) for 'retrain': {sorted(config)}; it takes only oracle=")
        if not isinstance(oracle, str | Path):
            raise ValueError("method 'retrain' needs oracle= the directory of the model trained without the forget set")
        edited = load_model(oracle)
        return UnlearningResult(edited, method, {"oracle": str(oracle)}, time.perf_counter() - start)

    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("this model has no tokenizer attached; pass tokenizer=...")
    if validation is None:
        train_retain, validation_retain = retain.split(0.2, seed=seed, by="subject" if retain.subjects else "fact")
    else:
        _, validation_retain = validation
        train_retain = retain
    runner = _RUNNERS[method]
    options = dict(tokenizer=tokenizer, seed=seed, progress=progress, **config)
    if method in ("task_vector", "loka"):
        options["validation_retain"] = validation_retain
    try:
        edited, used, log = runner(model, forget, train_retain, **options)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise ValueError(f"unknown option for {method!r}: {err}") from None
        raise
    return UnlearningResult(same_kind_as(edited, model), method, used, time.perf_counter() - start, tuple(log))
