"""bench/gpu_check.py runs its whole path on the CPU (tiny random model) and every check passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_tiny_passes(tmp_path: Path) -> None:
    env = os.environ | {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    command = [
        sys.executable,
        str(ROOT / "bench" / "gpu_check.py"),
        "--device",
        "cpu",
        "--model",
        "tiny",
        "--cache-dir",
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert not any("MISMATCH" in line for line in lines)
    summary = lines[-1]
    passed, total = summary.split(": ")[1].split(" ")[0].split("/")
    assert passed == total and int(total) >= 8, summary  # the checks ran, not just the script


def test_gpu_check_without_cuda_says_so() -> None:
    """Asking for CUDA where there is none is exit status 2 with a one-line reason."""
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    command = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cuda", "--model", "tiny"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert done.returncode == 2
    assert "CUDA is not available" in done.stdout
