"""The quantization attack: round the weights, and see whether "forgotten" answers come back.

Unlearning methods that fine-tune with small learning rates move each weight by a tiny amount.
Zhang et al. 2024 ("Does your LLM truly unlearn? An embarrassingly simple approach to recover
unlearned knowledge", arXiv 2410.16454) observed that quantizing such a model to 4 bits maps the
unlearned weights and the original weights to the *same* grid points, so the quantized unlearned
model answers what the original answered (they recover most of the forgotten knowledge on MUSE at
4 bits; less at 8 bits, whose grid is 16 times finer). Knowledge that was removed does not come
back this way: a model that never saw the forget data (the exact-retrain oracle) has nothing to
round back to. So the attack is scored, like every attack in the evaluation, beside the oracle's.

The scheme is the standard round-to-nearest (RTN) baseline of GPTQ (Frantar et al. 2023) and AWQ
(Lin et al. 2024), in plain torch:

- **Which weights.** Every 2-D weight of an ``nn.Linear`` or a ``transformers`` ``Conv1D`` inside
  the model (attention query/key/value and output projections, MLP input and output projections),
  as GPTQ and AWQ quantize them. The token and position embeddings and the unembedding
  (``lm_head``; GPT-2 ties it to the token embedding) stay in full precision, as GPTQ and AWQ keep
  them; so do biases and layer norms.
- **Symmetric, absmax scale, per output channel.** For ``b`` bits, ``q_max = 2**(b-1) - 1`` (127 at 8
  bits, 7 at 4 bits); each output channel (a row of a Linear's ``[out, in]`` weight, a column of a
  Conv1D's ``[in, out]`` weight), or each group of ``group_size`` consecutive input weights of it,
  gets the scale ``s = max|w| / q_max``, and each weight becomes ``s * clamp(round(w / s), -q_max,
  q_max)`` (a group that is all zeros stays zero). ``group_size=None`` takes the whole channel as one
  group; the evaluation uses that at 8 bits and groups of 128 (the whole channel when it is shorter)
  at 4 bits, the usual 4-bit setting of GPTQ/AWQ's RTN baselines.
- **Where.** On the weights' own device and in their own dtype, in place on one copy of the
  model (:func:`loka.models.plain_copy`, with the weights a ``device_map`` offloads brought into
  memory: all of them are rounded); each weight is rounded through a float32 temporary of its own
  size, never a second copy of the whole model.

:func:`quantization_attack` quantizes a model at each scheme and re-scores forget accuracy (did
the answers come back?) and retain accuracy (does the quantized model still work?), per fact, so
that the evaluation can put intervals over people on them. :func:`quantization_informative` says
whether the attack tells the original model from the oracle at all (a paired bootstrap over
people, as :func:`loka.evaluation.attacks.probe.probe_informative`); where it does not, report "uninformative".
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from loka.base.errors import UsageError
from loka.data.knowledge import KnowledgeSet
from loka.evaluation.intervals import paired_gap
from loka.models import hf_model, hf_state_dict, plain_copy, same_kind_as
from loka.scoring.metrics import score_facts

__all__ = [
    "BITS",
    "DEFAULT_SCHEMES",
    "Quantization",
    "QuantizedScores",
    "quantize",
    "quantize_weight",
    "quantization_attack",
    "quantization_gap",
    "quantization_informative",
]

BITS = (4, 8)
"""The bit widths the attack supports."""
DEFAULT_SCHEMES: tuple[tuple[int, int | None], ...] = ((8, None), (4, 128))
"""(bits, group size) of the evaluation's attack: 8-bit per channel, 4-bit in groups of 128."""


# --- rounding -----------------------------------------------------------------------------------
def _check_scheme(bits: Any, group_size: Any) -> None:
    if isinstance(bits, bool) or bits not in BITS:
        raise UsageError(f"bits must be one of {BITS}, got {bits!r}")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise UsageError(
            f"group_size must be a positive integer or None (one group per output channel), got {group_size!r}"
        )


@torch.no_grad()
def quantize_weight(
    W: Float[Tensor, "d_out d_in"], bits: int, *, group_size: int | None = None
) -> Float[Tensor, "d_out d_in"]:
    """Round ``W`` (rows are output channels) in place to symmetric ``bits``-bit round-to-nearest
    with an absmax scale per row, or per group of ``group_size`` consecutive columns of a row (the
    last group of a row may be shorter); returns ``W``. ``W`` may be a transposed view (a Conv1D's
    weight seen as ``[out, in]``). The arithmetic is float32, the result ``W``'s dtype."""
    _check_scheme(bits, group_size)
    if W.ndim != 2:
        raise UsageError(f"quantize_weight takes a 2-D [d_out, d_in] weight, got shape {tuple(W.shape)}")
    q_max = 2 ** (bits - 1) - 1
    d_in = W.shape[1]
    step = d_in if group_size is None else min(group_size, d_in)
    for start in range(0, d_in, step):
        block = W[:, start : start + step]
        x = block.float()
        scale = x.abs().amax(dim=1, keepdim=True) / q_max  # [d_out, 1]
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group stays zero
        block.copy_((x / scale).round().clamp(-q_max, q_max) * scale)
    return W


def _quantized_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """Every Linear / Conv1D weight to quantize, as an ``[out, in]`` view, with its module name;
    the unembedding (and any weight tied to an embedding) is left out."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in model.named_modules():
        if module is output or not isinstance(module, nn.Linear | Conv1D):
            continue
        if id(module.weight) in embeddings or module.weight.ndim != 2:
            continue
        yield name, module.weight.data if isinstance(module, nn.Linear) else module.weight.data.T


def _quantized_copy(model: Any, bits: int, group_size: int | None) -> nn.Module:
    """A plain HF copy of ``model`` with its Linear / Conv1D weights rounded (eval mode)."""
    _check_scheme(bits, group_size)
    copy = plain_copy(model, onload=hf_state_dict(model))  # every weight in memory: offloaded ones too
    for _, W in _quantized_weights(copy):
        quantize_weight(W, bits, group_size=group_size)
    return copy


def quantize(model: Any, bits: int, *, group_size: int | None = None) -> Any:
    """A copy of ``model`` (a TransformerBridge or an HF causal LM; left untouched) whose
    Linear / Conv1D weights are rounded to symmetric ``bits``-bit round-to-nearest, with an absmax
    scale per output channel (``group_size=None``) or per group of ``group_size`` input weights of a
    channel. Embeddings, the unembedding, biases and norms are kept (see the module docstring). The
    copy is the same kind of model as ``model`` (a bridge for a bridge)."""
    hf_model(model)  # a UsageError for anything that is not a model
    return same_kind_as(_quantized_copy(model, bits, group_size), model)


# --- the attack ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantizedScores:
    """First-token scores of one quantized copy: ``forget_correct[i]`` / ``retain_correct[i]`` per
    fact, in the order of the sets the attack was given."""

    bits: int
    group_size: int | None
    forget_accuracy: float
    retain_accuracy: float
    forget_correct: tuple[bool, ...]
    retain_correct: tuple[bool, ...]

    @property
    def scheme(self) -> str:
        group = "per channel" if self.group_size is None else f"groups of {self.group_size}"
        return f"{self.bits}-bit RTN, {group}"


@dataclass(frozen=True)
class Quantization:
    """The quantization attack on one model: forget / retain first-token accuracy after rounding
    the weights at each scheme (:data:`DEFAULT_SCHEMES`), with the unquantized forget accuracy
    (``before``) beside them. ``forget_ids`` / ``forget_people`` and ``retain_people`` name each
    scored fact and its person (subject, or the fact id where it has none)."""

    before: float
    points: tuple[QuantizedScores, ...]
    forget_ids: tuple[str, ...] = ()
    forget_people: tuple[str, ...] = ()
    retain_people: tuple[str, ...] = ()

    @property
    def bits(self) -> tuple[int, ...]:
        return tuple(p.bits for p in self.points)

    def at(self, bits: int) -> QuantizedScores:
        """The scores at ``bits`` (UsageError if the attack did not run at that width)."""
        for point in self.points:
            if point.bits == bits:
                return point
        raise UsageError(f"the quantization attack ran at {self.bits} bits, not {bits!r}")

    def forget_accuracy(self, bits: int) -> float:
        return self.at(bits).forget_accuracy

    def retain_accuracy(self, bits: int) -> float:
        return self.at(bits).retain_accuracy

    def restored(self, bits: int) -> float:
        """Forget accuracy gained by quantizing (after minus before)."""
        return self.at(bits).forget_accuracy - self.before

    def _maybe(self, bits: int) -> QuantizedScores | None:
        return next((p for p in self.points if p.bits == bits), None)

    @property
    def forget_8bit(self) -> float | None:
        """Forget accuracy of the 8-bit copy (None where the attack did not run at 8 bits)."""
        point = self._maybe(8)
        return None if point is None else point.forget_accuracy

    @property
    def forget_4bit(self) -> float | None:
        """Forget accuracy of the 4-bit copy (None where the attack did not run at 4 bits)."""
        point = self._maybe(4)
        return None if point is None else point.forget_accuracy


def _people(knowledge: KnowledgeSet) -> tuple[str, ...]:
    return tuple(f.subject if f.subject is not None else f.id for f in knowledge)


def quantization_attack(
    model: Any,
    tokenizer: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    schemes: Sequence[tuple[int, int | None]] = DEFAULT_SCHEMES,
    forget_before: float | None = None,
) -> Quantization:
    """Quantize a copy of ``model`` at each ``(bits, group_size)`` of ``schemes`` and score the
    first token of every ``forget`` and ``retain`` fact on it (``model`` is left untouched; one
    copy lives at a time). ``tokenizer`` may be None for a bridge. ``forget_before`` is the
    unquantized forget accuracy when the caller has it already (else it is scored)."""
    for name, value in (("forget", forget), ("retain", retain)):
        if not isinstance(value, KnowledgeSet) or len(value) == 0:
            raise UsageError(
                f"quantization_attack: {name} must be a non-empty KnowledgeSet, got {type(value).__name__}"
            )
    schemes = tuple(schemes)
    if not schemes:
        raise UsageError("quantization_attack: schemes is empty; give at least one (bits, group_size)")
    for scheme in schemes:
        if not isinstance(scheme, tuple) or len(scheme) != 2:
            raise UsageError(f"quantization_attack: each scheme is a (bits, group_size) pair, got {scheme!r}")
        _check_scheme(*scheme)
    if len({bits for bits, _ in schemes}) < len(schemes):
        raise UsageError(f"quantization_attack: schemes repeat a bit width ({schemes}); one scheme per width")
    encoder = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if encoder is None:
        raise UsageError("quantization_attack: this model has no tokenizer attached; pass tokenizer=...")
    if forget_before is None:
        forget_before = score_facts(model, forget, tokenizer=encoder).first_token_accuracy
    points = []
    for bits, group_size in schemes:
        copy = _quantized_copy(model, bits, group_size)
        f = score_facts(copy, forget, tokenizer=encoder).first_token_correct
        r = score_facts(copy, retain, tokenizer=encoder).first_token_correct
        del copy
        points.append(
            QuantizedScores(
                bits,
                group_size,
                f.float().mean().item(),
                r.float().mean().item(),
                tuple(bool(c) for c in f),
                tuple(bool(c) for c in r),
            )  # fmt: skip
        )
    return Quantization(float(forget_before), tuple(points), forget.ids, _people(forget), _people(retain))


# --- is the attack informative? -----------------------------------------------------------------
def quantization_gap(
    original: Quantization, oracle: Quantization, *, bits: int = 4, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """How much more of the forget facts the quantized original answers than the quantized oracle
    at ``bits``: the difference and its lower confidence bound (:func:`loka.evaluation.intervals.paired_gap`)."""
    if not original.forget_ids or original.forget_ids != oracle.forget_ids:
        raise UsageError("the two quantization attacks must score the same forget facts (run both on one forget set)")
    return paired_gap(
        original.forget_people, original.at(bits).forget_correct, oracle.at(bits).forget_correct,
        confidence=confidence, seed=seed,
    )  # fmt: skip


def quantization_informative(
    original: Quantization, oracle: Quantization, *, bits: int = 4, confidence: float = 0.95, seed: int = 0
) -> bool:
    """Whether the quantization attack at ``bits`` tells the original model from the oracle: the
    quantized original answers more forget facts than the quantized oracle, with the lower bound of
    :func:`quantization_gap` above zero. When False (quantization at this width broke the original,
    say), what it restores on an edited model means nothing: report it as uninformative."""
    gap, low = quantization_gap(original, oracle, bits=bits, confidence=confidence, seed=seed)
    return gap > 0 and low > 0
