"""scripts/gpu_check: its in-process stages in their CPU quick form (so the GPU check cannot rot), the command plan
covering every method and unroll, the CUDA-test verdict, a failing case kept as a row, a run from a bare checkout,
and the shell script's bad flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_check  # noqa: E402

from dd.distill.methods import METHODS  # noqa: E402


@pytest.mark.e2e
def test_quick_stages_and_report(tmp_path):
    cpu = torch.device("cpu")
    same = gpu_check.equivalence_rows(cpu, 1, 1)
    assert [r["case"] for r in same] == ["checkpointed vs full", "checkpointed:2 vs full", "checkpointed:1:3 vs full",
                                         "tesla vs full"]
    assert all(r["ok"] for r in same[:3]) and same[3]["ok"] is None and float(same[3]["max_relative_gap"]) > 0
    assert gpu_check.UNROLL_CASES[0] == "full" and "tesla" in gpu_check.UNROLL_CASES
    unrolls = gpu_check.unroll_rows(cpu, [1], 1, 1, ("full", "checkpointed:1:{quarter}"))
    assert [r["unroll"] for r in unrolls] == ["full", "checkpointed:1:2"]
    assert all(r["s_per_iteration"] > 0 and r["peak_rss_mb"] > 0 for r in unrolls)
    assert unrolls[0]["auto_estimate_mb"] > 0
    steps = gpu_check.profile_rows(cpu, quick=True, cases=gpu_check.STEP_CASES[:1])
    assert [r["shape"] for r in steps] == ["1x8x8"]
    assert all(r["aten_ops"] >= r["top_level_ops"] > 10 and min(r["iteration_ms_2_4_steps"]) > 0 for r in steps)
    evals = gpu_check.eval_rows(cpu, 1, 2, 1, ipc=1)
    modes = {r["mode"]: r for r in evals if r["name"] == "eval_seeds"}
    assert set(modes) == {"sequential", "batched", "bf16"} and modes["bf16"]["amp"] == "bf16"
    assert all(0 <= r["mean_acc"] <= 1 and r["seconds"] > 0 for r in modes.values())
    rows = same + unrolls + steps + evals
    gpu_check.write(rows, tmp_path, "python scripts/gpu_check.py --quick", {"summary": "a CPU", "tf32_cudnn": False})
    report = json.loads((tmp_path / "benchmarks-gpu.json").read_text())
    assert report["rows"] == rows and report["machine"]["tf32_cudnn"] is False
    text = (tmp_path / "benchmarks-gpu.md").read_text()
    assert all(f"## {name}" in text for name in ("equivalence", "unroll", "inner_step", "eval_seeds", "eval_ratios"))


def test_the_command_plan_runs_every_method_and_unroll(tmp_path):
    plan = gpu_check.command_plan(tmp_path, "cuda", quick=True)
    names = [name for name, _, _ in plan]
    assert len(names) == len(set(names))
    for method in [*METHODS, "dc", "dsa", "dm", "krr_st"]:
        assert f"method_{method}" in names
    for case in ("unroll_full", "unroll_checkpointed", "unroll_tesla", "unroll_chunk", "unroll_snapshot", "unroll_auto",
                 "resume", "buffer_gsam", "buffer_smooth", "buffer_teacher", "dd_eval_batched", "dd_eval_sequential",
                 "dd_eval_bf16", "dd_eval_deterministic"):
        assert case in names
    args = dict((name, a) for name, a, _ in plan)
    assert args["unroll_chunk"][args["unroll_chunk"].index("--unroll-chunk") + 1] == "3"
    assert all(a[a.index("--device") + 1] == "cuda" for a in args.values() if "--device" in a)


def test_cuda_tests_fail_when_every_one_was_skipped(tmp_path):
    report = tmp_path / "r.xml"
    report.write_text('<testsuites><testsuite name="pytest" errors="0" failures="0" skipped="3" tests="3">'
                      "</testsuite></testsuites>")
    counts = gpu_check.junit_counts(report)
    assert counts == {"passed": 0, "skipped": 3, "failed": 0}
    assert gpu_check.cuda_test_row(counts)["status"] == "failed (every CUDA test was skipped)"
    assert gpu_check.cuda_test_row({"passed": 4, "skipped": 0, "failed": 0})["status"] == "passed"
    assert gpu_check.cuda_test_row({"passed": 4, "skipped": 0, "failed": 1})["status"] == "failed"


def test_a_failing_case_becomes_its_own_row():
    def boom():
        raise RuntimeError("no kernel image\nmore")

    row = gpu_check.guarded({"name": "unroll", "ipc": 50}, boom, torch.device("cpu"))
    assert row == {"name": "unroll", "ipc": 50, "error": "RuntimeError: no kernel image"}


@pytest.mark.e2e
def test_the_check_runs_from_a_bare_checkout(tmp_path):
    """From another folder, without PYTHONPATH: the script puts its checkout's dd first, writes after each stage."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--stages", "equivalence,nothing", "--out", str(tmp_path)], capture_output=True, text=True,
                          cwd=tmp_path, env=env)
    assert done.returncode == 2 and "unknown stage nothing" in done.stderr
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--stages", "equivalence", "--out", str(tmp_path)], capture_output=True, text=True,
                          cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "benchmarks-gpu.json").read_text())
    assert report["machine"]["dd"] == str(ROOT / "dd") and report["machine"]["device"] == "cpu"
    assert [r["status"] for r in report["rows"] if r["name"] == "stage"] == ["ok"]


@pytest.mark.e2e
def test_shell_script_refuses_an_unknown_flag():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--fast"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: unknown option --fast; use --device DEV, --quick, --out DIR")


@pytest.mark.e2e
@pytest.mark.slow
def test_the_shell_scripts_quick_cpu_form_passes(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu", "--quick", "--out",
                           str(tmp_path), "--work", str(tmp_path / "work")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout[-3000:]
    stages = [r for r in json.loads((tmp_path / "benchmarks-gpu.json").read_text())["rows"] if r["name"] == "stage"]
    assert [r["stage"] for r in stages] == ["methods", "equivalence", "unroll", "profile", "eval"]
