"""Corrupted runs: the same fact with what it is about obscured, the way ROME traces causes.

A *corrupted* run of a fact is the baseline that keeps everything about the prompt except the
one thing it is about. ``"corrupt"`` patching takes a component's activation from that run
(ablation direction), or restores the clean activation into it (denoising, ROME's indirect
effect). Two corruptions:

- ``"noise"`` (Meng et al. 2022): add Gaussian noise to the token embeddings (``hook_embed``) of
  the fact's *corruption span*, with standard deviation ``noise_scale`` (3) times the standard
  deviation of the embeddings of the tokens that get noised across the set, ``samples`` (10)
  times with independent noise. Positions and tokens are unchanged, so every activation lines up
  with the clean run.
- ``"subject"``: replace the subject by another subject (from the set, the donor set, or
  ``Corruption.subjects``) such that the prompt tokenizes to the same length and every non-subject
  token is unchanged, so positions line up again. ``samples`` replacements per fact (default 1).

The corruption span (``Corruption.span``) says which prompt tokens the noise covers:

- ``"subject"``: the subject's tokens (ROME). Every fact must name a subject that occurs in its
  prompt.
- ``"prompt"``: every prompt token after BOS: the whole question.
- ``"auto"`` (default): per fact, the subject where the fact has one in its prompt, else the
  whole prompt.

Why the whole prompt for a fact without a subject: a question-answer pair or a passage has no
single token span that "the fact is about", and any guessed span (the last word, the nouns)
would make the corruption depend on a heuristic. Noising every prompt token is the one choice
that surely removes what the answer depends on, so the corrupted run's metric falls to the
model's prior for the target, which is what denoising measures recovery from. It is coarser
than ROME's: restoring a component must undo noise on the whole question, not only the subject,
so components that merely read the question's wording can score alongside those that recall
the answer.
BOS is never noised (it carries no content, and many models use it as an attention sink), and
target tokens never are (the metric reads them). The noise unit, ``embedding_std``, is taken
over exactly the tokens that get noised, so a span of common words is noised on their scale. The
``"subject"`` corruption has no such fallback: it needs a subject to replace. The span every fact
got is recorded in the scores' metadata (``options["corruption"]["noised"]``).

Noise and the order in which replacement subjects are tried are seeded per fact (by the seed
and the fact's id), so a fact's corrupted runs do not depend on the batch it is in.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, get_args

import einops
import torch
from jaxtyping import Bool
from torch import Tensor

from attribution.positions import position_mask, subject_tokens
from attribution.runs import Run
from loka.base.errors import UsageError
from loka.data.encoding import FactBatch, encode_facts
from loka.data.facts import Fact
from loka.models import hf_model

__all__ = [
    "CorruptionKind",
    "CORRUPTIONS",
    "CorruptionSpan",
    "SPANS",
    "Corruption",
    "noise_mask",
    "noised_spans",
    "embedding_std",
    "noise_run",
    "subject_replaced_run",
    "fact_seed",
]

CorruptionKind = Literal["noise", "subject"]
CORRUPTIONS: tuple[CorruptionKind, ...] = get_args(CorruptionKind)
CorruptionSpan = Literal["auto", "subject", "prompt"]
SPANS: tuple[CorruptionSpan, ...] = get_args(CorruptionSpan)
DEFAULT_SAMPLES: dict[str, int] = {"noise": 10, "subject": 1}


def allowed(values: Sequence[str]) -> str:
    """``'a', 'b', 'c'``: the choices an error message lists."""
    return ", ".join(map(repr, values))


def fact_seed(seed: int, fact_id: str) -> int:
    """A 63-bit seed for one fact, from the run's seed and the fact's id."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{fact_id}".encode()).digest()[:8], "little") >> 1


@dataclass(frozen=True)
class Corruption:
    """How the corrupted run of a fact obscures what it is about (see the module docstring).

    ``samples`` defaults to 10 for ``"noise"`` (ROME) and 1 for ``"subject"``. ``subjects`` is the
    pool of replacement subjects for ``"subject"`` (default: the subjects of the attributed set
    and of the donor set). ``span`` is the tokens ``"noise"`` covers: ``"auto"`` (the subject
    where a fact has one in its prompt, else the whole prompt after BOS), ``"subject"`` or
    ``"prompt"``; the ``"subject"`` corruption always acts on the subject (``"auto"`` or
    ``"subject"``).
    """

    kind: CorruptionKind = "noise"
    samples: int | None = None
    noise_scale: float = 3.0
    subjects: tuple[str, ...] | None = None
    span: CorruptionSpan = "auto"

    def __post_init__(self) -> None:
        if self.subjects is not None:
            object.__setattr__(self, "subjects", tuple(self.subjects))
        if self.kind not in CORRUPTIONS:
            raise UsageError(f"unknown corruption {self.kind!r}; use one of {allowed(CORRUPTIONS)}")
        if self.samples is not None and (isinstance(self.samples, bool) or self.samples < 1):
            raise UsageError(f"corruption samples must be a positive integer, got {self.samples!r}")
        if not self.noise_scale > 0:
            raise UsageError(f"noise_scale must be positive, got {self.noise_scale}")
        if self.subjects is not None and not self.subjects:
            raise UsageError("corruption subjects, when given, must not be empty")
        if self.span not in SPANS:
            raise UsageError(f"unknown corruption span {self.span!r}; use one of {allowed(SPANS)}")
        if self.kind == "subject" and self.span == "prompt":
            raise UsageError("corruption 'subject' replaces the subject; span='prompt' is for 'noise' only")

    @classmethod
    def parse(cls, value: Corruption | str) -> Corruption:
        if isinstance(value, Corruption):
            return value
        if value not in CORRUPTIONS:
            raise UsageError(f"unknown corruption {value!r}; use one of {allowed(CORRUPTIONS)} or a Corruption")
        return cls(kind=value)  # type: ignore[arg-type]

    @property
    def n_samples(self) -> int:
        return self.samples if self.samples is not None else DEFAULT_SAMPLES[self.kind]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["samples"] = self.n_samples
        out["subjects"] = None if self.subjects is None else list(self.subjects)
        return out


def _prompt_tokens(batch: FactBatch) -> Bool[Tensor, "batch pos"]:
    """Every prompt token after BOS (positions 1 .. last prompt token)."""
    index = torch.arange(batch.input_ids.shape[1], device=batch.input_ids.device)
    return (index[None] >= 1) & (index[None] <= batch.answer_positions[:, None])


def noised_spans(batch: FactBatch, span: CorruptionSpan) -> list[Literal["subject", "prompt"]]:
    """The span each fact of ``batch`` gets noised on: ``"subject"`` or ``"prompt"``.

    ValueError for ``span="subject"`` when a fact has no subject in its prompt."""
    if span not in SPANS:
        raise UsageError(f"unknown corruption span {span!r}; use one of {allowed(SPANS)}")
    if span == "prompt":
        return ["prompt"] * len(batch)
    has_subject = subject_tokens(batch).any(-1).tolist()
    if span == "subject":
        missing = [fact_id for fact_id, has in zip(batch.fact_ids, has_subject, strict=True) if not has]
        if missing:
            raise UsageError(
                f"corruption span 'subject' needs every fact to name a subject that occurs in its prompt; "
                f"{len(missing)} fact(s) have none, e.g. {missing[0]!r} (span='auto' noises their whole prompt)"
            )
    return ["subject" if has else "prompt" for has in has_subject]


def noise_mask(batch: FactBatch, span: CorruptionSpan = "auto") -> Bool[Tensor, "batch pos"]:
    """True at the tokens whose embeddings ``"noise"`` corrupts, per fact (see :func:`noised_spans`)."""
    spans = noised_spans(batch, span)
    use_subject = torch.tensor([s == "subject" for s in spans], device=batch.input_ids.device)
    return torch.where(use_subject[:, None], subject_tokens(batch), _prompt_tokens(batch))


def embedding_std(model: Any, batches: FactBatch | Sequence[FactBatch], span: CorruptionSpan = "auto") -> float:
    """ROME's unit of noise: the std of the token embeddings of the tokens of ``batches`` that get
    noised (:func:`noise_mask` with ``span``)."""
    if isinstance(batches, FactBatch):
        batches = [batches]
    ids = torch.cat([batch.input_ids[noise_mask(batch, span).to(batch.input_ids.device)].cpu() for batch in batches])
    return _embedding_rows(model, ids).float().std().item()


def _embedding_rows(model: Any, ids: Tensor) -> Tensor:
    """Rows ``ids`` of the input embedding, read through accelerate's hook when a ``device_map``
    offloads it (its weight is then on ``meta`` between calls)."""
    from accelerate.utils import align_module_device

    embedding = hf_model(model).get_input_embeddings()
    while isinstance(getattr(embedding, "original_component", None), torch.nn.Module):
        embedding = embedding.original_component  # TransformerLens's wrapper -> the HF module
    with torch.no_grad(), align_module_device(embedding):
        weight = embedding.weight
        return weight[ids.to(weight.device)]


def noise_run(
    model: Any, facts: Sequence[Fact], batch: FactBatch, corruption: Corruption, *, std: float, seed: int
) -> Run:
    """``samples * len(facts)`` rows (sample-major): the clean tokens, with Gaussian noise of
    ``noise_scale * std`` to add to the embeddings of each fact's corruption span."""
    s = corruption.n_samples
    width, d_model = batch.input_ids.shape[1], model.cfg.d_model
    noise = torch.zeros(s, len(facts), width, d_model)
    lengths = batch.attention_mask.sum(-1).tolist()
    for i, (fact, length) in enumerate(zip(facts, lengths, strict=True)):
        # Drawn per fact over its own length: the noise does not depend on the batch.
        generator = torch.Generator().manual_seed(fact_seed(seed, fact.id))
        noise[:, i, :length] = torch.randn(s, length, d_model, generator=generator)
    noised = noise_mask(batch, corruption.span).cpu()
    noise = noise * noised[None, :, :, None] * (corruption.noise_scale * std)
    device = batch.input_ids.device
    return Run(
        batch.input_ids.repeat(s, 1),
        batch.attention_mask.repeat(s, 1),
        einops.rearrange(noise, "s f pos d -> (s f) pos d").to(device, model.W_E.dtype),
    )


def subject_replaced_run(
    model: Any,
    facts: Sequence[Fact],
    batch: FactBatch,
    corruption: Corruption,
    *,
    pool: Sequence[str],
    seed: int,
) -> Run:
    """``samples * len(facts)`` rows (sample-major): each fact with its subject replaced by
    another subject of ``pool`` that keeps every other token and the length."""
    rows = [_replaced(model, fact, batch, i, corruption.n_samples, pool, seed) for i, fact in enumerate(facts)]
    input_ids = torch.stack([torch.stack(fact_rows) for fact_rows in rows], dim=1)  # [sample, fact, pos]
    return Run(
        einops.rearrange(input_ids, "s f pos -> (s f) pos").to(batch.input_ids.device),
        batch.attention_mask.repeat(corruption.n_samples, 1),
    )


def _replaced(
    model: Any, fact: Fact, batch: FactBatch, row: int, samples: int, pool: Sequence[str], seed: int
) -> list[Tensor]:
    """``samples`` token rows of ``fact`` with its subject replaced (cycling if fewer fit)."""
    assert fact.subject is not None
    length = int(batch.attention_mask[row].sum())
    original = batch.input_ids[row, :length].cpu()
    keep = ~position_mask(batch, "subject")[row, :length].cpu()
    candidates = [subject for subject in pool if subject != fact.subject]
    random.Random(fact_seed(seed, fact.id)).shuffle(candidates)
    found: list[Tensor] = []
    for subject in candidates:
        prompt = fact.prompt.replace(fact.subject, subject, 1)
        n_prompt = len(model.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if n_prompt != int(batch.answer_positions[row]):  # BOS + prompt ends at the answer position
            continue
        ids = encode_facts([replace(fact, prompt=prompt, subject=subject)], model).input_ids[0]
        if len(ids) == length and torch.equal(ids[keep], original[keep]):
            row_ids = batch.input_ids[row].cpu().clone()  # keeps the original padding
            row_ids[:length] = ids
            found.append(row_ids)
            if len(found) == samples:
                break
    if not found:
        raise UsageError(
            f"corruption 'subject': no replacement for {fact.subject!r} (fact {fact.id!r}) gives a prompt of "
            f"the same token length among {len(candidates)} candidate subject(s); pass a larger pool as "
            "donors=... or Corruption(subjects=...)"
        )
    return [found[k % len(found)] for k in range(samples)]
