"""dd's commands as real subprocesses: one CPU thread each, this checkout's code first on the path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]


def python_m(*args: object) -> list[str]:
    """``python -m <args>`` as an argument list."""
    return [sys.executable, "-m", *map(str, args)]


def run_ok(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run ``cmd`` to completion; fail the test with its stderr unless it exits 0."""
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result

MLP_BUFFER = ["dd.buffer", "--model", "MLP", "--num-experts", "3", "--epochs", "2", "--batch-size", "64",
              "--test-every", "2", "--device", "cpu"]
