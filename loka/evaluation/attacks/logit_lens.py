"""The logit lens: does an intermediate layer still predict the "forgotten" answer?

An edit confined to the model's last layers (the final MLP, the unembedding) can stop the output
from naming an answer that earlier layers have already computed. The logit lens (nostalgebraist
2020, "interpreting GPT: the logit lens") reads each intermediate residual stream as if it were the
last one: push it through the model's final layer norm and unembedding, and look at the top-1
token. (The tuned lens of Belrose et al. 2023, "Eliciting latent predictions from transformers
with the tuned lens", learns a per-layer translator first; that is out of scope here.)

For every fact, at the **last prompt token** (the position that predicts the answer), the residual
stream after each block ``l`` (TL's ``blocks.{l}.hook_resid_post``) is decoded as

    logits_l = W_U · LN_final(resid_post_l) + b_U

and the fact counts as read at layer ``l`` when the top-1 token of ``logits_l`` is the answer's
first token. After the last block this is exactly the model's own first-token prediction.
``per_layer`` is the share of facts read at each layer and ``best`` the highest share over
layers (``best_layer`` where it is reached): an intermediate layer that names the forget answers of
a model whose output no longer does is knowledge suppressed on the way out, not removed. The
oracle (a model that never saw the forget people) is the reference, and
:func:`logit_lens_informative` says whether the lens tells the original from the oracle at all;
where it does not, report "uninformative".

The residual streams come from Hugging Face's ``output_hidden_states`` (the input of every block,
then the normalised output of the last one) and a hook on the final norm's input; the final norm
and unembedding are found by structure (the base model's one direct child with a ``[d_model]``
weight that is not an embedding, and ``get_output_embeddings()``), so GPT-2, GPT-NeoX and Llama
all work, bridged or not. Under a process group the batches are shared out over the ranks
(:mod:`loka.base.distributed`) and every rank returns the whole result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from loka.base.distributed import agreed, gather_rows, shard
from loka.base.errors import UsageError
from loka.data.knowledge import KnowledgeSet
from loka.evaluation.intervals import paired_gap
from loka.models import hf_model, input_device

__all__ = ["LogitLens", "logit_lens", "logit_lens_gap", "logit_lens_informative"]


@dataclass(frozen=True)
class LogitLens:
    """The logit lens read on a set of facts (in its order).

    ``correct[l][i]`` is whether block ``l``'s residual stream, decoded through the final norm and
    unembedding at fact ``i``'s last prompt token, puts the answer's first token top-1;
    ``answer_log_prob[l][i]`` is that token's log-probability there and ``predicted[l][i]`` the
    top-1 token id (what block ``l`` says instead). ``per_layer[l]`` is the
    share of facts read at block ``l``; the last entry is the model's own first-token accuracy.
    ``fact_ids`` / ``people`` name each fact and its person (subject, or the fact id)."""

    per_layer: tuple[float, ...]
    correct: tuple[tuple[bool, ...], ...]
    answer_log_prob: tuple[tuple[float, ...], ...]
    predicted: tuple[tuple[int, ...], ...] = ()
    fact_ids: tuple[str, ...] = ()
    people: tuple[str, ...] = ()

    @property
    def n_layers(self) -> int:
        return len(self.per_layer)

    @property
    def best_layer(self) -> int:
        """The block whose readout names the most answers (the earliest such block on a tie)."""
        return int(np.argmax(self.per_layer))

    @property
    def best(self) -> float:
        """The highest share of facts read at any block."""
        return self.per_layer[self.best_layer]

    @property
    def final(self) -> float:
        """The share read after the last block: the model's own first-token accuracy."""
        return self.per_layer[-1]

    @property
    def best_correct(self) -> tuple[bool, ...]:
        """Per fact: read at :attr:`best_layer`."""
        return self.correct[self.best_layer]

    @property
    def mean_answer_log_prob(self) -> tuple[float, ...]:
        """Per block, the mean log-probability of the answer's first token."""
        return tuple(float(np.mean(row)) for row in self.answer_log_prob)

    def plot(self, oracle: LogitLens | None = None, *, title: str = "logit lens: forget answers read per layer") -> Any:
        """A plotly line figure: the share of facts read after each block (the oracle's beside it)."""
        import plotly.graph_objects as go

        figure = go.Figure()
        for name, lens in (("model", self), ("oracle", oracle)):
            if lens is not None:
                figure.add_trace(go.Scatter(x=list(range(lens.n_layers)), y=list(lens.per_layer),
                                            mode="lines+markers", name=name))  # fmt: skip
        figure.update_layout(title=title, xaxis_title="block (residual stream after it)",
                             yaxis_title="answer's first token top-1", yaxis_range=[0, 1.05])  # fmt: skip
        return figure


def _unwrap(module: nn.Module) -> nn.Module:
    while isinstance(getattr(module, "original_component", None), nn.Module):
        module = module.original_component
    return module


def _final_norm(hf: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The final norm as it sits in the module tree (to hook its input) and unwrapped (to call)."""
    base = hf.base_model
    d_model = int(hf.config.hidden_size)
    found = []
    for child in base.children():
        inner = _unwrap(child)
        weight = getattr(inner, "weight", None)
        if isinstance(inner, nn.Embedding) or not isinstance(weight, Tensor):
            continue
        if weight.ndim == 1 and weight.shape[0] == d_model:
            found.append((child, inner))
    if len(found) != 1:
        raise UsageError(
            f"the logit lens needs the final norm of {type(hf).__name__}: a single [d_model] norm among the base "
            f"model's direct children, found {len(found)}"
        )
    return found[0]


@torch.no_grad()
def _lens_logits(
    hf: nn.Module, batch: Any, norm: tuple[nn.Module, nn.Module], unembed: nn.Module
) -> Float[Tensor, "layer batch d_vocab"]:
    """Logit-lens logits of every block's residual stream at each fact's last prompt token."""
    in_tree, ln_final = norm
    captured: list[Tensor] = []
    handle = in_tree.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        out = hf(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True, use_cache=False
        )
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"the final norm ran {len(captured)} times in one forward pass; expected once")
    rows = torch.arange(len(batch), device=batch.input_ids.device)
    # hidden_states: the input of each block (resid_pre), then the normalised output of the last
    resid = [h[rows, batch.answer_positions] for h in out.hidden_states[1:-1]]
    resid.append(captured[0][rows, batch.answer_positions])
    resid_post: Float[Tensor, "layer batch d_model"] = torch.stack(resid)
    return unembed(ln_final(resid_post)).float()


def logit_lens(model: Any, tokenizer: Any, facts: KnowledgeSet, *, batch_size: int = 64) -> LogitLens:
    """Read ``facts`` through the logit lens of ``model`` (a TransformerBridge or an HF causal LM;
    ``tokenizer`` may be None for a bridge): see the module docstring."""
    if not isinstance(facts, KnowledgeSet) or len(facts) == 0:
        raise UsageError(f"logit_lens: facts must be a non-empty KnowledgeSet, got {type(facts).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"logit_lens: batch_size must be a positive integer, got {batch_size!r}")
    hf = hf_model(model)
    encoder = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if encoder is None:
        raise UsageError("logit_lens: this model has no tokenizer attached; pass tokenizer=...")
    norm = _final_norm(hf)
    output = hf.get_output_embeddings()
    if output is None:
        raise UsageError(f"the logit lens needs an unembedding; {type(hf).__name__} has no output embeddings")
    unembed = _unwrap(output)
    device = input_device(hf)
    was_training = hf.training
    hf.eval()
    top: list[Int[Tensor, "layer batch"]] = []
    log_probs: list[Float[Tensor, "layer batch"]] = []
    answers: list[Int[Tensor, " batch"]] = []
    batches = list(facts.batches(encoder, batch_size))
    parts = []
    try:
        with agreed():
            for index in shard(batches):  # data parallel: this rank's block of the batches
                batch = batches[index].to(device)
                lens = _lens_logits(hf, batch, norm, unembed)  # [layer, batch, d_vocab]
                answer = batch.target_ids[:, 0]  # the answer's first token
                picked = lens.log_softmax(-1).gather(-1, answer.expand(lens.shape[0], -1).unsqueeze(-1)).squeeze(-1)
                parts.append((lens.argmax(-1).cpu(), answer.cpu(), picked.cpu()))
    finally:
        hf.train(was_training)
    for predicted_part, answer, picked in gather_rows(parts):  # every rank's, in order
        top.append(predicted_part)
        answers.append(answer)
        log_probs.append(picked)
    predicted, lp = torch.cat(top, dim=1), torch.cat(log_probs, dim=1)
    hits: Bool[Tensor, "layer fact"] = predicted == torch.cat(answers)
    return LogitLens(
        per_layer=tuple(hits.float().mean(1).tolist()),
        correct=tuple(tuple(bool(c) for c in row) for row in hits),
        answer_log_prob=tuple(tuple(float(v) for v in row) for row in lp),
        predicted=tuple(tuple(int(t) for t in row) for row in predicted),
        fact_ids=facts.ids,
        people=tuple(f.subject if f.subject is not None else f.id for f in facts),
    )


def logit_lens_gap(
    original: LogitLens, oracle: LogitLens, *, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """How many more forget facts the original's lens reads than the oracle's, each at its own best
    layer: the difference and its lower confidence bound (a paired bootstrap over people,
    :func:`loka.evaluation.intervals.paired_gap`)."""
    if not original.fact_ids or original.fact_ids != oracle.fact_ids:
        raise UsageError("the two logit lenses must read the same forget facts (run both on one forget set)")
    return paired_gap(original.people, original.best_correct, oracle.best_correct, confidence=confidence, seed=seed)


def logit_lens_informative(original: LogitLens, oracle: LogitLens, *, confidence: float = 0.95, seed: int = 0) -> bool:
    """Whether the logit lens tells the original model from the oracle: the original's best layer
    reads more forget answers than the oracle's, with the lower bound of :func:`logit_lens_gap`
    above zero. When False, a lens reading of an edited model means nothing: report it as
    uninformative."""
    gap, low = logit_lens_gap(original, oracle, confidence=confidence, seed=seed)
    return gap > 0 and low > 0
