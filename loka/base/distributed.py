"""Data parallel over facts: what every sharded loop shares under ``torch.distributed``.

Launched with ``torchrun --nproc_per_node N`` (and ``torch.distributed.init_process_group``
called by the script), the functions that walk facts (:func:`attribution.attribute`,
:func:`attribution.patch_components`, :func:`loka.scoring.metrics.score_facts`) split their batches over
the ranks and combine the results so that **every rank returns the same full result**, equal to
the one-process result within float rounding:

- the facts are batched exactly as in one process, and rank ``r`` runs a contiguous block of
  those batches (:func:`shard`), so every fact is computed in the same batch, with the same
  padding, as without a process group;
- sums over facts are accumulated in float64 and combined with :func:`all_reduce_sum`, which
  gathers every rank's partial sum and adds them in rank order (a fixed order, the same on every
  rank, whatever the backend's reduction algorithm);
- per-fact outputs are put back into the original order with :func:`merge_rows` (each row comes
  from exactly one rank, so the merge is exact).

Without a process group, or with a world size of 1, every helper is the identity: the code paths
are the same, with nothing to exchange. The same code runs on NCCL (GPU) and gloo (CPU):
collectives use tensors on the backend's device (:func:`device`).

Training is data parallel the way DDP is: every rank draws the same global batch (the same
generator, the same seed), computes the loss on its contiguous share of the rows (:func:`shard`)
as its local *sum* divided by the *global* count (rows or tokens of the whole batch), so that the
ranks' gradients add up to the full batch's; :func:`all_reduce_gradients` adds them after
``backward``, and every rank then takes the same optimizer step.

Every rank must call a sharded function, with the same arguments: it is a collective. To run one
on a single rank (e.g. an evaluation on rank 0 only), wrap the call in :func:`local`. A rank that
raises inside a sharded loop would leave the others waiting in the next collective; loops are
wrapped in :func:`agreed`, which raises on every rank when any rank raised.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from loka.base.errors import UsageError

__all__ = [
    "active",
    "rank",
    "world_size",
    "is_main",
    "device",
    "shard",
    "all_reduce_sum",
    "all_gather_object",
    "merge_rows",
    "gather_rows",
    "all_reduce_gradients",
    "agreed",
    "local",
    "RankFailed",
]

_state = threading.local()


class RankFailed(RuntimeError):
    """Another rank raised inside a sharded loop; this rank stops with it (the message names the
    rank and its error)."""


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def active() -> bool:
    """Whether work is sharded here: a process group with more than one rank, outside :func:`local`."""
    return not getattr(_state, "local", False) and _initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group, or inside :func:`local`)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """The number of ranks sharing the work (1 without a process group, or inside :func:`local`)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this is rank 0: the rank that shows progress bars and writes files."""
    return (dist.get_rank() if _initialized() else 0) == 0


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Run the sharded functions called inside on this rank alone, with no collectives (e.g.
    an evaluation that only rank 0 makes)."""
    before = getattr(_state, "local", False)
    _state.local = True
    try:
        yield
    finally:
        _state.local = before


def device() -> torch.device:
    """Where collective tensors live: the current CUDA device for NCCL, else the CPU (gloo)."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard(items: int | Sequence[Any]) -> range:
    """The indices of ``items`` (a sequence, or its length) that this rank takes: a contiguous
    block, ranks in order, block sizes differing by at most one (all of them without sharding)."""
    n = items if isinstance(items, int) else len(items)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UsageError(f"shard takes a sequence or a non-negative length, got {items!r}")
    r, w = rank(), world_size()
    return range(r * n // w, (r + 1) * n // w)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over the ranks, on every rank (``tensor`` itself without sharding).

    Every rank's tensor is gathered and the parts are added in rank order, so the result is the
    same bit for bit on every rank; pass float64 partial sums for a total that does not depend on
    how the work was split (beyond float64 rounding). Returned on ``tensor``'s device and dtype.
    """
    if not active():
        return tensor
    wire = tensor.detach().to(device()).contiguous()
    parts = [torch.empty_like(wire) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, wire)
    total = parts[0].clone()
    for part in parts[1:]:
        total += part
    return total.to(tensor.device)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without sharding."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def merge_rows(local_rows: Tensor, rows: Sequence[int] | range, total: int, *, dim: int = 0) -> Tensor:
    """The full tensor (``total`` entries along ``dim``) of which this rank computed entries
    ``rows`` (``local_rows``, in that order) and the other ranks the rest: on every rank, exactly
    (each entry comes from one rank). Booleans stay booleans."""
    rows = torch.as_tensor(list(rows), dtype=torch.long)
    if local_rows.shape[dim] != len(rows):
        raise ValueError(f"{local_rows.shape[dim]} local entries along dim {dim} for {len(rows)} rows")
    if not active():
        if len(rows) == total and bool((rows == torch.arange(total)).all()):
            return local_rows
    flag = local_rows.dtype == torch.bool
    values = local_rows.to(torch.uint8) if flag else local_rows
    shape = list(values.shape)
    shape[dim] = total
    full = torch.zeros(shape, dtype=values.dtype, device=values.device)
    full.index_copy_(dim, rows.to(values.device), values)
    full = all_reduce_sum(full)
    return full.bool() if flag else full


def gather_rows(local_rows: list[Any]) -> list[Any]:
    """Every rank's list of per-item results (picklable, e.g. tensors of different lengths),
    joined in rank order: the full list when each rank took a contiguous block (:func:`shard`).
    ``local_rows`` itself without sharding."""
    if not active():
        return local_rows
    return [row for part in all_gather_object(local_rows) for row in part]


_BUCKET = 1 << 24  # elements per gradient all-reduce


def all_reduce_gradients(params: Sequence[Tensor] | Any) -> None:
    """Sum the gradients of ``params`` over the ranks, in place (a no-op without sharding).

    Called after ``backward`` and before the optimizer's step: with every rank's loss its local
    sum divided by the global count, the sum is the full batch's gradient, the same bit for bit
    on every rank (parts added in rank order, :func:`all_reduce_sum`). A parameter with no
    gradient on some rank counts zero there; one with no gradient on any rank keeps ``None`` (as
    in one process, the optimizer skips it)."""
    if not active():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float64)
    present = all_reduce_sum(present)
    chosen = [p for p, n in zip(params, present.tolist(), strict=True) if n > 0]

    def key(p: Tensor) -> tuple[torch.dtype, torch.device]:  # the same on every rank
        return p.dtype, p.device

    buckets: list[list[Tensor]] = []
    for p in chosen:
        last = buckets[-1] if buckets else None
        if last is None or key(last[0]) != key(p) or sum(q.numel() for q in last) + p.numel() > _BUCKET:
            buckets.append([p])
        else:
            last.append(p)
    for bucket in buckets:
        dtype = key(bucket[0])[0]
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).to(dtype) for p in bucket]
        )
        flat = all_reduce_sum(flat)
        offset = 0
        for p in bucket:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()


@contextlib.contextmanager
def agreed() -> Iterator[None]:
    """Run a block on every rank; if it raises on any rank, raise on every rank (the rank's own
    error where it raised, else :class:`RankFailed`, or a :class:`~loka.base.errors.UsageError` when
    the failing rank's was one), instead of leaving the others waiting in a collective."""
    if not active():
        yield
        return
    error: BaseException | None = None
    try:
        yield
    except Exception as raised:  # re-raised below, after the other ranks have heard of it
        error = raised
    report = None if error is None else (type(error).__name__, str(error), isinstance(error, UsageError))
    reports = all_gather_object(report)
    if error is not None:
        raise error
    for where, found in enumerate(reports):
        if found is not None:
            name, message, usage = found
            if usage:
                raise UsageError(f"{message} (on rank {where})")
            raise RankFailed(f"rank {where} raised {name}: {message}")
