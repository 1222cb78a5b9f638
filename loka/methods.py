"""Unlearning methods behind one interface: ``unlearn(model, forget, retain, method=...)``.

Every method returns an edited **copy** (the input model is untouched) in an
:class:`UnlearningResult`, with its configuration, a per-check log and its compute, so that the
shared evaluation (:func:`loka.evaluate`) can compare them on equal terms. Each method's options
are a frozen config checked when it is built (:mod:`loka.configs`: :class:`LokaConfig`,
:class:`GradientAscentConfig`, :class:`TaskVectorConfig`, :class:`RetrainConfig`); keywords to
:func:`unlearn` are sugar for it, and ``result.config`` records it.

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
- ``"loka"``: localized knowledge ablation. *Locate* (:mod:`loka.localization`): attribution
  patching (gradient x activation, noise on the subject tokens, or on the whole prompt of a fact
  that names no subject; denoising) scores every MLP neuron (``components="neurons"``, or
  ``"heads"`` / ``"all"``) on the forget facts and on the retain facts; the ``size`` components
  (a fraction of the pool, default 5%, a count, or ``"auto"``: the smallest size on ``sizes``
  that reaches the forget target with validation retain at least ``retain_floor`` x the
  original's) with the largest forget-minus-retain contrast are located (``localize``: where
  attribution reads them: ``"all"`` tokens, ``"output"`` = the last prompt token, ``"lookup"`` =
  the subject tokens, ``"exact"`` = activation patching of the best candidates). *Edit*
  (``edit="finetune"``, the default): only the parameters those components own are trained (a
  neuron's ``W_in`` column, ``b_in`` entry and ``W_out`` row; a head's ``W_Q``/``W_K``/``W_V``
  slices and ``W_O`` rows; :func:`ablation.edit`: every other parameter is bit-identical), on
  :mod:`loka.objectives`: with ``reference`` facts about people the model never saw, the forget
  prompts should give the model's answer distribution for unknown people (plus NPO on any further
  answer tokens); without, NPO on every answer token; and ``retain_weight`` x KL to the
  original on every answer token of the retain facts. ``edit="ablate"`` instead zeroes
  (``ablate_mode="zero"``: only their output weights change) or mean-ablates (``"mean"``, the
  default: the layer's shared output bias also takes their mean contribution) the located
  components, baked into the weights; no training. ``location`` runs the same edit
  elsewhere, the controls that test whether the location matters (``"random"``, ``"least"``,
  ``"complement"``, ``"layers"``, ``"full"``). ``edit="rewrite"`` is the closed-form,
  retain-covariance-constrained rewrite of whole MLP output projections
  (:func:`ablation.rewrite`), searched over layer sets and ``lam``. The result carries the mask,
  and its config the number and share of parameters changed.
  Erasure options (:mod:`loka.erasure`), on the located components only: ``erase="subject"``
  (names too: whole forget texts as likely as strangers'), ``reinit`` (shrink-perturb and
  repair by distillation: a localized UNDO) and ``adversary_weight`` (the forget loss also at
  adversarially fine-tuned weights, first order).
- ``"npo"``: Negative Preference Optimization (Zhang et al. 2024) over all weights, with NLL on
  the retain answers (open-unlearning's NPO; :class:`NPOConfig`).
- ``"rmu"``: Representation Misdirection for Unlearning (Li et al. 2024, WMDP; :mod:`loka.rmu`):
  steer one block's residual stream on forget text to a scaled random direction, hold it on
  retain text, train a few blocks' MLP output weights; layer and coefficient chosen on
  validation.
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
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

import attribution
from ablation import AblationMask, bake, edit, key_covariance, mean_activations, rewrite
from ablation.params import parameter_masks
from loka.checks import check_number
from loka.configs import (
    SIZES,
    GradientAscentConfig,
    LokaConfig,
    MethodConfig,
    NPOConfig,
    RetrainConfig,
    RMUConfig,
    TaskVectorConfig,
    method_config,
)
from loka.data import FactBatch, KnowledgeSet
from loka.distributed import active, all_reduce_gradients, all_reduce_sum, gather_rows, shard
from loka.erasure import AttackedModel, SubjectTerm, name_facts, shrink_perturb, text_nll
from loka.errors import UsageError
from loka.localization import Localization, control_mask, locate, owned_parameters
from loka.metrics import sharded_lm_loss, zero_loss
from loka.models import hf_model, hf_state_dict, input_device, load_model, plain_copy, same_kind_as
from loka.objectives import (
    answer_log_probs,
    npo_loss,
    retain_kl,
    sequence_log_probs,
    unknown_loss,
)
from loka.protocol import Seen
from loka.rmu import rmu
from loka.training import accuracy, logged, train
from loka.unknown import unknown_distributions

__all__ = [
    "METHODS",
    "SIZES",
    "Budget",
    "Compute",
    "GradientAscentConfig",
    "LokaConfig",
    "MethodConfig",
    "NPOConfig",
    "RMUConfig",
    "RetrainConfig",
    "TaskVectorConfig",
    "UnlearningResult",
    "unlearn",
]

logger = logging.getLogger(__name__)
Method = Literal["loka", "gradient_ascent", "npo", "rmu", "task_vector", "retrain"]


@dataclass(frozen=True)
class Budget:
    """The stopping rule every method follows: check forget accuracy (the share of answer tokens
    predicted, :attr:`loka.metrics.FactScores.answer_accuracy`: the first-token accuracy for
    one-token answers; on the forget prompts the method was given) every ``check_every`` optimizer
    steps; stop at the first check where it is at most ``target_forget_accuracy``, or after
    ``max_steps`` steps."""

    target_forget_accuracy: float = 0.1
    check_every: int = 25
    max_steps: int = 500

    def __post_init__(self) -> None:
        check_number("target_forget_accuracy", self.target_forget_accuracy, high=1.0)
        check_number("check_every", self.check_every, low=1, integer=True)
        check_number("max_steps", self.max_steps, low=1, integer=True)

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


def _mine(rows: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of a global batch's rows (all of them without a process group)."""
    part = shard(len(rows))
    return rows[part.start : part.stop]


def _npo_sum(log_prob: torch.Tensor, reference_log_prob: torch.Tensor, beta: float) -> torch.Tensor:
    """The sum over rows of NPO's per-row terms (:func:`loka.objectives.npo_loss` is their mean)."""
    return -(2.0 / beta) * torch.nn.functional.logsigmoid(-beta * (log_prob - reference_log_prob)).sum()


def _gradient_ascent(
    model: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    tokenizer: Any,
    seed: int,
    progress: bool,
    budget: Budget,
    config: GradientAscentConfig,
) -> tuple[Any, dict[str, Any], list[dict[str, float]]]:
    alpha, batch_size = config.alpha, config.batch_size
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    student = plain_copy(model).train()
    device = input_device(student)
    forget_batches = _batches(forget, tokenizer, batch_size, generator)
    retain_batches = _batches(retain, tokenizer, batch_size, generator)

    def step_loss() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        forget_loss = sharded_lm_loss(student, next(forget_batches).to(device))
        retain_loss = sharded_lm_loss(student, next(retain_batches).to(device))
        loss = alpha * -forget_loss + (1 - alpha) * retain_loss
        return loss, {"forget_loss": forget_loss, "retain_loss": retain_loss}

    log = train(
        student.parameters(), step_loss, budget=budget, lr=config.lr, desc="gradient ascent", progress=progress,
        measure=lambda: {"forget_accuracy": accuracy(student, forget, tokenizer)},
    )  # fmt: skip
    return student.eval(), {}, log


def _answer_nll(log_probs: torch.Tensor, batch: FactBatch, count: torch.Tensor | None = None) -> torch.Tensor:
    """Mean negative log-likelihood of the answer tokens (padding excluded); summed and divided by
    ``count`` instead when given (a rank's share of a global batch)."""
    picked = log_probs.gather(-1, batch.target_ids[..., None]).squeeze(-1)
    mask = batch.target_mask.to(picked.dtype)
    return -(picked * mask).sum() / (mask.sum().clamp(min=1.0) if count is None else count)


def _sharded_answer_nll(student: Any, batch: FactBatch, rows: torch.Tensor) -> torch.Tensor:
    """:func:`_answer_nll` of ``batch.rows(rows)``, data parallel under a process group (this
    rank's rows, its sum over the global batch's answer-token count)."""
    if not active():
        kept = batch.rows(rows)
        return _answer_nll(answer_log_probs(student, kept), kept)
    mine = _mine(rows)
    if len(mine) == 0:
        return zero_loss(student)
    count = batch.target_mask[rows].sum().clamp(min=1).to(torch.float32)
    local = batch.rows(mine)
    return _answer_nll(answer_log_probs(student, local), local, count)


def _npo(
    model: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    tokenizer: Any,
    seed: int,
    progress: bool,
    budget: Budget,
    validation_retain: KnowledgeSet,
    config: NPOConfig,
) -> tuple[Any, dict[str, Any], list[dict[str, float]]]:
    """NPO on the forget answers plus NLL on the retain answers, all weights (open-unlearning's NPO)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    student = plain_copy(model).train()
    device = input_device(student)
    forget_loss = _Forget(model, forget, None, "npo", config.beta, tokenizer, device)
    retain_batch = retain.encode(tokenizer).to(device)

    def step_loss() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rows = torch.randperm(len(forget_loss), generator=generator)[: config.batch_size].to(device)
        kept = torch.randperm(len(retain_batch), generator=generator)[: config.batch_size].to(device)
        f = forget_loss(student, rows)
        r = _sharded_answer_nll(student, retain_batch, kept)
        return config.gamma * f + config.alpha * r, {"forget_loss": f, "retain_loss": r}

    log = train(
        student.parameters(), step_loss, budget=budget, lr=config.lr, desc="npo", progress=progress,
        measure=lambda: {"forget_accuracy": accuracy(student, forget, tokenizer),
                         "retain_accuracy": accuracy(student, validation_retain, tokenizer)},
    )  # fmt: skip
    return student.eval(), {}, log


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
    config: TaskVectorConfig,
) -> tuple[Any, dict[str, Any], list[dict[str, float]]]:
    lr, batch_size, scales = config.lr, config.batch_size, config.scales
    finetune_steps = min(60, budget.max_steps) if config.finetune_steps is None else config.finetune_steps
    check_number("finetune_steps", finetune_steps, low=1, high=budget.max_steps, integer=True)
    used: dict[str, Any] = {"finetune_steps": finetune_steps}
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    tuned = plain_copy(model).train()
    device = input_device(tuned)
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=lr)
    batches = _batches(forget, tokenizer, batch_size, generator)
    log: list[dict[str, float]] = []
    for step in tqdm(range(1, finetune_steps + 1), disable=not progress, desc="task vector: fine-tune", leave=False):
        loss = sharded_lm_loss(tuned, next(batches).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        all_reduce_gradients(tuned.parameters())
        optimizer.step()
        if budget.due(step):
            log.append({"step": step, "forget_loss": logged(loss)})
    base = {k: v.detach().clone() for k, v in hf_state_dict(model).items()}
    tuned_state = tuned.state_dict()
    vector = {k: tuned_state[k] - v for k, v in base.items()}
    chosen, best, margin = None, None, None
    for scale in sorted(scales):  # one check per scale, smallest intervention first
        candidate = plain_copy(model, state={k: base[k] - scale * vector[k] for k in base})
        forget_accuracy = accuracy(candidate, forget, tokenizer)
        retain_accuracy = accuracy(candidate, validation_retain, tokenizer)
        log.append({"step": finetune_steps, "scale": scale, "forget_accuracy": forget_accuracy,
                    "retain_accuracy": retain_accuracy})  # fmt: skip
        if budget.reached(forget_accuracy):
            chosen, best = scale, candidate
            break
        if margin is None or retain_accuracy - forget_accuracy > margin:
            chosen, best, margin = scale, candidate, retain_accuracy - forget_accuracy
    used["chosen"] = {"scale": chosen}
    return best, used, log


def _by_chunks(batch: FactBatch, read: Callable[[FactBatch], torch.Tensor], rows: int = 256) -> torch.Tensor:
    """``read`` (no gradients) of ``batch`` in chunks of ``rows`` rows, joined in order: never a
    whole large batch's ``[rows, positions, d_vocab]`` at once. Data parallel under a process
    group: each rank reads its block of the chunks and every rank gets all of them."""
    chunks = torch.arange(len(batch)).split(rows)
    with torch.no_grad():
        parts = [read(batch.rows(chunks[i])) for i in shard(chunks)]
    if not active():
        return torch.cat(parts)
    return torch.cat([part.to(batch.input_ids.device) for part in gather_rows([p.cpu() for p in parts])])


def _answer_log_probs(student: Any, batch: FactBatch, attacked: AttackedModel | None) -> torch.Tensor:
    """``student``'s answer log-probs on ``batch``, or those at its adversarially attacked weights."""
    if attacked is None:
        return answer_log_probs(student, batch)
    return batch.target_log_softmax(attacked.logits(batch.input_ids, batch.attention_mask))


class _Forget:
    """LOKA's forget loss on the forget prompts (:mod:`loka.objectives`), on a batch of rows."""

    def __init__(self, model: Any, forget: KnowledgeSet, reference: KnowledgeSet | None, objective: str,
                 beta: float, tokenizer: Any, device: torch.device) -> None:  # fmt: skip
        self.objective, self.beta = objective, beta
        if objective == "unknown":
            assert reference is not None
            prompts, unknown = unknown_distributions(model, forget, reference)
            self.unknown = unknown.to(device)
        else:
            prompts = forget
        self.batch = prompts.encode(tokenizer).to(device)
        skip_first, reference_model = objective == "unknown", hf_model(model)

        def read(part: FactBatch) -> torch.Tensor:  # log p_ref(answer | prompt) before the edit, for NPO
            return sequence_log_probs(answer_log_probs(reference_model, part), part, skip_first=skip_first)

        self.original = _by_chunks(self.batch, read)
        self.multi = self.batch.target_mask.sum(-1) > 1

    def __len__(self) -> int:
        return len(self.batch)

    def __call__(self, student: Any, rows: torch.Tensor, attacked: AttackedModel | None = None) -> torch.Tensor:
        if active():
            return self._sharded(student, rows, attacked)
        batch = self.batch.rows(rows)
        log_probs = _answer_log_probs(student, batch, attacked)
        if self.objective == "npo":
            return npo_loss(sequence_log_probs(log_probs, batch), self.original[rows], beta=self.beta)
        loss = unknown_loss(log_probs[:, 0], self.unknown[rows])
        multi = self.multi[rows]
        if multi.any():  # the rest of a multi-token answer: NPO on the tokens after the first
            rest = sequence_log_probs(log_probs, batch, skip_first=True)
            loss = loss + npo_loss(rest[multi], self.original[rows][multi], beta=self.beta) * multi.float().mean()
        return loss

    def _sharded(self, student: Any, rows: torch.Tensor, attacked: AttackedModel | None) -> torch.Tensor:
        """The same loss, data parallel: this rank's rows, sums over the global batch's counts."""
        mine, n = _mine(rows), len(rows)
        if len(mine) == 0:
            return zero_loss(student)
        batch = self.batch.rows(mine)
        log_probs = _answer_log_probs(student, batch, attacked)
        if self.objective == "npo":
            return _npo_sum(sequence_log_probs(log_probs, batch), self.original[mine], self.beta) / n
        loss = torch.nn.functional.kl_div(log_probs[:, 0], self.unknown[mine], reduction="sum") / n
        n_multi = int(self.multi[rows].sum())
        multi = self.multi[mine]
        if multi.any():
            rest = sequence_log_probs(log_probs, batch, skip_first=True)
            term = _npo_sum(rest[multi], self.original[mine][multi], self.beta) / n_multi
            loss = loss + term * (n_multi / n)
        return loss


class _Retain:
    """KL(original || student) at every answer position of a batch of retain rows. The original's
    log-probabilities are computed once when they fit in ``cache_bytes`` (small vocabularies and
    short answers), else recomputed per batch with the unedited model."""

    def __init__(self, model: Any, batch: FactBatch, cache_bytes: int = 1 << 28) -> None:
        self.model, self.batch, self.cached = model, batch, None
        vocab = int(hf_model(model).get_input_embeddings().num_embeddings)
        if batch.target_ids.numel() * vocab * 4 <= cache_bytes:
            self.cached = _by_chunks(batch, self._original)

    def _original(self, batch: FactBatch) -> torch.Tensor:
        with torch.no_grad():
            return answer_log_probs(hf_model(self.model), batch)

    def __len__(self) -> int:
        return len(self.batch)

    def __call__(self, student: Any, rows: torch.Tensor) -> torch.Tensor:
        count = None
        if active():  # data parallel: this rank's rows, its sum over the global answer-token count
            count = self.batch.target_mask[rows].sum().clamp(min=1).to(torch.float32)
            rows = _mine(rows)
            if len(rows) == 0:
                return zero_loss(student)
        batch = self.batch.rows(rows)
        original = self.cached[rows.to(self.cached.device)] if self.cached is not None else self._original(batch)
        return retain_kl(answer_log_probs(student, batch), original, batch.target_mask, count)


def _masked_finetune(
    model: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    mask: AblationMask,
    reference: KnowledgeSet | None,
    objective: str,
    tokenizer: Any,
    validation_retain: KnowledgeSet,
    seed: int,
    progress: bool,
    budget: Budget,
    config: LokaConfig,
) -> tuple[Any, list[dict[str, float]]]:
    """Train only the parameters the components of ``mask`` own (:func:`ablation.edit`: every other
    parameter stays bit-identical) on ``forget loss + retain_weight * retain KL`` (plus, with
    ``erase="subject"``, ``subject_weight`` x the subject term, and with ``adversary_weight``, the
    forget loss at adversarially fine-tuned weights: :mod:`loka.erasure`), under ``budget``; with
    ``reinit``, then shrink-perturb and repair (:func:`_reinit_repair`)."""
    device = input_device(model)
    forget_loss = _Forget(model, forget, reference, objective, config.beta, tokenizer, device)
    retain_loss = _Retain(model, retain.encode(tokenizer).to(device))
    subject = None
    if config.erase == "subject":
        assert reference is not None
        subject = SubjectTerm(model, forget, retain, reference, tokenizer, device)
    attack_batch = forget.encode(tokenizer).to(device) if (config.adversary_weight or 0) > 0 else None
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    log: list[dict[str, float]] = []
    state: dict[str, Any] = {}
    batch_size = config.batch_size

    def loss(student: Any) -> torch.Tensor:
        state["student"] = student
        rows = torch.randperm(len(forget_loss), generator=generator)[:batch_size].to(device)
        kept = torch.randperm(len(retain_loss), generator=generator)[:batch_size].to(device)
        f, r = forget_loss(student, rows), retain_loss(student, kept)
        total = f + config.retain_weight * r
        losses = {"forget_loss": logged(f), "retain_loss": logged(r)}
        if subject is not None:
            s = subject(student, rows, kept) if not active() else _sharded_subject(subject, student, rows, kept)
            total = total + config.subject_weight * s
            losses["subject_loss"] = logged(s)
        if attack_batch is not None and len(rows) > 1:
            half = len(rows) // 2  # the adversary fine-tunes on one fold, the loss reads the other
            # (the adversary's step is computed on every rank on its whole fold: it takes the
            # sign of that fold's gradient; the loss at the attacked weights is data parallel)
            attacked = AttackedModel(student, attack_batch.rows(rows[:half]), config.adversary_lr)
            a = forget_loss(student, rows[half:], attacked=attacked)
            total = total + config.adversary_weight * a
            losses["attacked_forget_loss"] = logged(a)
        state["losses"] = losses
        return total

    def check(step: int, value: float) -> bool:
        if not budget.due(step + 1):
            return False
        student = state["student"]
        forget_accuracy = accuracy(student, forget, tokenizer)
        entry = {"step": step + 1, **state["losses"], "forget_accuracy": forget_accuracy,
                 "retain_accuracy": accuracy(student, validation_retain, tokenizer)}  # fmt: skip
        done = budget.reached(forget_accuracy)
        if subject is not None:  # the names too: down to the strangers' level (within the tolerance)
            entry["subject_gap"] = subject.refresh(student)
            done = done and abs(entry["subject_gap"]) <= config.subject_tolerance
        log.append(entry)
        return done

    edited = edit(
        model, mask, loss, steps=budget.max_steps, lr=config.lr, on_step=check, progress=progress, share=config.share
    )
    if config.reinit > 0:
        edited, repair_log = _reinit_repair(
            edited, forget, retain, mask=mask, tokenizer=tokenizer, validation_retain=validation_retain,
            seed=seed, progress=progress, budget=budget, config=config, offset=_steps(log),
        )  # fmt: skip
        log += repair_log
    return edited, log


def _sharded_subject(subject: SubjectTerm, student: Any, rows: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """:class:`loka.erasure.SubjectTerm` on a global batch, data parallel: this rank's rows of
    each side, each side's sum over its global row count."""
    mine, mine_kept = _mine(rows), _mine(kept)
    parts = []
    if len(mine):
        forget = text_nll(student, subject.batch.rows(mine))
        parts.append(((forget - subject.target[mine]) ** 2).sum() / len(rows))
    if len(mine_kept):
        retain = text_nll(student, subject.retain_batch.rows(mine_kept))
        parts.append(((retain - subject.retain_original[mine_kept]) ** 2).sum() / len(kept))
    return sum(parts[1:], parts[0]) if parts else zero_loss(student)


def _reinit_repair(
    teacher: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    mask: AblationMask,
    tokenizer: Any,
    validation_retain: KnowledgeSet,
    seed: int,
    progress: bool,
    budget: Budget,
    config: LokaConfig,
    offset: int,
) -> tuple[Any, list[dict[str, float]]]:
    """Localized UNDO: shrink-perturb the parameters ``mask``'s components own in a copy of the
    edited model (``teacher``), then train only those to match the teacher's answer distributions
    (KL at every answer position) on the retain facts and the forget prompts, until validation
    retain is back to ``retain_floor`` x the teacher's (checked every ``check_every`` steps, at
    most ``max_steps``; the forget target must hold too)."""
    device = input_device(teacher)
    student = plain_copy(teacher)
    shrink_perturb(student, parameter_masks(student, mask.neurons, mask.heads), config.reinit, seed=seed)
    student = same_kind_as(student, teacher)
    retain_target = _Retain(teacher, retain.encode(tokenizer).to(device))
    forget_target = _Retain(teacher, forget.encode(tokenizer).to(device))
    floor = config.retain_floor * accuracy(teacher, validation_retain, tokenizer)
    generator = torch.Generator().manual_seed(seed + 1)
    log: list[dict[str, float]] = [{
        "step": offset, "phase_reinit": 1.0, "forget_accuracy": accuracy(student, forget, tokenizer),
        "retain_accuracy": accuracy(student, validation_retain, tokenizer),
    }]  # fmt: skip
    state: dict[str, Any] = {}

    def loss(model: Any) -> torch.Tensor:
        state["model"] = model
        rows = torch.randperm(len(forget_target), generator=generator)[: config.batch_size].to(device)
        kept = torch.randperm(len(retain_target), generator=generator)[: config.batch_size].to(device)
        return retain_target(model, kept) + forget_target(model, rows)

    def check(step: int, value: float) -> bool:
        if not budget.due(step + 1):
            return False
        model = state["model"]
        entry = {"step": offset + step + 1, "repair_loss": value,
                 "forget_accuracy": accuracy(model, forget, tokenizer),
                 "retain_accuracy": accuracy(model, validation_retain, tokenizer)}  # fmt: skip
        log.append(entry)
        return entry["retain_accuracy"] >= floor and budget.reached(entry["forget_accuracy"])

    mask = AblationMask.from_components(mask.components, model=student)  # the same components, the new weights
    repaired = edit(
        student, mask, loss, steps=budget.max_steps, lr=config.lr, on_step=check, progress=progress, share=config.share
    )
    return repaired, log


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
    reference: KnowledgeSet | None,
    config: LokaConfig,
) -> tuple[Any, dict[str, Any], list[dict[str, float]], AblationMask | None]:
    objective = config.objective
    if config.edit == "rewrite":
        return (*_rewrite_search(model, forget, retain, tokenizer=tokenizer, seed=seed, progress=progress,
                                 budget=budget, validation_retain=validation_retain, reference=reference,
                                 retain_floor=config.retain_floor, max_layers=config.max_layers, lams=config.lams),
                None)  # fmt: skip
    if objective == "auto":
        objective = "unknown" if reference is not None else "npo"
    config = _resolved(config, forget, retain, reference)
    if config.erase == "subject" and reference is None:
        raise UsageError("erase='subject' needs reference= facts about people the model never saw (fresh names)")
    if config.erase == "subject" and config.edit != "finetune":
        raise UsageError(f"erase='subject' works with edit='finetune', got edit={config.edit!r}")
    if (config.reinit > 0 or (config.adversary_weight or 0) > 0) and config.edit != "finetune":
        raise UsageError(f"reinit and adversary_weight work with edit='finetune', got edit={config.edit!r}")
    if objective == "unknown" and reference is None:
        raise UsageError("objective='unknown' needs reference= facts about people the model never saw; use 'npo'")
    used: dict[str, Any] = dict(objective=objective, reference=reference.name if reference is not None else None,
                                erase=config.erase, adversary_weight=config.adversary_weight)  # fmt: skip
    original_retain = accuracy(model, validation_retain, tokenizer)
    floor = config.retain_floor * original_retain
    candidates = list(config.sizes) if config.size == "auto" else [config.size]
    log: list[dict[str, float]] = []
    best: tuple[float, Any, Localization, list[dict[str, float]]] | None = None
    located: Localization | None = None
    for candidate in candidates:
        if located is None or config.localize == "exact":
            # a control places itself by the located set, but does not rest on its ranking: no check
            check = config.check_scores if config.location == "located" else 0
            located = locate(model, forget, retain, size=candidate, localize=config.localize,
                             components=config.components, contrast=config.contrast, check=check,
                             seed=seed)  # fmt: skip
        else:
            located = located.resized(model, candidate, config.components)
        if config.erase == "subject":  # the names' own components too
            located = _with_names(model, located, forget, retain, candidate, config, seed)
        location_seed = seed if config.location_seed is None else config.location_seed
        chosen = control_mask(model, located, config.location, seed=location_seed,
                              min_layer_share=config.min_layer_share)  # fmt: skip
        if config.edit == "ablate":
            means = mean_activations(model, retain.encode(tokenizer)) if config.ablate_mode == "mean" else None
            edited = bake(model, chosen.mask.with_mode(config.ablate_mode, means=means), share=config.share)
            run = [{"step": 0, "forget_accuracy": accuracy(edited, forget, tokenizer),
                    "retain_accuracy": accuracy(edited, validation_retain, tokenizer)}]  # fmt: skip
        else:
            edited, run = _masked_finetune(
                model, forget, retain, mask=chosen.mask, reference=reference, objective=objective,
                tokenizer=tokenizer, validation_retain=validation_retain, seed=seed, progress=progress,
                budget=budget, config=config,
            )  # fmt: skip
        offset = _steps(log)
        log += [{**entry, "step": entry["step"] + offset, "size": float(candidate)} for entry in run]
        last = run[-1]
        margin = last["retain_accuracy"] - last["forget_accuracy"]
        if best is None or margin > best[0]:
            best = (margin, edited, chosen, run)
        if budget.reached(last["forget_accuracy"]) and last["retain_accuracy"] >= floor:
            best = (margin, edited, chosen, run)
            break
    assert best is not None
    _, edited, chosen, run = best
    last = run[-1]
    if not budget.reached(last["forget_accuracy"]) or last["retain_accuracy"] < floor:
        logger.warning(
            "loka: stopped at forget %.3f, validation retain %.3f (target forget <= %.2f, retain >= %.3f)",
            last["forget_accuracy"], last["retain_accuracy"], budget.target_forget_accuracy, floor,
        )  # fmt: skip
    used["original_validation_retain"] = round(original_retain, 6)
    used["chosen"] = {**chosen.to_dict(), "size": chosen.mask.summary()["total"], "steps": int(last["step"])}
    return same_kind_as(edited, model), used, log, chosen.mask


def _resolved(
    config: LokaConfig, forget: KnowledgeSet, retain: KnowledgeSet, reference: KnowledgeSet | None
) -> LokaConfig:
    """The config with its automatic choices made: ``erase="auto"`` is ``"subject"`` for a
    fine-tuning edit with ``reference`` people when forget, retain and reference people have names
    of two or more words (else ``"answer"``); ``adversary_weight=None`` is 1.0 for a fine-tuning
    edit (else 0)."""
    finetune = config.edit == "finetune"
    erase = config.erase
    if erase == "auto":
        named = reference is not None and all(name_facts(k) is not None for k in (forget, retain, reference))
        erase = "subject" if finetune and named else "answer"
    adversary = config.adversary_weight
    if adversary is None:
        adversary = 1.0 if finetune else 0.0
    return replace(config, erase=erase, adversary_weight=adversary)


def _with_names(
    model: Any,
    located: Localization,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    size: float | int,
    config: LokaConfig,
    seed: int,
) -> Localization:
    """``located`` joined with the components that carry the forget people's *names*
    (:func:`loka.erasure.name_facts`, contrasted with the retain people's names; the same size)."""
    names, retain_names = name_facts(forget), name_facts(retain)
    if names is None or retain_names is None:
        raise UsageError("erase='subject' needs forget and retain people with names of two or more words")
    by_name = locate(model, names, retain_names, size=size, localize="all", components=config.components,
                     contrast=config.contrast, check=0, seed=seed)  # fmt: skip
    mask = located.mask | by_name.mask
    return replace(located, mask=mask, parameters=owned_parameters(model, mask))


def _rewrite_search(
    model: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    tokenizer: Any,
    seed: int,
    progress: bool,
    budget: Budget,
    validation_retain: KnowledgeSet,
    reference: KnowledgeSet | None,
    retain_floor: float,
    max_layers: int,
    lams: tuple[float, ...],
) -> tuple[Any, dict[str, Any], list[dict[str, float]]]:
    """``edit="rewrite"``: the closed-form rewrite of whole MLP output projections (layer sets from
    attribution and MEMIT's last layers, smaller first; ``lam`` from large to small)."""
    scores = attribution.attribute(
        model, forget, method="grad_x_act", components=("neurons",), baseline="corrupt",
        direction="denoise", positions="last", seed=seed, progress=progress,
    )  # fmt: skip
    per_layer = scores.neurons.clamp(min=0).sum(-1)
    reference = reference if reference is not None else retain
    floor = retain_floor * accuracy(model, validation_retain, tokenizer)
    config: dict[str, Any] = dict(
        edit="rewrite", retain_floor=retain_floor, reference=reference.name, max_layers=max_layers, lams=list(lams),
        layer_attribution=[round(v, 6) for v in per_layer.tolist()],
    )  # fmt: skip
    ranked = per_layer.argsort(descending=True).tolist()
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
            forget_accuracy = accuracy(result.model, forget, tokenizer)
            retain_accuracy = accuracy(result.model, validation_retain, tokenizer)
            log.append(
                {"layers": layers, "lam": lam, "forget_accuracy": forget_accuracy, "retain_accuracy": retain_accuracy}
            )
            chosen = {
                "layers": list(layers),
                "lam": lam,
                "update_norms": list(result.norms),
                "ranks": list(result.ranks),
            }
            if budget.reached(forget_accuracy) and retain_accuracy >= floor:
                return result.model, {**config, "chosen": chosen}, log
            margin = retain_accuracy - forget_accuracy
            if best is None or margin > best[0]:
                best = (margin, result.model, chosen)
    assert best is not None
    logger.warning(
        "loka: no candidate reached forget <= %.2f with retain >= %.3f", budget.target_forget_accuracy, floor
    )
    return best[1], {**config, "chosen": best[2]}, log


METHODS: tuple[Method, ...] = ("loka", "gradient_ascent", "npo", "rmu", "task_vector", "retrain")
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
    :class:`loka.errors.UsageError` that lists the method's options. ``result.config`` records
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
    with _TokenMeter(vocab) as meter:
        if isinstance(config, GradientAscentConfig):
            edited, used, log = _gradient_ascent(model, given, train_retain, config=config, **common)
        elif isinstance(config, NPOConfig):
            edited, used, log = _npo(model, given, train_retain, config=config, validation_retain=validation, **common)
        elif isinstance(config, RMUConfig):
            edited, used, log = rmu(model, given, train_retain, config=config, validation_retain=validation, **common)
        elif isinstance(config, TaskVectorConfig):
            edited, used, log = _task_vector(
                model, given, train_retain, config=config, validation_retain=validation, **common
            )
        else:
            assert isinstance(config, LokaConfig)
            edited, used, log, mask = _loka(
                model, given, train_retain, config=config, validation_retain=validation, reference=reference, **common
            )
    seconds = time.perf_counter() - start
    forward, backward = meter.forward, meter.backward
    if active():  # every rank's tokens (data parallel: each ran its share)
        forward, backward = (int(v) for v in all_reduce_sum(torch.tensor([forward, backward], dtype=torch.float64)))
    compute = Compute(_steps(log), forward, backward, round(seconds, 3))
    recorded = {**config.to_dict(), **used, "budget": asdict(budget), "seed": seed}
    return UnlearningResult(
        same_kind_as(edited, model), method, recorded, seconds, tuple(log), mask=mask, compute=compute,
        seen=Seen.of(forget, augment, train_retain, validation, reference),
    )  # fmt: skip
