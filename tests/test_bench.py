"""scripts/bench.py: a distill_iter worker reports its figures from a fresh process, the report holds every
section's rows and the targets computed from them, and (slow) the whole --quick run writes both files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
sys.path.insert(0, str(SCRIPT.parent))
import bench  # noqa: E402


@pytest.mark.e2e
def test_worker_reports_seconds_and_memory_of_one_configuration():
    done = subprocess.run([sys.executable, str(SCRIPT), "--worker", "digits", "checkpointed", "3", "--quick",
                           "--snapshot-every", "2",
                           "--device", "cpu"], check=True, capture_output=True, text=True, env=bench.worker_env())
    figures = json.loads(done.stdout.splitlines()[-1])
    assert figures["seconds"] > 0 and figures["peak_mem_mb"] > 0


def test_report_tables_and_targets(tmp_path):
    rows = [{"name": "distill_iter", "unroll": unroll, "snapshot_every": k, "syn_steps": steps, "dataset": "digits",
             "ipc": 10, "seconds": seconds, "peak_mem_mb": mem}
            for unroll, k, steps, seconds, mem in [("full", 1, 10, 1.0, 100.0), ("checkpointed", 1, 10, 1.4, 50.0),
                                                   ("checkpointed", 4, 10, 1.6, 40.0),
                                                   ("full", 1, 80, 8.0, 800.0), ("checkpointed", 1, 80, 12.0, 55.0),
                                                   ("checkpointed", 9, 80, 16.0, 41.0)]]
    rows.append({"name": "plain_step", "dataset": "digits", "ipc": 10, "seconds": 0.04})
    rows += bench.inner_step_ratio(rows)
    assert [r["ratio"] for r in rows if r["name"] == "inner_step_ratio"] == pytest.approx([2.5, 2.5])
    rows += [{"name": "eval_seeds", "dataset": "digits", "ipc": 10, "seeds": 5, "epochs": 50, "batched": batched,
              "seconds": seconds} for batched, seconds in ((False, 9.0), (True, 2.0))]
    rows += bench.eval_speedup(rows)
    assert [r["speedup"] for r in rows if r["name"] == "eval_speedup"] == pytest.approx([4.5])
    settings = bench.Settings((10, 80), repeats=3, ipc=10, cifar_ipc=10, expert_images=64, eval_epochs=1,
                              device="cpu", clock="cpu")
    (tmp_path / "benchmarks.md").write_text("<!-- by_hand -->\nwritten by hand\n<!-- /by_hand -->\n")
    bench.write_report(rows, tmp_path, "python scripts/bench.py", "a machine", settings)
    bench.write_report(rows, tmp_path, "python scripts/bench.py", "a machine", settings)  # replaces its own section
    assert json.loads((tmp_path / "benchmarks.json").read_text()) == {
        "machine": "a machine", "command": "python scripts/bench.py", "rows": rows}
    text = (tmp_path / "benchmarks.md").read_text()
    assert ("digits, checkpointed keeping every state: peak memory grows +10.0 % from syn_steps 10 to 80 "
            "(target <= +10 %); time is at most 1.50x the full unroll's (target <= 1.35x)") in text
    assert "keeping every ceil(sqrt(N))-th state: peak memory grows +2.5 % from syn_steps 10 to 80" in text
    assert "time is at most 2.00x" in text
    assert "2.50x to 2.50x a plain training step" in text
    assert "IPC 10: 5 evaluation seeds batched are 4.50x as fast as sequential" in text
    assert "| full | 1 | 80 | digits | 10 | 8 | 800 |" in text and "### plain_step" in text
    assert "Seconds (CPU time of the process) are medians of 3 runs" in text
    assert text.count("# Benchmarks") == 1 and "written by hand" in text, "other sections of the page stay"


@pytest.mark.e2e
@pytest.mark.slow
def test_quick_run_writes_both_files(tmp_path):
    subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--out", str(tmp_path)], check=True)
    rows = json.loads((tmp_path / "benchmarks.json").read_text())["rows"]
    names = {r["name"] for r in rows}
    assert names == {"distill_iter", "plain_step", "expert_epoch", "inner_step_ratio", "eval_seeds", "eval_speedup"}
    assert len([r for r in rows if r["name"] == "distill_iter"]) == 2 * 2 * 3  # datasets x syn_steps x variants
    assert "## Targets" in (tmp_path / "benchmarks.md").read_text()
