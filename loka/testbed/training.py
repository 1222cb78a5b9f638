"""The testbed's training recipe: a byte-level BPE tokenizer and a small GPT-2 trained from scratch.

The recipe is deliberately plain (AdamW, linear warm-up then cosine decay, next-token loss on
every token) so that the original model and the oracle differ only in their data. Runs are
deterministic for a seed on a given machine: the data order comes from a seeded generator and
the model from ``torch.manual_seed``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from loka.base.errors import UsageError

__all__ = ["ModelConfig", "TrainConfig", "TrainLog", "count_steps", "train_tokenizer", "train_model"]

logger = logging.getLogger(__name__)
SPECIAL_TOKEN = "<|endoftext|>"


@dataclass(frozen=True)
class ModelConfig:
    """A GPT-2-style model: ``n_layers`` blocks of width ``d_model`` with ``d_mlp`` neurons each."""

    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    vocab_size: int = 768
    n_ctx: int = 128


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40
    batch_size: int = 128
    lr: float = 3e-3
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    passage_repeats: int = 4  # each passage is seen this many times per epoch
    # Next-token loss on every token of a fact, or on its answer only. "all" learns far faster: on
    # the default world, "all" reached 0.84 retain accuracy after 15 epochs (batch 128), "answer"
    # 0.15 after 12 (batch 64); predicting a name's later tokens builds the features recall reads.
    fact_loss: Literal["answer", "all"] = "all"
    seed: int = 0


@dataclass(frozen=True)
class TrainLog:
    steps: int
    seconds: float
    epoch_losses: tuple[float, ...]


def train_tokenizer(texts: list[str], vocab_size: int, *, add_bos: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2's scheme) trained offline on ``texts``; ``<|endoftext|>``
    is its BOS, EOS, UNK and padding token. The one BPE builder of the project: the testbed, the
    TOFU benchmark and the tiny test checkpoints (:mod:`loka.testbed.checkpoints`) all use it.

    With ``add_bos`` (the default) it adds BOS itself (``tokenizer(text)`` gives ``[BOS] + tokens``),
    because the models are trained on ``[BOS] + text``: a plain ``AutoTokenizer`` +
    ``AutoModelForCausalLM`` pipeline then reads text exactly as training did. loka's own encoders
    pass ``add_special_tokens=False`` and place BOS themselves, so it is never doubled.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    if add_bos:
        bos_id = tokenizer.token_to_id(SPECIAL_TOKEN)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{SPECIAL_TOKEN} $A", pair=f"{SPECIAL_TOKEN} $A $B", special_tokens=[(SPECIAL_TOKEN, bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        unk_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
    )


def count_steps(n_facts: int, n_passages: int, train_config: TrainConfig) -> int:
    """How many optimizer steps :func:`train_model` takes on ``n_facts`` facts and ``n_passages``
    passages (facts in batches of ``batch_size``, passages, repeated, in batches a quarter as big)."""
    passage_batch = max(1, train_config.batch_size // 4)
    n_long = n_passages * train_config.passage_repeats
    return (-(-n_facts // train_config.batch_size) + -(-n_long // passage_batch)) * train_config.epochs


def _batches(
    sequences: list[tuple[list[int], int]], batch_size: int, pad_id: int, generator: torch.Generator
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffle (ids, n_context) pairs, then pad each batch to its own longest sequence.

    Labels are -100 on padding and on the first ``n_context`` tokens (no loss there).
    """
    order = torch.randperm(len(sequences), generator=generator).tolist()
    out = []
    for start in range(0, len(order), batch_size):
        chunk = [sequences[i] for i in order[start : start + batch_size]]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        for row, (seq, n_context) in enumerate(chunk):
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, n_context : len(seq)] = torch.tensor(seq[n_context:])
        out.append((ids, labels))
    return out


def train_model(
    facts: list[tuple[str, str]],
    passages: list[str],
    tokenizer: PreTrainedTokenizerFast,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    progress: bool = True,
    desc: str = "training",
    on_step: Callable[[int], None] | None = None,
) -> tuple[GPT2LMHeadModel, TrainLog]:
    """Train a GPT-2 from scratch on ``facts`` ((prompt, answer) pairs, read as BOS + prompt +
    answer + EOS) and ``passages`` (BOS + text + EOS, loss on every token). Prompt and answer are
    tokenized separately; with this byte-level tokenizer that is the token sequence of the joined
    text, which :meth:`loka.KnowledgeSet.encode` reads at evaluation time (it only moves a lone
    leading space token of an answer to the prompt's side of the split).
    Short facts and long passages are batched separately. Runs on one CPU thread, so that the
    weights depend on the seed alone and not on the machine's core count.

    ``progress`` shows a tqdm bar named ``desc``; ``on_step(done)`` is called after every
    optimizer step instead (or as well), with the number of steps done so far (of
    :func:`count_steps`): a build that trains in worker processes reports through it.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(
            facts, passages, tokenizer, model_config, train_config, progress=progress, desc=desc, on_step=on_step
        )
    finally:
        torch.set_num_threads(threads)


def _train(
    facts: list[tuple[str, str]],
    passages: list[str],
    tokenizer: PreTrainedTokenizerFast,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    progress: bool,
    desc: str,
    on_step: Callable[[int], None] | None,
) -> tuple[GPT2LMHeadModel, TrainLog]:
    torch.manual_seed(train_config.seed)
    generator = torch.Generator().manual_seed(train_config.seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=model_config.n_ctx,
        n_embd=model_config.d_model,
        n_layer=model_config.n_layers,
        n_head=model_config.n_heads,
        n_inner=model_config.d_mlp,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id

    def tokens(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    short = []
    for prompt, answer in facts:
        context = [bos, *tokens(prompt)]
        n_context = len(context) if train_config.fact_loss == "answer" else 0
        short.append(([*context, *tokens(answer), eos], n_context))
    long = [([bos, *tokens(p), eos], 0) for p in passages] * train_config.passage_repeats
    longest = max((len(ids) for ids, _ in short + long), default=0)
    if longest > model_config.n_ctx:
        raise UsageError(f"a training text is {longest} tokens, longer than n_ctx={model_config.n_ctx}")

    def epoch_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
        batches = _batches(short, train_config.batch_size, tokenizer.pad_token_id, generator)
        if long:
            batches += _batches(long, passage_batch, tokenizer.pad_token_id, generator)
        order = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in order]

    passage_batch = max(1, train_config.batch_size // 4)
    total = count_steps(len(short), len(passages), train_config)
    warmup = max(1, int(train_config.warmup_fraction * total))
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "ln" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": train_config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=train_config.lr,
        betas=(0.9, 0.98),
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total))),
    )
    model.train()
    start = time.perf_counter()
    losses = []
    done = 0
    with tqdm(total=total, disable=not progress, desc=desc, leave=False) as bar:
        for _ in range(train_config.epochs):
            running, count = 0.0, 0
            for ids, labels in epoch_batches():
                loss = model(input_ids=ids, labels=labels).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                running += loss.item()
                count += 1
                done += 1
                bar.update()
                if on_step is not None:
                    on_step(done)
            losses.append(running / count)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            logger.debug("%s epoch %d loss %.4f", desc, len(losses), losses[-1])
    model.eval()
    return model, TrainLog(total, time.perf_counter() - start, tuple(losses))
