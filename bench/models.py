"""Random-weight Hugging Face checkpoints shaped like real models, built offline, for benches.

Scaling benches need the *shapes* of real models (memory and time grow with them), not their
knowledge, and nothing here may reach a model hub. :func:`build_bench_model` writes a randomly
initialised causal LM of one of :data:`BENCH_MODELS` to a cache directory, with a tokenizer, so
that ``loka.load_model(path)`` loads it like any checkpoint:

============  ==========  =======  ======  =====  ======  ===========
name          arch        layers   d_model heads  d_mlp   vocab
============  ==========  =======  ======  =====  ======  ===========
gpt2-small    gpt2        12       768     12     3072    50257
pythia-410m   gpt_neox    24       1024    16     4096    50304
tiny          gpt2        2        32      4      64      ~300 (tests)
============  ==========  =======  ======  =====  ======  ===========

The tokenizer is the small byte-level BPE tokenizer of the tiny test checkpoints
(:func:`loka.testbed.checkpoints.build_tokenizer`, about 300 tokens); the model's vocabulary is
padded to the real size, so the embedding and unembedding have the real shapes while the
tokenizer only ever emits the first few hundred ids. Weights are GPT-2/NeoX's default init
(std 0.02; NeoX as Pythia: rotary on a quarter of each head, parallel residual, untied
unembedding); the same ``(name, seed)`` gives the same weights.

:func:`synthetic_facts` builds a small forget / retain / holdout split of the testbed's synthetic
world (:mod:`loka.testbed.world`); on a random model whether the facts are "known" is irrelevant,
only their shapes (a dozen tokens each) matter.

    python bench/models.py gpt2-small           # build (or find) it and print its directory
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, PretrainedConfig

from loka.data import KnowledgeSet
from loka.models import quiet_transformers
from loka.testbed.checkpoints import build_tiny_checkpoint, build_tokenizer
from loka.testbed.training import SPECIAL_TOKEN
from loka.testbed.world import WorldConfig, generate_world

__all__ = ["BENCH_MODELS", "BenchModel", "Facts", "build_bench_model", "default_cache_dir", "synthetic_facts"]

RECIPE = 1
"""Bumped when what :func:`build_bench_model` writes changes, so that cached builds are rebuilt."""


@dataclass(frozen=True)
class BenchModel:
    """The shape of a bench model."""

    arch: str
    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    vocab_size: int
    max_positions: int = 2048

    def config(self, special_id: int) -> PretrainedConfig:
        """The HF config of this shape, with ``special_id`` as bos, eos and pad."""
        ids = dict(bos_token_id=special_id, eos_token_id=special_id, pad_token_id=special_id)
        if self.arch == "gpt2":
            return GPT2Config(
                vocab_size=self.vocab_size,
                n_positions=self.max_positions,
                n_embd=self.d_model,
                n_layer=self.n_layers,
                n_head=self.n_heads,
                n_inner=self.d_mlp,
                **ids,
            )
        if self.arch == "gpt_neox":
            return GPTNeoXConfig(
                vocab_size=self.vocab_size,
                max_position_embeddings=self.max_positions,
                hidden_size=self.d_model,
                num_hidden_layers=self.n_layers,
                num_attention_heads=self.n_heads,
                intermediate_size=self.d_mlp,
                use_parallel_residual=True,
                tie_word_embeddings=False,
                **ids,
            )
        raise ValueError(f"unknown bench architecture {self.arch!r}; expected 'gpt2' or 'gpt_neox'")

    @property
    def n_params(self) -> int:
        """Parameters of the HF model (tied embeddings counted once)."""
        with torch.device("meta"), quiet_transformers():
            model = AutoModelForCausalLM.from_config(self.config(0))
        return sum(p.numel() for p in model.parameters())


BENCH_MODELS: dict[str, BenchModel] = {
    "gpt2-small": BenchModel("gpt2", 12, 768, 12, 3072, 50257, max_positions=1024),
    "pythia-410m": BenchModel("gpt_neox", 24, 1024, 16, 4096, 50304),
}
"""Random stand-ins for GPT-2 small and Pythia-410m (``"tiny"`` is also accepted by the builder)."""

NAMES = (*BENCH_MODELS, "tiny")


def default_cache_dir() -> Path:
    """``$LOKA_BENCH_CACHE``, else ``<tmp>/loka-bench-models``."""
    return Path(os.environ.get("LOKA_BENCH_CACHE") or Path(tempfile.gettempdir()) / "loka-bench-models")


def _complete(path: Path) -> bool:
    return (
        (path / "config.json").is_file()
        and (path / "model.safetensors").is_file()
        and (path / "tokenizer.json").is_file()
    )


def build_bench_model(name: str, cache_dir: str | os.PathLike[str] | None = None, *, seed: int = 0) -> Path:
    """The directory of random model ``name`` (one of :data:`NAMES`), built on first use.

    The build goes to ``cache_dir`` (default :func:`default_cache_dir`) under a name that holds
    the shape, the seed and :data:`RECIPE`; a complete build found there is reused.
    """
    if name not in NAMES:
        raise ValueError(f"unknown bench model {name!r}; choose one of {', '.join(NAMES)}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = root / f"{name}-seed{seed}-r{RECIPE}"
    if _complete(out):
        return out
    if name == "tiny":
        return build_tiny_checkpoint("gpt2", out, seed=seed)
    spec = BENCH_MODELS[name]
    tokenizer = build_tokenizer()
    config = spec.config(tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN))
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=_mkdir(root)))
    with torch.random.fork_rng(devices=[]), quiet_transformers():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "bench_model.json").write_text(json.dumps({"name": name, "seed": seed, "recipe": RECIPE, **asdict(spec)}))
    del model
    if out.exists():  # a leftover that lacks some files
        shutil.rmtree(out)
    tmp.replace(out)
    return out


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class Facts:
    """A small synthetic split: forget, retain and holdout (people the model never saw)."""

    forget: KnowledgeSet
    retain: KnowledgeSet
    holdout: KnowledgeSet


def synthetic_facts(n_forget: int = 2, n_retain: int = 4, n_holdout: int = 2, *, seed: int = 0) -> Facts:
    """Facts about ``n_forget`` / ``n_retain`` / ``n_holdout`` people of the testbed's synthetic
    world (two relations each, birthplace and employer), as KnowledgeSets."""
    config = WorldConfig(
        n_forget=n_forget,
        n_retain=n_retain,
        n_holdout=n_holdout,
        relations=("birthplace", "employer"),
        passages=(0, 0, 0),
        seed=seed,
    )
    world = generate_world(config)
    return Facts(world.facts("forget"), world.facts("retain"), world.facts("holdout"))


def main() -> None:
    parser = argparse.ArgumentParser(description="Build (or find) a random bench model and print its directory.")
    parser.add_argument("name", choices=NAMES)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build_bench_model(args.name, args.cache_dir, seed=args.seed))


if __name__ == "__main__":
    main()
