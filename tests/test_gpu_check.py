"""scripts/gpu_check: its benchmark rows in their CPU quick form (so the GPU check cannot rot) and its bad flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_check  # noqa: E402


def test_quick_rows_and_report(tmp_path):
    cpu = torch.device("cpu")
    rows = gpu_check.distill_rows(cpu, [1], 1, 1) + gpu_check.eval_rows(cpu, 1, 2, 1)
    assert [(r["unroll"]) for r in rows if r["name"] == "distill_iter"] == ["full", "checkpointed"]
    modes = {r["mode"]: r for r in rows if r["name"] == "eval_seeds"}
    assert set(modes) == {"sequential", "batched", "bf16"} and modes["bf16"]["amp"] == "bf16"
    assert all(0 <= r["mean_acc"] <= 1 and r["seconds"] > 0 for r in modes.values())
    gpu_check.write(rows, tmp_path, "python scripts/gpu_check.py --quick", {"cuda_tests": "skipped"})
    report = json.loads((tmp_path / "benchmarks-gpu.json").read_text())
    assert report["rows"] == rows and report["cuda_tests"] == "skipped"
    text = (tmp_path / "benchmarks-gpu.md").read_text()
    assert "## distill_iter" in text and "## eval_seeds" in text and "## eval_ratios" in text


def test_shell_script_refuses_an_unknown_flag():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--fast"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: unknown option --fast; use --device DEV, --quick, --out DIR"
