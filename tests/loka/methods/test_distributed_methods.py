"""Data-parallel unlearning and evaluation: two gloo ranks on the CPU train and score what one process does.

The test runs this file as a script twice, at the same time: once under
``python -m torch.distributed.run --nproc_per_node 2`` (two ranks, one torch thread each) and once
as a plain process (no process group, one thread). Each run unlearns the tiny testbed's forget
people with every training method for 10 steps (gradient ascent, NPO, task vector, RMU, LOKA's
masked fine-tune: plain, and with its default erasure options: subject erasure and the
adversary term) and evaluates the original model; it writes the final weights (safetensors) and
the evaluation (JSON). Under a process group each rank trains on its share of every batch and
the gradients are summed (:func:`loka.base.distributed.all_reduce_gradients`), so:

- both ranks end with the same weights, bit for bit;
- the weights equal the one-process weights up to the order of float additions (within 1e-5),
  except the attention *key* biases: their gradient is zero in exact arithmetic (softmax does not
  see a shift shared by every key), so it is pure rounding, which Adam scales up to steps of
  ``lr``; they only have to stay within ``2 * lr * steps`` (measured: up to 1e-4 after 10 steps);
- every logged loss (the global batch's: the ranks' parts added) equals the one-process one
  within 1e-4 relative, which checks each term's normalisation by the global row or token
  count;
- the evaluation is equal: every number, on both ranks and in one process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from loka.testbed import Testbed
from tests.ranks import run_all, torchrun

TOLERANCE = 1e-5
STEPS = 10
DEFAULT_LRS = {"gradient_ascent": 5e-4, "npo": 2e-4, "task_vector": 1e-3, "rmu": 2e-2, "loka": 1e-2}
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "gradient_ascent": ("gradient_ascent", {}),
    "npo": ("npo", {}),
    "task_vector": ("task_vector", {"scales": (1.0,), "lr": 3e-4}),  # rounding x Adam grows with lr and scale
    "rmu": ("rmu", {"layer": 1, "steering_scales": (2.5,)}),
    "loka": ("loka", {"edit": "finetune", "erase": "answer", "adversary_weight": 0.0}),
    "loka_default": ("loka", {}),  # subject erasure and the adversary term (the defaults here)
}


def _worker(out_dir: Path, cache_dir: str) -> None:
    """One run (a rank, or the single process): every method's weights and the evaluation."""
    import loka
    from loka import testbed
    from loka.models import hf_state_dict, load_model
    from loka.protocol import Protocol

    torch.set_num_threads(1)
    name = "single"
    if "WORLD_SIZE" in os.environ:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        name = f"rank{dist.get_rank()}"
    bed = testbed.load("tiny", seed=int(os.environ.get("LOKA_TEST_SEED", "0")), cache_dir=cache_dir, progress=False)
    protocol = Protocol.from_testbed(bed)
    model = load_model(bed.model_dir)
    weights: dict[str, torch.Tensor] = {}
    configs: dict[str, Any] = {}
    for run, (method, options) in RUNS.items():
        result = loka.unlearn(
            model, protocol.forget, protocol.retain_train, method=method, validation=protocol.retain_validation,
            reference=protocol.reference, augment=protocol.augment, max_steps=STEPS, check_every=5, progress=False,
            **options,
        )  # fmt: skip
        weights.update({f"{run}/{k}": v.detach().clone().contiguous() for k, v in hf_state_dict(result.model).items()})
        configs[run] = {"erase": result.config.get("erase"), "adversary_weight": result.config.get("adversary_weight"),
                        "steps": result.compute.steps if result.compute else None,
                        "forward_tokens": result.compute.forward_tokens if result.compute else None,
                        "log": [dict(entry) for entry in result.log]}  # fmt: skip
    save_file(weights, str(out_dir / f"{name}.safetensors"))
    evaluation = loka.evaluate(model, protocol=protocol, quantize=False)
    numbers = dict(evaluation.rows())
    numbers.update({f"mia.{k}": v for k, v in evaluation.mia_aucs.items()})
    details = {k: list(v[1]) for k, v in evaluation.details.items()}
    (out_dir / f"{name}.json").write_text(json.dumps({"numbers": numbers, "details": details, "configs": configs}))
    if name != "single":
        import torch.distributed as dist

        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, testbed_cache: Path, tiny_testbed: Testbed) -> Path:
    """Two ranks under torchrun and one plain process, side by side; the directory they wrote to."""
    out = tmp_path_factory.mktemp("distributed_methods")
    run_all([torchrun(__file__, str(out)), [sys.executable, __file__, str(out)]], testbed_cache)
    return out


def test_both_ranks_train_the_same_weights(runs: Path):
    ranks = [load_file(str(runs / f"rank{r}.safetensors")) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key


def _key_bias(name: str, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A GPT-2 ``c_attn.bias`` split into (query and value biases, key bias); other weights whole."""
    if not name.endswith("attn.c_attn.bias"):
        return value, None
    n = value.numel() // 3
    return torch.cat([value[:n], value[2 * n :]]), value[n : 2 * n]


def test_two_ranks_train_what_one_process_does(runs: Path):
    single = load_file(str(runs / "single.safetensors"))
    sharded = load_file(str(runs / "rank0.safetensors"))
    assert single.keys() == sharded.keys()
    configs = [json.loads((runs / f"{n}.json").read_text())["configs"] for n in ("single", "rank0", "rank1")]
    for run, (method, options) in RUNS.items():
        keys = [k for k in single if k.startswith(f"{run}/")]
        worst = worst_key = 0.0
        for key in keys:
            (a, a_key), (b, b_key) = _key_bias(key, single[key]), _key_bias(key, sharded[key])
            worst = max(worst, (a - b).abs().max().item())
            if a_key is not None:
                worst_key = max(worst_key, (a_key - b_key).abs().max().item())
        assert worst <= TOLERANCE, (run, worst)
        lr = options.get("lr", DEFAULT_LRS[method])
        assert worst_key <= 2 * lr * STEPS, (run, worst_key)
        if run != "gradient_ascent":  # the runs differ: the comparison is not vacuous
            assert any(not torch.equal(single[k], single[k.replace(run, "gradient_ascent", 1)]) for k in keys)
        logs = [c[run].pop("log") for c in configs]
        assert logs[1] == logs[2], run  # the ranks log the same global losses
        assert [e.keys() for e in logs[0]] == [e.keys() for e in logs[1]], run
        for one, two in zip(logs[0], logs[1], strict=True):
            for name, value in one.items():
                assert two[name] == pytest.approx(value, rel=1e-4, abs=1e-6), (run, name, value, two[name])
    assert configs[1] == configs[2]  # tokens summed over the ranks: the same on both
    for config in configs:
        for run in config.values():
            run.pop("forward_tokens")
    assert configs[0] == configs[1]  # steps and the options each method resolved
    assert configs[0]["loka_default"]["erase"] == "subject" and configs[0]["loka_default"]["adversary_weight"] > 0
    assert all(c["steps"] == STEPS for c in configs[0].values())


def test_two_ranks_evaluate_what_one_process_does(runs: Path):
    single, *ranks = (json.loads((runs / f"{n}.json").read_text()) for n in ("single", "rank0", "rank1"))
    for got in ranks:
        assert got["numbers"] == single["numbers"]
        assert got["details"] == single["details"]
    for name in ("forget accuracy", "retain accuracy", "mia.loss", "mia.zlib", "mia.min_k", "relearn: after",
                 "probe forget accuracy"):  # fmt: skip
        assert name in single["numbers"], name


if __name__ == "__main__":  # a rank (under torch.distributed.run) or the one-process reference
    _worker(Path(sys.argv[1]), os.environ["LOKA_DISTRIBUTED_CACHE"])
