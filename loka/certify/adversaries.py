"""Two edits built to fool a certificate, for measuring how often it is fooled (its calibration).

Neither is an unlearning method: each is what a careless or dishonest edit looks like, and a
certificate that PASSes it is wrong by construction.

- :func:`suppress`: **output-only suppression**. Only the last block's MLP output projection is
  trained, so every earlier block computes exactly what the original computes (the residual
  stream up to the last block, hence the logit lens at earlier blocks and a probe on any MLP
  input, still hold the facts), and it is trained only to stop the answer's first token at the
  end of the forget prompts (unlikelihood, ``-log(1 - p(answer))``) while a retain batch keeps the
  other facts. The knowledge is intact; the model just stops saying it.
- :func:`match_reference_loss`: **gaming the LOSS attack** (what SCRUB+R does on purpose; Hayes
  et al. 2025). A full fine-tune whose only objective on the forget set is to pull each forget
  text's mean token loss (the whole text, as the membership checks score it) onto the mean loss
  of the reference people's texts under the same model, ``mean_i (nll_i - mean_ref)^2``, with a
  retain batch so that collateral damage does not give it away. It knows nothing of answers,
  relearning or readouts.

Both return a plain Hugging Face copy (the input is not changed) and take the sets a method is
given: never the ones a certificate scores.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch

from loka.base.errors import UsageError
from loka.data.encoding import encode_facts
from loka.data.knowledge import KnowledgeSet
from loka.models import hf_state_dict, input_device, plain_copy
from loka.models import logits as model_logits
from loka.scoring.metrics import lm_loss, text_nll

__all__ = ["suppress", "match_reference_loss", "output_projection"]

_OUTPUT_PROJECTIONS = ("mlp.c_proj", "mlp.dense_4h_to_h", "mlp.down_proj")  # GPT-2, GPT-NeoX, Llama


def output_projection(model: Any) -> list[str]:
    """The parameter names of the last block's MLP output projection (GPT-2, GPT-NeoX, Llama)."""
    names = [n for n, _ in model.named_parameters()]
    layers = sorted({int(part) for n in names for part in n.split(".") if part.isdigit()})
    if not layers:
        raise UsageError("the model has no numbered blocks")
    last = f".{layers[-1]}."
    chosen = [n for n in names if last in n and any(p in n for p in _OUTPUT_PROJECTIONS)]
    if not chosen:
        raise UsageError(f"no MLP output projection ({', '.join(_OUTPUT_PROJECTIONS)}) in the last block")
    return chosen


def _retain_sample(retain: KnowledgeSet, n: int, seed: int) -> KnowledgeSet:
    facts = random.Random(f"adversary/{seed}").sample(retain.facts, min(n, len(retain)))
    return KnowledgeSet(tuple(facts), name="retain-sample")


def _first_token(model: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """p(answer's first token) at the end of each prompt, and the top-1 token there."""
    logits = model_logits(model, batch.input_ids, attention_mask=batch.attention_mask)
    rows = torch.arange(len(batch), device=logits.device)
    probs = logits[rows, batch.answer_positions].float().softmax(-1)
    return probs[rows, batch.target_ids[:, 0]], probs.argmax(-1)


def _train_until(
    model: Any, optimizer: torch.optim.Optimizer, loss: Callable[[], torch.Tensor | None], max_steps: int
) -> None:
    """At most ``max_steps`` optimizer steps on ``loss()``, in eval mode (no dropout: the losses an
    adversary matches are the ones the checks score); ``loss()`` returns None once its target is met."""
    model.eval()
    for _ in range(max_steps):
        value = loss()
        if value is None:
            return
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()


def suppress(
    model: Any,
    tokenizer: Any,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    lr: float = 1e-3,
    max_steps: int = 300,
    target_accuracy: float = 0.05,
    retain_weight: float = 10.0,
    retain_facts: int = 400,
    seed: int = 0,
) -> Any:
    """An output-only suppression of ``forget`` (see the module docstring): a plain copy whose
    last block's MLP output projection alone is trained until at most ``target_accuracy`` of the
    forget answers are top-1 (about what strangers get by guessing), or ``max_steps``, keeping a
    sample of ``retain`` (its loss weighted ``retain_weight``)."""
    torch.manual_seed(seed)
    copy = plain_copy(model, onload=hf_state_dict(model))
    trainable = set(output_projection(copy))
    for name, p in copy.named_parameters():
        p.requires_grad_(name in trainable)
    device = input_device(copy)
    f_batch = encode_facts(forget.facts, tokenizer).to(device)
    r_batch = encode_facts(_retain_sample(retain, retain_facts, seed).facts, tokenizer).to(device)
    optimizer = torch.optim.Adam([p for p in copy.parameters() if p.requires_grad], lr=lr)

    def loss() -> torch.Tensor | None:
        p, top = _first_token(copy, f_batch)
        if float((top == f_batch.target_ids[:, 0]).float().mean()) <= target_accuracy:
            return None
        return -torch.log1p(-p.clamp(max=1 - 1e-6)).mean() + retain_weight * lm_loss(copy, r_batch)

    _train_until(copy, optimizer, loss, max_steps)
    for p in copy.parameters():
        p.requires_grad_(True)
    return copy.eval()


def match_reference_loss(
    model: Any,
    tokenizer: Any,
    forget: KnowledgeSet,
    reference: KnowledgeSet,
    retain: KnowledgeSet,
    *,
    lr: float = 1e-4,
    max_steps: int = 300,
    tolerance: float = 0.02,
    retain_weight: float = 10.0,
    retain_facts: int = 400,
    seed: int = 0,
) -> Any:
    """A fine-tune that pulls each forget text's loss onto the reference texts' mean loss (see the
    module docstring), until the forget texts' mean loss is within ``tolerance`` (relative) of
    the reference mean, or ``max_steps``; a sample of ``retain`` is kept (its loss weighted
    ``retain_weight``)."""
    torch.manual_seed(seed)
    copy = plain_copy(model, onload=hf_state_dict(model))
    device = input_device(copy)
    f_batch = encode_facts(forget.facts, tokenizer).to(device)
    u_batch = encode_facts(reference.facts, tokenizer).to(device)
    r_batch = encode_facts(_retain_sample(retain, retain_facts, seed).facts, tokenizer).to(device)
    optimizer = torch.optim.AdamW(copy.parameters(), lr=lr)

    def loss() -> torch.Tensor | None:
        with torch.no_grad():
            target = text_nll(copy, u_batch).mean()
        gap = (text_nll(copy, f_batch) - target) / target
        if abs(float(gap.mean().detach())) < tolerance:
            return None
        return gap.square().mean() + retain_weight * lm_loss(copy, r_batch)

    _train_until(copy, optimizer, loss, max_steps)
    return copy.eval()
