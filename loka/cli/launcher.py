"""Data parallel from the command line: relaunch a command under torchrun's process group."""

from __future__ import annotations

import argparse
import contextlib
import io
import os

from loka.base.errors import UsageError

__all__ = ["is_main_process", "run_data_parallel", "DATA_PARALLEL"]


def is_main_process() -> bool:
    """Whether this process writes files: always, except on ranks other than 0 under torchrun."""
    from loka.base.distributed import is_main

    return is_main()


def run_data_parallel(args: argparse.Namespace) -> int:
    """``args.run`` under torchrun (``WORLD_SIZE`` set): every rank joins one process group (NCCL
    with one GPU per rank, ``--device cuda`` becoming ``cuda:LOCAL_RANK``; else gloo on the CPU),
    runs the command (the sharded work: :mod:`loka.base.distributed`), and only rank 0 writes files
    and prints; all ranks wait for its writes before they leave."""
    import torch
    import torch.distributed as dist

    if args.device_map is not None:
        raise UsageError("--device-map does not work under torchrun; give --device cuda (one GPU per rank)")
    cuda = (args.device or "cpu").startswith("cuda")
    if cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        args.device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        quiet = io.StringIO() if dist.get_rank() != 0 else None
        with contextlib.redirect_stdout(quiet) if quiet is not None else contextlib.nullcontext():
            code = args.run(args)
        dist.barrier()  # rank 0's files are written before any rank returns
        return code
    finally:
        dist.destroy_process_group()


DATA_PARALLEL = ("locate", "unlearn", "evaluate")  # the commands that shard their work under torchrun
