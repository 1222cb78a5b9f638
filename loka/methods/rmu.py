"""RMU: Representation Misdirection for Unlearning (Li et al. 2024, "The WMDP Benchmark").

RMU does not touch the output distribution directly. It picks one block ``L`` of the model and a
fixed random direction ``u`` (entries uniform in ``[0, 1)``, then normalised to unit length), and
trains the model so that on forget text the residual stream after block ``L`` is pushed to the
large, meaningless vector ``c * u``, while on retain text it stays what the original model computes
there::

    loss = MSE(h_student(forget)[L], c * u) + alpha * MSE(h_student(retain)[L], h_original(retain)[L])

where ``h[L]`` is the hidden state after block ``L`` (``hidden_states[L + 1]`` in Hugging Face
terms) and each MSE is the mean over the ``d_model`` entries, averaged over the real (non-padding)
tokens of the whole fact text (BOS + prompt + answer), as WMDP does on its text corpora
(:func:`rmu_loss` is this formula on given states). The later blocks then read noise wherever the
forget knowledge used to be, and the model's answers on it degrade.

The steering coefficient ``c`` is set relative to the model: ``c = s * n_L`` where ``s`` is the
steering scale and ``n_L`` the original model's mean residual-stream norm after block ``L`` (the
mean L2 norm of ``h_original[L]`` over every real token of the retain training facts, BOS
included, as in the loss), measured once before training. WMDP's coefficient is absolute (6.5 for
zephyr-7b, 300 for Mixtral), so a value tuned on one model over- or under-steers another; Adaptive
RMU (Dang et al. 2025, arXiv 2412.15115) likewise scales it with the layer's activation norm.
``||c * u|| = c``, so ``s`` says how many times longer than a typical residual the target is. The
default scales (1.5, 2.5) stand for the absolute 300 and 500 once tuned on the default testbed
(``n_L`` about 180 and 205 at blocks 2 and 3); on the tiny testbed (``n_L`` about 32) they give
about 48 and 80, where 300 destroyed retain.

Only the MLP output projections (GPT-2 ``c_proj``, NeoX ``dense_4h_to_h``, Llama ``down_proj``) of
blocks ``L - n_updated + 1 .. L`` are trained, with AdamW (WMDP: layer 7 of zephyr-7b, updating
blocks 5, 6 and 7); every other parameter of the returned copy is bit-identical to the input model's.

As every loka method, RMU follows the shared :class:`loka.methods.Budget` (forget accuracy checked
every ``check_every`` steps, stop at the target or after ``max_steps``) and chooses its
hyper-parameters on validation retain facts only: candidates ``(layer, steering_scale)`` run in
order (``layer=None``: two blocks, half-way and three quarters down, :func:`layer_grid`), and the
first that reaches the forget target with validation retain at least ``RETAIN_FLOOR`` x the
original's wins; if none does, the one with the best validation-retain minus forget margin.
Every candidate's steps are compute spent, so the log's steps run on across candidates: when none
passes, the default grid (2 layers x 2 scales) costs up to 4 x ``max_steps``.

Reference implementations: ``centerforaisafety/wmdp`` ``rmu/unlearn.py`` and
``locuslab/open-unlearning`` ``src/trainer/unlearn/rmu.py`` (whose masked activation loss this
follows).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from loka.base.checks import check_number
from loka.base.distributed import active, shard
from loka.base.errors import UsageError
from loka.data.encoding import FactBatch
from loka.data.knowledge import KnowledgeSet
from loka.methods.config import MethodConfig, set_field
from loka.methods.training import accuracy, train
from loka.models import architecture, hf_model, plain_copy
from loka.scoring.metrics import zero_loss

__all__ = [
    "RMUConfig",
    "RETAIN_FLOOR",
    "RMULoss",
    "rmu_loss",
    "control_vector",
    "layer_grid",
    "updated_parameters",
    "rmu",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RMUConfig(MethodConfig):
    """``"rmu"``: Representation Misdirection for Unlearning (Li et al. 2024, WMDP). The residual
    stream after block ``layer`` on forget text is steered toward ``c`` x a fixed random unit
    vector, while on retain text it is held at the original's (``alpha`` x MSE); only the MLP
    output weights of blocks ``layer - n_updated + 1 .. layer`` are trained (AdamW, ``lr``,
    ``batch_size`` forget and retain facts a step). The coefficient is relative to the model:
    ``c = steering_scale x`` the original's mean residual-stream norm after block ``layer`` on the
    retain training tokens (as Adaptive RMU, Dang et al. 2025, scales it with the layer's
    activation norm), so one default serves models whose residual norms differ; ``result.config``
    records each candidate's scale, norm and the absolute ``steering_coeff`` it resolved to.
    ``layer`` (``None``: the grid :func:`loka.methods.rmu.layer_grid`, half-way and three quarters down)
    and the scale (the grid ``steering_scales``) are chosen on validation retain people: the
    first candidate, in order, that reaches the forget target with validation retain at least
    0.95 x the original's; else the best validation-retain minus forget margin. The default
    scales reproduce the absolute coefficients 300 and 500 that were tuned on the default
    testbed (residual norm about 180 at block 2)."""

    method: ClassVar[str] = "rmu"
    layer: int | None = None
    n_updated: int = 3
    steering_scales: tuple[float, ...] = (1.5, 2.5)
    alpha: float = 100.0
    lr: float = 2e-2
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.layer is not None:
            check_number("layer", self.layer, integer=True)
        check_number("n_updated", self.n_updated, low=1, integer=True)
        check_number("alpha", self.alpha)
        check_number("lr", self.lr)
        check_number("batch_size", self.batch_size, low=1, integer=True)
        scales = self.steering_scales
        if not isinstance(scales, tuple | list) or not scales or any(
            isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < float("inf") for v in scales
        ):  # fmt: skip
            raise UsageError(f"steering_scales must be positive numbers, got {scales!r}")
        set_field(self, "steering_scales", tuple(float(v) for v in scales))


logger = logging.getLogger(__name__)

RETAIN_FLOOR = 0.95
"""A candidate is accepted when its validation retain accuracy is at least this share of the original's."""
_CHOSEN = ("layer", "steering_scale", "steering_coeff", "residual_norm", "updated", "steps")
_CACHE_BYTES = 1 << 28  # the original's retain states are cached when they fit, else recomputed per batch


class RMULoss(NamedTuple):
    """RMU's loss and its two terms (all float32 scalars)."""

    loss: Tensor
    forget: Tensor
    retain: Tensor


def _mean_norm(states: Float[Tensor, "batch pos d_model"], mask: Tensor) -> tuple[float, int]:
    """The sum of the L2 norms of ``states`` over the tokens where ``mask`` is set, and their count."""
    real = mask.to(states.device).bool()
    return states.float().norm(dim=-1)[real].sum().item(), int(real.sum())


def _masked_mse(
    states: Float[Tensor, "batch pos d_model"],
    target: Float[Tensor, "batch pos d_model"] | Float[Tensor, " d_model"],
    mask: Bool[Tensor, "batch pos"] | Int[Tensor, "batch pos"],
) -> Float[Tensor, ""]:
    """Mean over ``d_model`` of the squared error, averaged over the tokens where ``mask`` is set."""
    per_token = (states.float() - target.float()).pow(2).mean(-1)
    weights = mask.to(device=per_token.device, dtype=torch.float32)
    return (per_token * weights).sum() / weights.sum().clamp(min=1.0)


def rmu_loss(
    forget_states: Float[Tensor, "batch pos d_model"],
    retain_states: Float[Tensor, "batch2 pos2 d_model"],
    original_retain_states: Float[Tensor, "batch2 pos2 d_model"],
    control: Float[Tensor, " d_model"],
    coeff: float,
    alpha: float,
    masks: tuple[Bool[Tensor, "batch pos"], Bool[Tensor, "batch2 pos2"]],
) -> RMULoss:
    """RMU's loss on given hidden states: ``forget + alpha * retain`` with

    ``forget = mean_t mean_d (forget_states[t] - coeff * control)^2`` over the real forget tokens
    and ``retain = mean_t mean_d (retain_states[t] - original_retain_states[t])^2`` over the real
    retain tokens (``masks = (forget_mask, retain_mask)``: True / 1 on real tokens), in float32."""
    forget_mask, retain_mask = masks
    control = coeff * control.to(device=forget_states.device, dtype=torch.float32)
    forget = _masked_mse(forget_states, control, forget_mask)
    retain = _masked_mse(retain_states, original_retain_states.to(retain_states.device), retain_mask)
    return RMULoss(forget + alpha * retain.to(forget.device), forget, retain)


def control_vector(d_model: int, seed: int) -> Float[Tensor, " d_model"]:
    """RMU's fixed random direction: entries uniform in ``[0, 1)`` (seeded, on the CPU, so the same
    seed gives the same vector on any device), normalised to unit length."""
    u = torch.rand(d_model, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return u / u.norm()


def layer_grid(n_layers: int) -> tuple[int, ...]:
    """The blocks RMU tries when no layer is given: half-way and three quarters down the model,
    rounded down (blocks 2 and 3 of 4, 16 and 24 of 32; block 1 of 2). WMDP's layer 7 of 32 sits
    lower, but on the shallow testbed models the lower half cannot be steered selectively (block 1
    of 4: forget 0.70 at validation retain 0.85 after 500 steps, where block 3 reaches 0.13 at 0.91)."""
    return tuple(dict.fromkeys(max(0, min(n_layers - 1, int(f * n_layers))) for f in (0.5, 0.75)))


def updated_parameters(model: Any, layer: int, n_updated: int) -> list[str]:
    """The HF names of the MLP output projections RMU trains for ``layer``: blocks
    ``max(0, layer - n_updated + 1) .. layer`` (fewer than ``n_updated`` near the first block)."""
    spec = architecture(model)
    return [spec.name(spec.mlp_out_weight, b) for b in range(max(0, layer - n_updated + 1), layer + 1)]


class _Reached(Exception):
    """Raised by the capture hook once block ``L`` has run: nothing after it is needed."""


@contextmanager
def _capture(block: nn.Module, store: list[Tensor]) -> Iterator[None]:
    """While open, a forward through the model stops after ``block``, whose output is put in ``store``."""

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        store.append(output[0] if isinstance(output, tuple) else output)
        raise _Reached

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _states(model: nn.Module, block: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The hidden state after ``block`` (``[batch, pos, d_model]``, on the block's device)."""
    store: list[Tensor] = []
    device = model.get_input_embeddings().weight.device
    with _capture(block, store):
        try:
            model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
        except _Reached:
            pass
    if not store:
        raise RuntimeError("the RMU capture hook did not run: the block is not part of the model's forward")
    return store[0]


def _block(model: nn.Module, spec_template: str, layer: int) -> nn.Module:
    """Block ``layer`` of a plain HF model: the module whose MLP owns ``spec_template``'s weight."""
    prefix = spec_template.split(".mlp.")[0].format(layer=layer)
    return model.get_submodule(prefix)


def _take(batch: FactBatch, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Input ids and attention mask of ``rows``, cut to their longest real length (right padding)."""
    mask = batch.attention_mask[rows]
    length = int(mask.sum(-1).max())
    return batch.input_ids[rows, :length], mask[:, :length]


class _Original:
    """The original model's hidden states after block ``layer`` on retain rows: cached for the whole
    retain batch when they fit in ``_CACHE_BYTES`` (computed by the not-yet-trained student, which
    is the original), else recomputed per batch by a frozen copy. ``norm``: their mean L2 norm over
    every real token of the batch (what the steering scale multiplies)."""

    def __init__(self, model: Any, student: nn.Module, block: nn.Module, batch: FactBatch, layer: int,
                 template: str) -> None:  # fmt: skip
        d_model = int(student.get_input_embeddings().weight.shape[1])
        size = batch.input_ids.numel() * d_model * 4
        self.cached: Tensor | None = None
        self.frozen: nn.Module | None = None
        total, count = 0.0, 0
        with torch.no_grad():
            if size <= _CACHE_BYTES:
                was_training = student.training
                student.eval()
                chunks = [
                    _states(student, block, batch.input_ids[rows], batch.attention_mask[rows]).float()
                    for rows in torch.arange(len(batch)).split(256)
                ]
                student.train(was_training)
                self.cached = torch.cat(chunks)
                total, count = _mean_norm(self.cached, batch.attention_mask)
            else:
                self.frozen = plain_copy(model).requires_grad_(False).eval()
                self.block = _block(self.frozen, template, layer)
                for rows in torch.arange(len(batch)).split(256):
                    ids, mask = _take(batch, rows)
                    part = _mean_norm(_states(self.frozen, self.block, ids, mask), mask)
                    total, count = total + part[0], count + part[1]
        self.norm = total / max(count, 1)

    def __call__(self, rows: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if self.cached is not None:
            return self.cached[rows.to(self.cached.device), : input_ids.shape[1]]
        assert self.frozen is not None
        with torch.no_grad():
            return _states(self.frozen, self.block, input_ids, attention_mask)


def _run(
    model: Any,
    forget: KnowledgeSet,
    validation_retain: KnowledgeSet,
    forget_batch: FactBatch,
    retain_batch: FactBatch,
    *,
    layer: int,
    scale: float,
    tokenizer: Any,
    seed: int,
    progress: bool,
    budget: Any,
    config: RMUConfig,
) -> tuple[nn.Module, list[str], list[dict[str, float]], float, float]:
    """One RMU run at ``(layer, scale)`` under the budget: the edited copy, its trained weights'
    names, its log, the original's mean residual norm at ``layer`` on the retain tokens and the
    steering coefficient ``scale * norm`` it resolved to."""
    spec = architecture(model)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    student = plain_copy(model).train()
    names = updated_parameters(model, layer, config.n_updated)
    params = dict(student.named_parameters())
    student.requires_grad_(False)
    trained = [params[name].requires_grad_(True) for name in names]
    block = _block(student, spec.mlp_out_weight, layer)
    original = _Original(model, student, block, retain_batch, layer, spec.mlp_out_weight)
    control = control_vector(int(student.get_input_embeddings().weight.shape[1]), seed)
    norm = original.norm
    if not norm > 0:
        raise RuntimeError(f"the original's residual norm after block {layer} is {norm}: cannot scale the steering")
    coeff = scale * norm
    desc = f"rmu L{layer} s={scale:g} (c={coeff:.4g})"

    def step_loss() -> tuple[Tensor, dict[str, Tensor]]:
        f_rows = torch.randperm(len(forget_batch), generator=generator)[: config.batch_size]
        r_rows = torch.randperm(len(retain_batch), generator=generator)[: config.batch_size]
        f_ids, f_mask = _take(forget_batch, f_rows)
        r_ids, r_mask = _take(retain_batch, r_rows)
        if active():
            terms = _sharded_loss(student, block, original, control, coeff, config.alpha,
                                  (f_rows, f_ids, f_mask), (r_rows, r_ids, r_mask))  # fmt: skip
        else:
            forget_states = _states(student, block, f_ids, f_mask)
            retain_states = _states(student, block, r_ids, r_mask)
            original_states = original(r_rows, r_ids, r_mask)
            terms = rmu_loss(forget_states, retain_states, original_states, control, coeff, config.alpha,
                             (f_mask, r_mask))  # fmt: skip
        return terms.loss, {"forget_loss": terms.forget, "retain_loss": terms.retain}

    log = train(
        trained, step_loss, budget=budget, lr=config.lr, desc=desc, progress=progress,
        measure=lambda: {"forget_accuracy": accuracy(student, forget, tokenizer),
                         "retain_accuracy": accuracy(student, validation_retain, tokenizer)},
    )  # fmt: skip
    student.requires_grad_(True)
    return student.eval(), names, log, norm, coeff


def _sharded_loss(
    student: nn.Module,
    block: nn.Module,
    original: _Original,
    control: Tensor,
    coeff: float,
    alpha: float,
    forget: tuple[Tensor, Tensor, Tensor],
    retain: tuple[Tensor, Tensor, Tensor],
) -> RMULoss:
    """:func:`rmu_loss` of a global batch, data parallel: this rank's contiguous share of each
    side's rows (same padding as the whole batch), each term its squared errors' sum over the
    global batch's real-token count, so that the ranks' terms and gradients add up to the batch's."""
    control = coeff * control.to(dtype=torch.float32)
    terms = []
    for (rows, ids, mask), is_retain in ((forget, False), (retain, True)):
        count = mask.to(torch.float32).sum().clamp(min=1.0)
        part = shard(len(rows))
        if len(part) == 0:
            terms.append(zero_loss(student))
            continue
        ids, mask = ids[part.start : part.stop], mask[part.start : part.stop]
        states = _states(student, block, ids, mask)
        target = original(rows[part.start : part.stop], ids, mask) if is_retain else control.to(states.device)
        per_token = (states.float() - target.to(states.device).float()).pow(2).mean(-1)
        terms.append((per_token * mask.to(device=per_token.device, dtype=torch.float32)).sum() / count)
    forget_term, retain_term = terms
    return RMULoss(forget_term + alpha * retain_term.to(forget_term.device), forget_term, retain_term)


def _candidates(n_layers: int, config: RMUConfig) -> list[tuple[int, float]]:
    if config.layer is not None and not 0 <= config.layer < n_layers:
        raise UsageError(f"layer must be in range(0, {n_layers}) for this model, got {config.layer}")
    layers: Sequence[int] = layer_grid(n_layers) if config.layer is None else (config.layer,)
    return [(layer, scale) for layer in layers for scale in config.steering_scales]


def rmu(
    model: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    tokenizer: Any,
    seed: int,
    progress: bool,
    budget: Any,
    validation_retain: KnowledgeSet,
    config: RMUConfig,
) -> tuple[Any, dict[str, Any], list[dict[str, float]]]:
    """RMU under ``budget`` (see the module docstring): an edited plain HF copy of ``model``, what
    was chosen (``{"chosen": {"layer", "steering_scale", "steering_coeff", "residual_norm", "updated",
    "steps"}, "candidates": [...]}``, ``steering_coeff`` being the absolute coefficient the scale
    resolved to, ``steering_scale x residual_norm``) and the log of every check, its steps running on
    across candidates."""
    hf = hf_model(model)
    n_layers = int(hf.config.num_hidden_layers)
    candidates = _candidates(n_layers, config)
    forget_batch = forget.encode(tokenizer)
    retain_batch = retain.encode(tokenizer)
    original_retain = accuracy(model, validation_retain, tokenizer)
    floor = RETAIN_FLOOR * original_retain
    log: list[dict[str, float]] = []
    results: list[dict[str, Any]] = []
    best: tuple[float, nn.Module, dict[str, Any]] | None = None
    for layer, scale in candidates:
        edited, names, run, norm, coeff = _run(model, forget, validation_retain, forget_batch, retain_batch,
                                               layer=layer, scale=scale, tokenizer=tokenizer, seed=seed,
                                               progress=progress, budget=budget, config=config)  # fmt: skip
        offset = int(log[-1]["step"]) if log else 0
        log += [{**entry, "step": entry["step"] + offset, "layer": float(layer), "steering_scale": scale,
                 "steering_coeff": coeff} for entry in run]  # fmt: skip
        last = run[-1]
        accepted = budget.reached(last["forget_accuracy"]) and last["retain_accuracy"] >= floor
        result = {"layer": layer, "steering_scale": scale, "steering_coeff": round(coeff, 3),
                  "residual_norm": round(norm, 3), "updated": names, "steps": int(last["step"]),
                  "forget_accuracy": last["forget_accuracy"], "retain_accuracy": last["retain_accuracy"],
                  "accepted": accepted}  # fmt: skip
        results.append(result)
        margin = last["retain_accuracy"] - last["forget_accuracy"]
        if accepted or best is None or margin > best[0]:
            best = (margin, edited, result)
        if accepted:
            break
    assert best is not None
    _, edited, chosen = best
    if not chosen["accepted"]:
        logger.warning(
            "rmu: no candidate reached forget <= %.2f with validation retain >= %.3f; chose forget %.3f, retain %.3f",
            budget.target_forget_accuracy, floor, chosen["forget_accuracy"], chosen["retain_accuracy"],
        )  # fmt: skip
    used = {
        "chosen": {k: chosen[k] for k in _CHOSEN},
        "candidates": results,
        "original_validation_retain": round(original_retain, 6),
    }
    return edited, used, log
