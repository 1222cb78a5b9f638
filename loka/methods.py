"""Unlearning methods behind one interface: ``unlearn(model, forget, retain, method=...)``.

Every method returns an edited **copy** (the input model is untouched) in an
:class:`UnlearningResult`, with its configuration, a per-check log and its compute, so that the
shared evaluation (:func:`loka.evaluate`) can compare them on equal terms.

**One budget for all** (:class:`Budget`): every method checks forget accuracy on the forget prompts
it was given every ``check_every`` optimizer steps and stops at the first check where it is at most
``target_forget_accuracy``, or after ``max_steps`` steps. Hyper-parameters that a method chooses
itself (task vector's scale, LOKA's rewrite strength) are chosen on ``validation`` (retain people
the method does not train on), never on what the evaluation scores. Every result reports its
:class:`Compute`: optimizer steps, tokens through forward passes, tokens through forward passes
that built a graph (i.e. were back-propagated), and wall seconds.

- ``"gradient_ascent"``: each step pairs a forget batch and a retain batch and minimises
  ``alpha * (-loss_forget) + (1 - alpha) * loss_retain`` with AdamW over all weights (ascent on
  what to forget, descent on what to keep; the literature also calls this "gradient difference").
- ``"task_vector"``: fine-tune a copy on the forget facts (``finetune_steps`` steps, default 60
  or the budget's ``max_steps`` if smaller), take the task vector ``tau = theta_finetuned - theta`` and return
  ``theta - scale * tau`` (Ilharco et al. 2023) for the smallest scale on the grid that reaches the
  forget target (one check per scale); if none does, the scale with the best validation-retain
  minus forget margin.
- ``"loka"``: localized knowledge ablation. *Locate*: attribution patching (gradient x
  activation on a subject-noised run, denoising direction, at the answer position) scores every
  MLP neuron for the forget facts; the layers that hold at least ``min_layer_share`` of the
  positive attribution are edited. *Edit* (``edit="finetune"``, the default): only those layers'
  MLP weights are trained, so that every forget prompt and paraphrase outputs what the model says
  about people it does not know (the mean answer distribution over ``reference`` facts, people
  the model never saw, of the same relation and template; :func:`ablation.rewrite.unknown_distributions`)
  while the retain prompts' answer distributions stay put (KL to the original, weight
  ``retain_weight``). ``edit="rewrite"`` instead applies the
  closed-form, retain-covariance-constrained rewrite of the MLP output projections
  (:func:`ablation.rewrite`) and searches layer sets and ``lam`` from the smallest intervention up,
  returning the first candidate that reaches the forget target with validation-retain
  accuracy above ``retain_floor`` (else the best retain-minus-forget margin). On the default
  testbed the closed form is not selective when 5% of the people are forgotten (their answer-position
  keys are not linearly separable from the retain people's), the constrained fine-tune is.
- ``"retrain"``: the exact-retrain oracle (pass ``oracle=`` a model directory, e.g. the testbed's
  ``oracle_dir``), so that the gold standard sits in every comparison table.

Gradient ascent's and task vector's losses are next-token losses over the fact's whole text
(BOS + prompt + target), as in the common baselines (Maini et al. 2024, TOFU).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

import attribution
from ablation import key_covariance, rewrite
from ablation.rewrite import unknown_distributions
from loka.data import KnowledgeSet
from loka.metrics import lm_loss, score_facts
from loka.models import architecture, hf_model, hf_state_dict, load_model, plain_copy, same_kind_as
from loka.protocol import Seen

__all__ = ["METHODS", "Budget", "Compute", "UnlearningResult", "unlearn"]

logger = logging.getLogger(__name__)
Method = Literal["loka", "gradient_ascent", "task_vector", "retrain"]


def _check(name: str, value: Any, *, low: float = 0.0, high: float | None = None, integer: bool = False) -> None:
    ok = isinstance(value, int if integer else int | float) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'} {bound}, got {value!r}")


@dataclass(frozen=True)
class Budget:
    """The stopping rule every method follows: check forget accuracy (first target token, on the
    forget prompts the method was given) every ``check_every`` optimizer steps; stop at the first
    check where it is at most ``target_forget_accuracy``, or after ``max_steps`` steps."""

    target_forget_accuracy: float = 0.1
    check_every: int = 25
    max_steps: int = 500

    def __post_init__(self) -> None:
        _check("target_forget_accuracy", self.target_forget_accuracy, high=1.0)
        _check("check_every", self.check_every, low=1, integer=True)
        _check("max_steps", self.max_steps, low=1, integer=True)

    def due(self, step: int) -> bool:
        """Whether ``step`` (1-based) is a check: every ``check_every`` steps and the last one."""
        return step % self.check_every == 0 or step == self.max_steps

    def reached(self, forget_accuracy: float) -> bool:
        return forget_accuracy <= self.target_forget_accuracy


@dataclass(frozen=True)
class Compute:
    """What a method spent: optimizer steps, tokens through forward passes (padding included,
    checks included), the share of them that built a graph for a backward pass, and wall seconds."""

    steps: int
    forward_tokens: int
    backward_tokens: int
    seconds: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class _TokenMeter:
    """Counts the tokens that go through every token-embedding lookup of ``vocab_size`` rows while
    it is open (every model copy a method makes included): a global module forward hook, so the
    count is the same for every method and needs nothing from them."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size, self.forward, self.backward = vocab_size, 0, 0

    def _hook(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings == self.vocab_size and inputs:
            n = int(inputs[0].numel())
            self.forward += n
            if torch.is_grad_enabled():
                self.backward += n

    def __enter__(self) -> _TokenMeter:
        self._handle = torch.nn.modules.module.register_module_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()


@dataclass(frozen=True)
class UnlearningResult:
    """What a method produced: the edited copy, how, what it saw, and what it spent."""

    model: Any
    method: str
    config: Mapping[str, Any]
    seconds: float
    log: tuple[Mapping[str, float], ...] = ()
    mask: Any = None
    components: tuple[Any, ...] = field(default=())
    compute: Compute | None = None
    seen: Seen = field(default_factory=Seen)  # every person, fact id and prompt the method was given


def _batches(knowledge: KnowledgeSet, tokenizer: Any, batch_size: int, generator: torch.Generator) -> Iterator[Any]:
    """Batches of ``knowledge`` in a fresh random order each pass, forever."""
    while True:
        order = torch.randperm(len(knowledge), generator=generator).tolist()
        shuffled = KnowledgeSet(tuple(knowledge[i] for i in order), name=knowledge.name)
        yield from shuffled.batches(tokenizer, batch_size)


def _accuracy(model: Any, forget: KnowledgeSet, tokenizer: Any) -> float:
    was_training = model.training
    model.eval()
    accuracy = score_facts(model, forget, tokenizer=tokenizer).first_token_accuracy
    model.train(was_training)
    return accuracy


def _gradient_ascent(
    model: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    tokenizer: Any,
    seed: int,
    progress: bool,
    budget: Budget,
    lr: float = 5e-4,
    alpha: float = 0.5,
    batch_size: int = 16,
) -> tuple[Any, dict[str, Any], list[dict[str, float]]]:
    _check("lr", lr)
    _check("alpha", alpha, high=1.0)
    _check("batch_size", batch_size, low=1, integer=True)
    config = dict(lr=lr, alpha=alpha, batch_size=batch_size)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    student = plain_copy(model).train()
    device = next(student.parameters()).device
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    forget_batches = _batches(forget, tokenizer, batch_size, generator)
    retain_batches = _batches(retain, tokenizer, batch_size, generator)
    log: list[dict[str, float]] = []
    for step in tqdm(range(1, budget.max_steps + 1), disable=not progress, desc="gradient ascent", leave=False):
        forget_loss = lm_loss(student, next(forget_batches).to(device))
        retain_loss = lm_loss(student, next(retain_batches).to(device))
        loss = alpha * -forget_loss + (1 - alpha) * retain_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if budget.due(step):
            accuracy = _accuracy(student, forget, tokenizer)
            log.append({"step": step, "forget_loss": forget_loss.item(), "retain_loss": retain_loss.item(),
                        "forget_accuracy": accuracy})  # fmt: skip
            if budget.reached(accuracy):
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
    budget: Budget,
    validation_retain: KnowledgeSet,
    finetune_steps: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 16,
    scales: tuple[float, ...] = (0.5, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0),
) -> tuple[Any, dict[str, Any], list[dict[str, float]]]:
    finetune_steps = min(60, budget.max_steps) if finetune_steps is None else finetune_steps
    _check("finetune_steps", finetune_steps, low=1, high=budget.max_steps, integer=True)
    _check("lr", lr)
    _check("batch_size", batch_size, low=1, integer=True)
    if not scales or any(not isinstance(v, int | float) or v <= 0 for v in scales):
        raise ValueError(f"scales must be positive numbers, got {scales!r}")
    config = dict(finetune_steps=finetune_steps, lr=lr, batch_size=batch_size, scales=list(scales))
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    tuned = plain_copy(model).train()
    device = next(tuned.parameters()).device
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=lr)
    batches = _batches(forget, tokenizer, batch_size, generator)
    log: list[dict[str, float]] = []
    for step in tqdm(range(1, finetune_steps + 1), disable=not progress, desc="task vector: fine-tune", leave=False):
        loss = lm_loss(tuned, next(batches).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if budget.due(step):
            log.append({"step": step, "forget_loss": loss.item()})
    base = {k: v.detach().clone() for k, v in hf_state_dict(model).items()}
    tuned_state = tuned.state_dict()
    vector = {k: tuned_state[k] - v for k, v in base.items()}
    chosen, best, margin = None, None, None
    for scale in sorted(scales):  # one check per scale, smallest intervention first
        candidate = plain_copy(model, state={k: base[k] - scale * vector[k] for k in base})
        forget_accuracy = _accuracy(candidate, forget, tokenizer)
        retain_accuracy = score_facts(candidate, validation_retain, tokenizer=tokenizer).first_token_accuracy
        log.append({"step": finetune_steps, "scale": scale, "forget_accuracy": forget_accuracy,
                    "retain_accuracy": retain_accuracy})  # fmt: skip
        if budget.reached(forget_accuracy):
            chosen, best = scale, candidate
            break
        if margin is None or retain_accuracy - forget_accuracy > margin:
            chosen, best, margin = scale, candidate, retain_accuracy - forget_accuracy
    config["chosen"] = {"scale": chosen}
    return best, config, log


def _answer_log_probs(model: Any, batch: Any) -> torch.Tensor:
    """log-softmax of the logits at each row's answer position (the last prompt token)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return out[torch.arange(len(batch), device=out.device), batch.answer_positions].float().log_softmax(-1)


def _localized_finetune(
    model: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    layers: Sequence[int],
    reference: KnowledgeSet,
    tokenizer: Any,
    validation_retain: KnowledgeSet,
    seed: int,
    progress: bool,
    budget: Budget,
    lr: float,
    retain_weight: float,
    batch_size: int,
) -> tuple[Any, list[dict[str, float]]]:
    """Fine-tune only the MLP weights of ``layers`` so that every forget prompt (and paraphrase)
    outputs what the model says about unknown people, while the retain prompts' answer
    distributions stay where they were: minimise ``KL(unknown || p_forget) + retain_weight *
    KL(p_original || p_retain)`` at the answer positions, with Adam, under ``budget``."""
    device = next(hf_model(model).parameters()).device
    prompts, unknown = unknown_distributions(model, forget, reference)
    forget_batch = prompts.encode(tokenizer).to(device)
    unknown = unknown.to(device)
    retain_prompts = retain + retain.paraphrased() if any(f.paraphrases for f in retain) else retain
    retain_batch = retain_prompts.encode(tokenizer).to(device)
    with torch.no_grad():  # the model itself is not trained (the student below is a copy)
        original = hf_model(model)
        kept = torch.cat([_answer_log_probs(original, b.to(device)) for b in retain_prompts.batches(tokenizer, 256)])
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    student = plain_copy(model).train()
    spec = architecture(model)
    names = {spec.name(w, layer) for layer in layers for w in (spec.mlp_out_weight, *spec.mlp_in_weights)}
    params = dict(student.named_parameters())
    for name, param in params.items():
        param.requires_grad_(name in names)
    optimizer = torch.optim.Adam([params[name] for name in sorted(names)], lr=lr)
    log: list[dict[str, float]] = []
    kl = torch.nn.functional.kl_div
    for step in tqdm(
        range(1, budget.max_steps + 1), disable=not progress, desc="loka: localized fine-tune", leave=False
    ):
        forget_loss = kl(_answer_log_probs(student, forget_batch), unknown, reduction="batchmean")
        rows = torch.randperm(len(retain_batch), generator=generator)[:batch_size].to(device)
        retain_log_probs = _answer_log_probs(student, _rows(retain_batch, rows))
        retain_loss = kl(retain_log_probs, kept[rows], reduction="batchmean", log_target=True)
        optimizer.zero_grad(set_to_none=True)
        (forget_loss + retain_weight * retain_loss).backward()
        optimizer.step()
        if budget.due(step):
            forget_accuracy = _accuracy(student, forget, tokenizer)
            retain_accuracy = _accuracy(student, validation_retain, tokenizer)
            log.append({
                "step": step, "forget_loss": forget_loss.item(), "retain_loss": retain_loss.item(),
                "forget_accuracy": forget_accuracy, "retain_accuracy": retain_accuracy,
            })  # fmt: skip
            if budget.reached(forget_accuracy):
                break
    for param in student.parameters():
        param.requires_grad_(False)
    return student.eval(), log


def _rows(batch: Any, rows: torch.Tensor) -> Any:
    """The rows ``rows`` of a FactBatch (only the fields a forward pass and answer positions need)."""
    return replace(
        batch,
        input_ids=batch.input_ids[rows],
        attention_mask=batch.attention_mask[rows],
        target_ids=batch.target_ids[rows],
        target_mask=batch.target_mask[rows],
        prediction_positions=batch.prediction_positions[rows],
        subject_mask=batch.subject_mask[rows],
        fact_ids=tuple(batch.fact_ids[i] for i in rows.tolist()),
    )


def _loka(
    model: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    tokenizer: Any,
    seed: int,
    progress: bool,
    budget: Budget,
    validation_retain: KnowledgeSet,
    reference: KnowledgeSet | None = None,
    edit: Literal["finetune", "rewrite"] = "finetune",
    retain_floor: float = 0.9,
    min_layer_share: float = 0.05,
    lr: float = 1e-3,
    retain_weight: float = 3.0,
    batch_size: int = 256,
    max_layers: int = 2,
    lams: tuple[float, ...] = (10.0, 3.0, 1.0, 0.3, 0.1),
) -> tuple[Any, dict[str, Any], list[dict[str, float]]]:
    if edit not in ("finetune", "rewrite"):
        raise ValueError(f"edit must be 'finetune' or 'rewrite', got {edit!r}")
    _check("retain_floor", retain_floor, high=1.0)
    _check("min_layer_share", min_layer_share, high=1.0)
    _check("lr", lr)
    _check("retain_weight", retain_weight)
    _check("batch_size", batch_size, low=1, integer=True)
    _check("max_layers", max_layers, low=1, integer=True)
    if not lams or any(not isinstance(v, int | float) or v < 0 for v in lams):
        raise ValueError(f"lams must be non-negative numbers, got {lams!r}")
    scores = attribution.attribute(
        model, forget, method="grad_x_act", components=("neurons",), baseline="corrupt",
        direction="denoise", positions="last", seed=seed, progress=progress,
    )  # fmt: skip
    per_layer = scores.neurons.clamp(min=0).sum(-1)
    if reference is None:
        reference = retain  # "unknown" = the mean answer over people: a fallback when there is no reference
    config: dict[str, Any] = dict(
        edit=edit, retain_floor=retain_floor, reference=reference.name if reference is not None else None,
        layer_attribution=[round(v, 6) for v in per_layer.tolist()],
    )  # fmt: skip
    ranked = per_layer.argsort(descending=True).tolist()
    if edit == "finetune":
        share = per_layer / per_layer.sum().clamp(min=1e-12)
        layers = sorted(layer for layer in ranked if share[layer] >= min_layer_share) or ranked[:1]
        config.update(min_layer_share=min_layer_share, lr=lr, retain_weight=retain_weight, batch_size=batch_size)
        edited, log = _localized_finetune(
            model, forget, retain, layers=layers, reference=reference, tokenizer=tokenizer,
            validation_retain=validation_retain, seed=seed, progress=progress, budget=budget, lr=lr,
            retain_weight=retain_weight, batch_size=batch_size,
        )  # fmt: skip
        last = log[-1]
        if not budget.reached(last["forget_accuracy"]) or last["retain_accuracy"] < retain_floor:
            logger.warning(
                "loka: stopped at forget %.3f, validation retain %.3f (target forget <= %.2f, retain >= %.2f)",
                last["forget_accuracy"], last["retain_accuracy"], budget.target_forget_accuracy, retain_floor,
            )  # fmt: skip
        chosen = {"layers": layers, "steps": int(last["step"])}
        return same_kind_as(edited, model), {**config, "chosen": chosen}, log
    config.update(max_layers=max_layers, lams=list(lams))
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
        for lam in sorted(lams, reverse=True):  # one check per candidate
            result = rewrite(
                model, forget, retain=retain, layers=layers, lam=lam, covariance=covariance, reference=reference
            )
            forget_accuracy = _accuracy(result.model, forget, tokenizer)
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
            if budget.reached(forget_accuracy) and retain_accuracy >= retain_floor:
                return result.model, {**config, "chosen": chosen}, log
            margin = retain_accuracy - forget_accuracy
            if best is None or margin > best[0]:
                best = (margin, result.model, chosen)
    assert best is not None
    logger.warning(
        "loka: no candidate reached forget <= %.2f with retain >= %.2f", budget.target_forget_accuracy, retain_floor
    )
    return best[1], {**config, "chosen": best[2]}, log


METHODS: tuple[Method, ...] = ("loka", "gradient_ascent", "task_vector", "retrain")
_RUNNERS: dict[str, Callable[..., tuple[Any, dict[str, Any], list[dict[str, float]]]]] = {
    "gradient_ascent": _gradient_ascent,
    "task_vector": _task_vector,
    "loka": _loka,
}
_BUDGET_KEYS = ("target_forget_accuracy", "check_every", "max_steps")


def _steps(log: Sequence[Mapping[str, float]]) -> int:
    return int(max((entry.get("step", 0) for entry in log), default=0))


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
    **config: Any,
) -> UnlearningResult:
    """Remove ``forget`` from ``model`` while keeping ``retain``; returns an edited copy.

    ``validation`` are retain facts of other people that choose a method's hyper-parameters and
    are never trained on (default: a fifth of the ``retain`` people, held back from training).
    ``reference`` are facts about people the model never saw ("what unknown looks like"; LOKA's
    target). ``augment`` are extra wordings of the forget facts that a method may train on; the
    forget facts' own ``paraphrases`` are used too, so leave evaluation wordings out of what you
    pass (:class:`loka.protocol.Protocol` does). ``budget`` is the stopping rule shared by every
    method (:class:`Budget`; its fields may also be given as keywords). ``config`` holds the
    method's own options (see the module docstring); an unknown option is an error.
    """
    if method not in METHODS:
        raise ValueError(f"unknown unlearning method {method!r}; choose one of {', '.join(METHODS)}")
    named = {"forget": forget, "retain": retain}
    named.update(
        {k: v for k, v in (("validation", validation), ("reference", reference), ("augment", augment)) if v is not None}
    )
    for name, value in named.items():
        if not isinstance(value, KnowledgeSet):  # a KnowledgeSet is never empty
            raise ValueError(f"{name} must be a non-empty KnowledgeSet, got {type(value).__name__}")
    forgotten = Seen.of(forget, augment)
    for name in ("retain", "validation", "reference"):
        if name in named:
            shared = forgotten.clash(named[name])
            if shared is not None:
                raise ValueError(f"forget and {name} overlap ({shared} is in both); they must be disjoint")
    budget_keys = {k: config.pop(k) for k in _BUDGET_KEYS if k in config}
    if budget is not None and budget_keys:
        raise ValueError(f"give the budget either as budget= or as {', '.join(budget_keys)}=, not both")
    if budget is not None and not isinstance(budget, Budget):
        raise ValueError(f"budget must be a loka.methods.Budget, got {type(budget).__name__}")
    budget = budget or Budget(**budget_keys)
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
        train_retain, validation = retain.split(0.2, seed=seed, by="subject" if retain.subjects else "fact")
    else:
        train_retain = retain
        shared = Seen.of(retain).clash(validation)
        if shared is not None:
            raise ValueError(f"retain and validation overlap ({shared} is in both); they must be disjoint")
    runner = _RUNNERS[method]
    options = dict(tokenizer=tokenizer, seed=seed, progress=progress, budget=budget, **config)
    if method in ("task_vector", "loka"):
        options["validation_retain"] = validation
    if method == "loka" and reference is not None:
        options["reference"] = reference
    given = forget if augment is None else forget + augment
    vocab = int(hf_model(model).get_input_embeddings().num_embeddings)
    try:
        with _TokenMeter(vocab) as meter:
            edited, used, log = runner(model, given, train_retain, **options)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise ValueError(f"unknown option for {method!r}: {err}") from None
        raise
    seconds = time.perf_counter() - start
    compute = Compute(_steps(log), meter.forward, meter.backward, round(seconds, 3))
    used = {**used, "budget": asdict(budget), "seed": seed}
    return UnlearningResult(
        same_kind_as(edited, model), method, used, seconds, tuple(log), compute=compute,
        seen=Seen.of(forget, augment, train_retain, validation, reference),
    )  # fmt: skip
