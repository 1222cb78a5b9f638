"""Scoring one model on TOFU: the answer NLLs, greedy answers and membership attacks behind its table.

:func:`evaluate_model` turns a model into a :class:`TofuScores` (the formulas are in
:mod:`loka.benchmarks.tofu.metrics`; this module computes the NLLs and answers they read).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from loka.base.errors import UsageError
from loka.base.files import json_default
from loka.benchmarks.tofu import metrics as tm
from loka.benchmarks.tofu.config import TEMPLATE
from loka.benchmarks.tofu.data import TofuData
from loka.data.encoding import token_log_probs
from loka.data.facts import Fact
from loka.data.knowledge import KnowledgeSet
from loka.evaluation.attacks.membership import DEFAULT_MIN_K
from loka.models import hf_model, input_device, plain_copy
from loka.models import logits as model_logits

__all__ = ["TofuScores", "evaluate_model", "jsonable"]


@dataclass(frozen=True)
class TofuScores:
    """TOFU's numbers for one model (see :mod:`loka.benchmarks.tofu.metrics` for definitions).

    ``forget_quality`` is None until a retain model's truth ratios are given; ``utility`` holds
    the nine numbers of the model utility (``"retain/probability"``, ...); ``forget_truth_ratios``
    the per-question ``R`` on the forget set (what the KS test compares); ``seconds`` the
    method's wall time (training time for the original and the retain model); ``seed`` the
    method's seed and ``compute`` its :class:`loka.methods.Compute` as a dict (None for the
    original and the retain model).
    """

    name: str
    model_utility: float
    forget_rouge_l: float
    forget_probability: float
    forget_truth_ratio: float
    mia_auc: float
    utility: Mapping[str, float]
    mia_aucs: Mapping[str, float]
    forget_truth_ratios: tuple[float, ...]
    forget_quality: float | None = None
    seconds: float | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    seed: int | None = None
    compute: Mapping[str, float] | None = None

    @property
    def retain_rouge_l(self) -> float:
        return self.utility["retain/rouge_l"]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["utility"] = dict(self.utility)
        out["mia_aucs"] = dict(self.mia_aucs)
        out["forget_truth_ratios"] = list(self.forget_truth_ratios)
        out["config"] = jsonable(self.config)
        out["compute"] = None if self.compute is None else dict(self.compute)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TofuScores:
        values = dict(data)
        values["forget_truth_ratios"] = tuple(values["forget_truth_ratios"])
        return cls(**values)


def jsonable(value: Any) -> Any:
    """``value`` as JSON data (mapping keys as strings; see :func:`loka.base.files.json_default`)."""
    return json.loads(json.dumps(value, default=json_default))


@torch.no_grad()
def _answer_log_probs(
    model: Any, tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], batch_size: int
) -> list[torch.Tensor]:
    """log p(token | BOS + prompt, earlier tokens) of each answer's tokens and of the EOS after them.

    These are the tokens TOFU scores: its labels are the answer's tokens followed by one EOS, the
    question's tokens masked out (``data_module.convert_raw_data_to_model_format``, summed by
    ``get_batch_loss`` and divided by the number of labelled tokens in ``evaluate_util``).
    open-unlearning labels TOFU answers the same way (``src/data/utils.py``,
    ``preprocess_chat_instance`` appends the EOS). One float32 CPU tensor per answer, in order.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UsageError("the tokenizer has no EOS token; TOFU scores the EOS after each answer")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(answers[i]))  # less padding
    facts = KnowledgeSet(tuple(Fact(f"q{i}", prompts[i], answers[i]) for i in order))
    device = input_device(model)
    out: list[torch.Tensor] = [torch.empty(0)] * len(order)
    done = 0
    for batch in facts.batches(tokenizer, batch_size):
        lengths = batch.attention_mask.sum(-1)  # right padding: the real tokens are [0, length)
        n_answer = batch.target_mask.sum(-1)
        rows = torch.arange(len(batch))
        ids = torch.cat([batch.input_ids, batch.input_ids[:, :1]], dim=1)
        ids[rows, lengths] = eos
        mask = torch.cat([batch.attention_mask, torch.zeros_like(batch.attention_mask[:, :1])], dim=1)
        mask[rows, lengths] = 1
        logits = model_logits(model, ids.to(device), attention_mask=mask.to(device))
        picked = token_log_probs(logits[:, :-1], ids[:, 1:].to(device)).cpu()
        for i in range(len(batch)):
            end = int(lengths[i])  # picked[:, p] scores ids[:, p + 1]; the EOS sits at ids[:, end]
            out[order[done + i]] = picked[i, end - int(n_answer[i]) - 1 : end]
        done += len(batch)
    return out


def _nll(model: Any, tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], batch_size: int) -> np.ndarray:
    """TOFU's ``avg_gt_loss``: the mean NLL over each answer's tokens and the EOS after them."""
    log_probs = _answer_log_probs(model, tokenizer, prompts, answers, batch_size)
    return np.array([-lp.double().mean().item() for lp in log_probs])


def _mia_aucs(
    model: Any, tokenizer: Any, members: KnowledgeSet, nonmembers: KnowledgeSet, batch_size: int
) -> dict[str, float]:
    """open-unlearning's membership attacks on TOFU (``configs/eval/tofu_metrics/mia_*.yaml``):
    ``members`` (the forget QA) against ``nonmembers`` (QA of authors never trained on; in
    :func:`run` the holdout authors no method was given), scoring the *answer's* tokens only. Its LOSS and zlib
    attacks average the loss over the answer tokens and the EOS (``evaluate_probability``); its
    Min-K% drops the EOS (``tokenwise_logprobs``: "-1 to ignore eos prediction"), with k = 0.4.
    zlib normalises by the compressed answer text (open-unlearning decodes the answer's label
    tokens, which gives the same text up to the joining space). AUCs in
    :func:`loka.evaluation.attacks.membership.membership_auc`'s orientation (1 = members found)."""
    sets = (members, nonmembers)
    scored = [
        _answer_log_probs(model, tokenizer, [f.prompt for f in ks], [f.target for f in ks], batch_size) for ks in sets
    ]
    texts = [[f.target for f in ks] for ks in sets]
    aucs = {attack: tm.mia_auc(scored[0], texts[0], scored[1], texts[1], attack=attack) for attack in ("loss", "zlib")}
    no_eos = [[lp[:-1] for lp in per_set] for per_set in scored]
    aucs["min_k"] = tm.mia_auc(no_eos[0], texts[0], no_eos[1], texts[1], attack="min_k", k=DEFAULT_MIN_K)
    return aucs


@torch.no_grad()
def _greedy(
    model: Any, tokenizer: Any, prompts: Sequence[str], references: Sequence[str], batch_size: int
) -> list[str]:
    """Greedy answers (stopping at EOS), each up to its reference's length + 16 tokens."""
    device = input_device(model)
    n_ctx = hf_model(model).config.n_positions
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        rows = [[tokenizer.bos_token_id, *tokenizer(p, add_special_tokens=False)["input_ids"]] for p in chunk]
        width = max(map(len, rows))
        chunk_references = references[start : start + batch_size]
        longest = max(len(tokenizer(" " + r, add_special_tokens=False)["input_ids"]) for r in chunk_references)
        budget = longest + 16
        budget = max(1, min(budget, n_ctx - width))
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        generated = hf_model(model).generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=budget,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        sequences = getattr(generated, "sequences", generated)  # a GenerateOutput in recent transformers
        out += tokenizer.batch_decode(sequences[:, width:], skip_special_tokens=True)
    return out


def evaluate_model(
    model: Any,
    data: TofuData,
    *,
    tokenizer: Any = None,
    name: str = "model",
    template: str = TEMPLATE,
    retain_model_ratios: Sequence[float] | None = None,
    batch_size: int = 64,
) -> TofuScores:
    """Score one model (a TransformerBridge or an HF causal LM) on every TOFU set of ``data``.

    ``retain_model_ratios`` (the retain model's ``forget_truth_ratios``) turns on forget quality.
    """
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise UsageError("this model has no tokenizer attached; pass tokenizer=...")
    plain = plain_copy(model)  # an HF model: generate() and a faster forward than the bridge's hooks
    utility: dict[str, float] = {}
    forget: dict[str, Any] = {}
    for set_name, ev in data.evals.items():
        prompts = [template.format(question=q) for q in ev.questions]
        k = len(ev.perturbed[0])
        nll = _nll(plain, tokenizer, prompts, ev.answers, batch_size)
        same = ev.paraphrased == ev.answers  # real authors / world facts: TOFU's "paraphrase" is the answer
        para = nll if same else _nll(plain, tokenizer, prompts, ev.paraphrased, batch_size)
        flat = [p for ps in ev.perturbed for p in ps]
        pert = _nll(plain, tokenizer, [p for p in prompts for _ in range(k)], flat, batch_size).reshape(len(ev), k)
        prob = tm.normalized_probability(nll, pert) if ev.normalized_probability else tm.answer_probability(nll)
        ratios = tm.truth_ratio(para, pert)
        answers = _greedy(plain, tokenizer, prompts, ev.answers, batch_size)
        rouge = float(np.mean([tm.rouge_l(a, r) for a, r in zip(answers, ev.answers, strict=True)]))
        if set_name == "forget":
            forget = dict(probability=float(prob.mean()), rouge_l=rouge, ratios=ratios)
        else:
            utility[f"{set_name}/probability"] = float(prob.mean())
            utility[f"{set_name}/rouge_l"] = rouge
            utility[f"{set_name}/truth_ratio"] = tm.retain_truth_ratio(ratios)
    aucs = _mia_aucs(plain, tokenizer, data.forget, data.protocol.nonmembers, batch_size)
    ratios = forget["ratios"]
    return TofuScores(
        name=name,
        model_utility=tm.model_utility(utility),
        forget_rouge_l=forget["rouge_l"],
        forget_probability=forget["probability"],
        forget_truth_ratio=tm.forget_truth_ratio(ratios),
        mia_auc=aucs["loss"],
        utility=utility,
        mia_aucs=aucs,
        forget_truth_ratios=tuple(float(r) for r in ratios),
        forget_quality=None if retain_model_ratios is None else tm.forget_quality(ratios, retain_model_ratios),
    )
