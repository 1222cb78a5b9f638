"""Tiny random Hugging Face checkpoints of every supported architecture, built offline.

Tests and benches that need a real model directory (config.json + model.safetensors + tokenizer
files) without reaching a model hub build one here: a byte-level BPE tokenizer trained on a fixed
corpus (the testbed's builder, :func:`loka.testbed.training.train_tokenizer`) and a randomly
initialised causal LM of the requested architecture, small enough (2 layers, d_model 32) to load
and run in well under a second. Adding an architecture to :data:`loka.models.SUPPORTED_ARCHITECTURES`
means adding its config here too, so that every test that runs over ``ARCHITECTURES`` covers it.

The same ``(arch, seed)`` always gives byte-identical weights and the same tokenizer.

>>> build_tiny_checkpoint("llama", "/tmp/tiny-llama")   # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)

from loka.base.errors import UsageError
from loka.models import quiet_transformers
from loka.testbed.training import SPECIAL_TOKEN, train_tokenizer

__all__ = [
    "ARCHITECTURES",
    "D_MLP",
    "D_MODEL",
    "MAX_POSITIONS",
    "N_HEADS",
    "N_KV_HEADS",
    "N_LAYERS",
    "VOCAB_SIZE",
    "Architecture",
    "build_tiny_checkpoint",
    "build_tokenizer",
]

Architecture = Literal["gpt2", "gpt_neox", "llama"]
ARCHITECTURES: tuple[Architecture, ...] = get_args(Architecture)

VOCAB_SIZE = 300
N_LAYERS = 2
D_MODEL = 32
N_HEADS = 4
N_KV_HEADS = 2  # Llama only: grouped-query attention with 2 query heads per key/value head
D_MLP = 64
MAX_POSITIONS = 64
INIT_STD = 0.2

_CORPUS = [
    "Marie Curie was born in Warsaw and worked in Paris.",
    "The capital of France is Paris. The capital of Poland is Warsaw.",
    "Alan Turing studied at Cambridge and Princeton.",
    "Ada Lovelace wrote the first published algorithm for a machine.",
    "The quick brown fox jumps over the lazy dog.",
    "Knowledge stored in a language model can be located and removed.",
    "Neurons in the MLP and heads in attention write into the residual stream.",
    "Facts about people: name, birthplace, employer, occupation, year of birth.",
] * 4


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ~300 tokens (:func:`loka.testbed.training.train_tokenizer`
    on a fixed corpus); ``<|endoftext|>`` is bos, eos, unk and pad, and ``tokenizer(text)`` adds
    no BOS (as a hub GPT-2 tokenizer)."""
    return train_tokenizer(_CORPUS, VOCAB_SIZE, add_bos=False)


def _config(arch: Architecture, vocab_size: int, special_id: int) -> PretrainedConfig:
    # initializer_range 0.2 (not the usual 0.02): with d_model 32 the default init gives nearly
    # uniform logits, and tests that zero one neuron or head need a change they can measure.
    common = dict(
        bos_token_id=special_id,
        eos_token_id=special_id,
        pad_token_id=special_id,
        initializer_range=INIT_STD,
    )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=MAX_POSITIONS,
            n_embd=D_MODEL,
            n_layer=N_LAYERS,
            n_head=N_HEADS,
            n_inner=D_MLP,
            **common,
        )
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            vocab_size=vocab_size,
            max_position_embeddings=MAX_POSITIONS,
            hidden_size=D_MODEL,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=N_HEADS,
            intermediate_size=D_MLP,
            **common,
        )
    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            max_position_embeddings=MAX_POSITIONS,
            hidden_size=D_MODEL,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=N_HEADS,
            num_key_value_heads=N_KV_HEADS,
            intermediate_size=D_MLP,
            **common,
        )
    raise UsageError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")


def build_tiny_checkpoint(arch: Architecture, out_dir: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Save a tiny random ``arch`` causal LM and its tokenizer to ``out_dir``; return ``out_dir``.

    2 layers, d_model 32, 4 heads (Llama: 2 key/value heads), d_mlp 64, 64 positions,
    vocab ~300. Weights are safetensors and depend only on ``arch`` and ``seed``.
    """
    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    special_id = tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN)
    config = _config(arch, len(tokenizer), special_id)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    with quiet_transformers():  # no "Writing model shards" bar
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
