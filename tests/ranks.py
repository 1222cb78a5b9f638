"""Run a test file as two gloo ranks under torchrun (the CPU, one thread each), and as one plain
process beside them: the launch the data-parallel tests share."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(script: str, *args: str) -> list[str]:
    """The command that runs ``script args`` as two ranks on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), script, *args]  # fmt: skip


def run_all(commands: list[list[str]], cache: Path, *, timeout: int = 600) -> None:
    """Run ``commands`` side by side from the repository root, one torch thread each, the testbed
    cache in ``LOKA_DISTRIBUTED_CACHE``; fail with the end of the output of any that fails."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "LOKA_DISTRIBUTED_CACHE": str(cache)}
    env.pop("WORLD_SIZE", None)
    processes = [
        subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c in commands
    ]
    for process in processes:
        output, _ = process.communicate(timeout=timeout)
        assert process.returncode == 0, output[-4000:]
