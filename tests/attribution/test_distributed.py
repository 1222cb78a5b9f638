"""Data parallel over facts (loka.base.distributed): two gloo ranks on the CPU return what one process does.

The test launches this file as a script under ``python -m torch.distributed.run --nproc_per_node 2``
(one torch thread per rank). Every rank runs :func:`attribution.attribute` (grad x act and exact
patching, neurons and heads), :func:`attribution.patch_components` and
:func:`loka.scoring.metrics.score_facts` on the tiny testbed; each rank writes what it got
(safetensors), and the test compares both ranks with the same calls made here, without a process
group, within 1e-6. The batch sizes are small so that every rank runs several batches and the
ranks get unequal shares.
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

import attribution
from attribution.corruption import Corruption
from loka.base import distributed
from loka.base.errors import UsageError
from loka.data import KnowledgeSet
from loka.scoring.metrics import score_facts
from loka.testbed import Testbed
from tests.ranks import run_all, torchrun

TOLERANCE = 1e-6
COMPONENTS = ("L0H1", "L1H3", ("neuron", 0, 5), ("neuron", 1, 200))


def facts(testbed: Testbed) -> tuple[KnowledgeSet, KnowledgeSet]:
    """The facts attributed (7, so two ranks split 4 batches of 2 unevenly) and the facts scored."""
    forget = KnowledgeSet(testbed.forget.facts[:7], name="forget[:7]")
    return forget, testbed.forget + testbed.retain


def results(model: Any, testbed: Testbed) -> dict[str, torch.Tensor]:
    """Everything compared, as named tensors (the same calls on every rank and in the test)."""
    forget, scored = facts(testbed)
    out: dict[str, torch.Tensor] = {}
    runs = {
        "gxa": dict(method="grad_x_act"),
        "gxa_zero": dict(method="grad_x_act", baseline="zero"),
        "exact_zero": dict(method="activation_patching", baseline="zero"),
        "exact": dict(method="activation_patching", corruption=Corruption(samples=2)),
    }
    for name, options in runs.items():
        scores = attribution.attribute(model, forget, batch_size=2, progress=False, **options)
        out[f"{name}.neurons"] = scores.neurons
        out[f"{name}.heads"] = scores.heads
        out[f"{name}.base_metric"] = torch.tensor([scores.metadata.base_metric])
        out[f"{name}.clean_metric"] = torch.tensor([scores.metadata.clean_metric])
    # One batch only: rank 1 has no work and still returns the full result.
    one_batch = attribution.attribute(model, forget, batch_size=16, progress=False, components="heads")
    out["one_batch.heads"] = one_batch.heads
    out["one_batch.score.log_prob"] = score_facts(model, forget, batch_size=16).log_prob
    effects = attribution.patch_components(model, forget, COMPONENTS, batch_size=2)
    out["patch.per_fact"] = effects.per_fact
    out["patch.base_metric"] = effects.base_metric
    fact_scores = score_facts(model, scored, batch_size=32)
    for field in ("log_prob", "n_target_tokens", "n_correct_tokens", "first_token_correct", "exact_match"):
        out[f"score.{field}"] = getattr(fact_scores, field).float()
    return out


def _worker(out_dir: Path, cache_dir: str) -> None:
    """One rank: the results, and what the helpers say on this rank, written to ``out_dir``."""
    import torch.distributed as dist

    from loka import testbed
    from loka.models import load_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    bed = testbed.load("tiny", seed=int(os.environ.get("LOKA_TEST_SEED", "0")), cache_dir=cache_dir, progress=False)
    model = load_model(bed.model_dir)
    tensors = results(model, bed)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_dir / f"rank{rank}.safetensors"))

    # A failure on one rank reaches every rank (no rank is left waiting in a collective).
    caught = None
    try:
        with distributed.agreed():
            if rank == 1:
                raise UsageError("bad input")
    except UsageError as error:
        caught = str(error)
    # Inside local(), a rank works alone: no collective, only its own view.
    with distributed.local():
        alone = [distributed.rank(), distributed.world_size(), len(distributed.shard(10))]
    info = {
        "rank": distributed.rank(),
        "world_size": distributed.world_size(),
        "shard": list(distributed.shard(7)),
        "caught": caught,
        "alone": alone,
        "gathered": distributed.all_gather_object(rank * 10),
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(info))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory, testbed_cache: Path, tiny_testbed: Testbed) -> Path:
    """Run this file under torchrun with two gloo ranks; the directory they wrote to."""
    out = tmp_path_factory.mktemp("distributed")
    run_all([torchrun(__file__, str(out))], testbed_cache, timeout=300)
    return out


def test_two_ranks_return_the_one_process_result(two_ranks: Path, model: Any, tiny_testbed: Testbed):
    expected = results(model, tiny_testbed)
    for rank in (0, 1):
        got = load_file(str(two_ranks / f"rank{rank}.safetensors"))
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            assert got[name].shape == value.shape, name
            assert torch.allclose(got[name], value, rtol=0, atol=TOLERANCE), (
                name,
                (got[name] - value).abs().max().item(),
            )


def test_helpers_under_two_ranks(two_ranks: Path):
    info = [json.loads((two_ranks / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [i["rank"] for i in info] == [0, 1]
    assert [i["world_size"] for i in info] == [2, 2]
    assert info[0]["shard"] + info[1]["shard"] == list(range(7))  # contiguous blocks, in rank order
    assert [i["caught"] for i in info] == ["bad input (on rank 1)", "bad input"]  # both ranks raise
    assert [i["alone"] for i in info] == [[0, 1, 10], [0, 1, 10]]
    assert [i["gathered"] for i in info] == [[0, 10], [0, 10]]


def test_helpers_without_a_process_group():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.shard([1, 2, 3]) == range(3)
    value = torch.arange(6.0).view(2, 3)
    assert distributed.all_reduce_sum(value) is value
    assert distributed.all_gather_object("x") == ["x"]
    assert distributed.merge_rows(value, [0, 1], 2) is value
    placed = distributed.merge_rows(value, [2, 0], 4)
    assert torch.equal(placed, torch.tensor([[3.0, 4, 5], [0, 0, 0], [0, 1, 2], [0, 0, 0]]))
    flags = distributed.merge_rows(torch.tensor([True, False]), [1, 2], 3)
    assert flags.dtype == torch.bool and flags.tolist() == [False, True, False]
    with pytest.raises(UsageError, match="shard takes"):
        distributed.shard(-1)


if __name__ == "__main__":  # a rank, launched by the fixture through torch.distributed.run
    _worker(Path(sys.argv[1]), os.environ["LOKA_DISTRIBUTED_CACHE"])
