"""What LOKA adds to *erase* knowledge rather than suppress it (options of ``method="loka"``).

An edit that only makes the outputs match a model that never saw the data stays in the same basin:
a little fine-tuning brings the knowledge back, and the forget people's names stay memorised, so a
membership-inference attack on whole texts still finds them (Foote et al. 2025, "Distillation
Robustifies Unlearning", arXiv 2506.06278; Deeb & Roger 2024, arXiv 2410.08827). Three additions,
each on LOKA's located components only:

- **Subject erasure** (``erase="subject"``): the forget people's whole texts (names included)
  should be as likely as those of people the model never saw. The name's own components are
  located too (:func:`name_facts`: the first word of each name is the prompt, the rest of the name
  the answer), and :class:`SubjectTerm` pulls the forget texts' mean token NLLs onto the
  distribution of the ``reference`` texts' (people it never saw, in the same templates) under the
  edited model, quantile by quantile, from both sides: below that level a text would be *less*
  likely than a stranger's, which leaks membership too.
- **Re-initialise and repair** (``reinit=alpha``, a localized UNDO): after the edit, the located
  parameters are shrunk and perturbed, ``theta <- (1 - alpha) * theta + alpha * noise`` with
  noise of each weight tensor's own standard deviation (:func:`shrink_perturb`), and repaired by
  distilling the edited model (the teacher) on retain facts and on the forget prompts, training
  only those parameters, until validation retain is back within the tolerance.
- **Relearning-aware training** (``adversary_weight`` > 0; first-order, in the style of TAR and
  MUDMAN): at every step an adversary fine-tunes *all* weights one step on one fold of the forget
  batch (sign of its next-token-loss gradient, ``adversary_lr`` per weight: the displacement of
  a few Adam steps), and the forget loss on the other fold is also minimised at those attacked
  weights (:class:`AttackedModel`; the gradient is taken at the attacked point, first order).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from torch.func import functional_call

from loka.base.errors import UsageError
from loka.data.encoding import FactBatch
from loka.data.facts import Fact
from loka.data.knowledge import KnowledgeSet, Prompts
from loka.models import hf_model
from loka.scoring.metrics import text_nll

__all__ = ["AttackedModel", "SubjectTerm", "name_facts", "shrink_perturb"]


def name_facts(knowledge: KnowledgeSet, *, name: str | None = None) -> KnowledgeSet | None:
    """One fact per person of ``knowledge`` whose subject has at least two words: the first word is
    the prompt, the rest of the name the answer (``"Kowen Prazed"`` -> ``"Kowen" -> "Prazed"``).
    ``None`` when no subject has two words."""
    people = dict.fromkeys(f.subject for f in knowledge if f.subject is not None and len(f.subject.split()) > 1)
    facts = tuple(
        Fact(id=f"{person}/name", prompt=person.split()[0], target=" ".join(person.split()[1:]), relation="name")
        for person in people
    )
    return KnowledgeSet(facts, name=name or f"{knowledge.name}-names") if facts else None


def _chunks(batch: FactBatch, size: int = 256) -> Iterator[FactBatch]:
    for rows in torch.arange(len(batch), device=batch.input_ids.device).split(size):
        yield batch.rows(rows)


class SubjectTerm:
    """The subject-erasure loss on a batch of rows: ``mean_i (nll_i - target_i)^2`` over forget texts
    ``i`` (each text's mean token NLL under the edited model against the reference texts' NLL, under
    the same model, at the same quantile of its relation: :meth:`refresh`), plus the same
    squared difference between the edited and the original model's NLL on retain texts (the
    names and texts of people to keep stay as likely as they were). Squared, so it pulls from
    both sides. The targets are re-read with the edited model at every :meth:`refresh` (the
    edit moves strangers' texts too).

    ``forget`` are the rows the training loop samples: pass the forget term's own rows
    (:attr:`loka.methods.terms.ForgetTerm.knowledge`: every wording of every forget fact when
    the facts carry ``paraphrases``), so that row ``i`` is the same text in both terms. Every
    wording of the ``reference`` facts is a stranger's text (:class:`loka.data.knowledge.Prompts`),
    so a forget paraphrase is pulled onto strangers' texts in that same paraphrase."""

    def __init__(self, model: Any, forget: KnowledgeSet, retain: KnowledgeSet, reference: KnowledgeSet,
                 tokenizer: Any, device: torch.device) -> None:  # fmt: skip
        self.forget, self.reference = forget, Prompts.of(reference).knowledge
        self.batch = forget.encode(tokenizer).to(device)
        self.retain_batch = retain.encode(tokenizer).to(device)
        self.reference_batch = self.reference.encode(tokenizer).to(device)
        self.retain_original = _nll(model, self.retain_batch)
        self.refresh(model)

    def refresh(self, model: Any) -> float:
        """Re-read the strangers' texts with ``model`` and give each forget text its target: the
        reference NLL at the same quantile, within its template (the prompt with the subject taken
        out; else its relation; else all reference texts), as the text's own NLL among the forget
        texts of that template. So the
        forget texts are pulled onto the strangers' *distribution* (one-dimensional optimal
        transport), not all onto its mean, which for a skewed distribution would put them above
        most strangers. Returns the gap (:meth:`gap`)."""
        reference, forget = _nll(model, self.reference_batch), _nll(model, self.batch)
        pools: dict[Any, list[int]] = {}
        for i, fact in enumerate(self.reference):
            for key in (_template(fact), fact.relation):
                pools.setdefault(key, []).append(i)
        groups: dict[Any, list[int]] = {}
        for i, fact in enumerate(self.forget):
            key = _template(fact) if _template(fact) in pools else fact.relation
            groups.setdefault(key, []).append(i)
        target = torch.empty_like(forget)
        for key, rows in groups.items():
            pool = reference[pools.get(key, list(range(len(reference))))]
            ranks = forget[rows].argsort().argsort().to(torch.float64)
            levels = (ranks + 0.5) / len(rows)
            target[rows] = torch.quantile(pool.double(), levels.to(pool.device)).to(target.dtype)
        self.target = target
        return self.gap(model)

    def __len__(self) -> int:
        return len(self.batch)

    def __call__(self, student: Any, rows: Tensor, kept: Tensor) -> Tensor:
        forget = text_nll(student, self.batch.rows(rows))
        retain = text_nll(student, self.retain_batch.rows(kept))
        return ((forget - self.target[rows]) ** 2).mean() + ((retain - self.retain_original[kept]) ** 2).mean()

    def gap(self, model: Any) -> float:
        """Mean over forget texts of ``target - nll``: how much more likely they still are than a
        stranger's (0 at the reference level; negative below it)."""
        return float((self.target - _nll(model, self.batch)).mean())


def _template(fact: Fact) -> tuple[str | None, str]:
    """The wording a fact's text follows: its prompt with the subject taken out, and its relation."""
    wording = fact.prompt.replace(fact.subject, "{}") if fact.subject else fact.prompt
    return fact.relation, wording


def _nll(model: Any, batch: FactBatch) -> Tensor:
    with torch.no_grad():
        return torch.cat([text_nll(hf_model(model), chunk) for chunk in _chunks(batch)])


def shrink_perturb(model: Any, masks: Mapping[str, Tensor], alpha: float, *, seed: int = 0) -> None:
    """In place: every entry of parameter ``name`` where ``masks[name]`` is True becomes
    ``(1 - alpha) * value + alpha * noise``, noise ~ N(0, std of that parameter tensor) (a bias of
    constant entries gets the std of its weight's scale, 0 if none). Other entries are untouched."""
    if not 0 < alpha <= 1:
        raise UsageError(f"reinit must be in (0, 1] (0 turns it off), got {alpha!r}")
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in sorted(masks):
            param, keep = params[name], masks[name].to(params[name].device)
            std = float(param.float().std()) if param.numel() > 1 else 0.0
            noise = torch.randn(param.shape, generator=generator).to(param.device, torch.float32) * std
            mixed = (1 - alpha) * param.float() + alpha * noise
            param.copy_(torch.where(keep, mixed.to(param.dtype), param))


class AttackedModel:
    """``model`` as it would be after one adversarial fine-tuning step on ``attack`` (the next-token
    loss of a batch of forget texts): every weight ``w`` becomes ``w - step * sign(grad)``
    (the displacement of a few Adam steps), with the gradient detached (first order), so a loss of
    this model back-propagates to ``model``'s trainable weights as the gradient at the attacked
    point (:meth:`logits`). ``model`` is a plain HF model. Weights that a ``device_map`` offloads
    (``meta`` between calls) are not attacked: the adversary moves the weights held in memory."""

    def __init__(self, model: Any, attack: FactBatch, step: float) -> None:
        self.model = model
        names = [name for name, param in model.named_parameters() if not param.is_meta]
        current = dict(model.named_parameters())
        leaves = {name: current[name].detach().requires_grad_(True) for name in names}
        labels = attack.input_ids.masked_fill(attack.attention_mask == 0, -100)
        inputs = {"input_ids": attack.input_ids, "attention_mask": attack.attention_mask, "labels": labels}
        out = functional_call(model, leaves, (), inputs)
        grads = torch.autograd.grad(out.loss, [leaves[n] for n in names], allow_unused=True)
        self.weights = {
            name: current[name] - step * grad.sign() if grad is not None else current[name]
            for name, grad in zip(names, grads, strict=True)
        }

    def logits(self, input_ids: Tensor, attention_mask: Tensor) -> Float[Tensor, "batch pos d_vocab"]:
        """Next-token logits at the attacked weights."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        return functional_call(self.model, self.weights, (), kwargs).logits
