"""Faults: real dd.buffer, dd.distill and dd.eval processes killed with SIGKILL at several points and
rerun with the same command; a diverging distillation; atomic writes under a crashing writer and a full disk."""

import errno
import os
import signal
import subprocess
import time

import pytest
import torch

import dd
import dd.io
from dd.buffer.store import TrajectoryStore
from dd.distill.checkpoint import load_checkpoint
from dd.errors import DDError
from dd.io import atomic_write, atomic_write_json, load_tensors, read_json, save_tensors
from tests.helpers import ENV, MLP_BUFFER, TORCHRUN, assert_same_set, logged_iterations, make_set, python_m, run_ok


def descendants(pid: int) -> list[int]:
    """Process ids of the children of ``pid``, their children, and so on (Linux /proc)."""
    children = []
    for stat in os.listdir("/proc"):
        try:
            with open(f"/proc/{stat}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            children.append(int(stat))
    return children + [d for c in children for d in descendants(c)]


def kill_when(cmd: list[str], ready, timeout: float = 300.0) -> None:
    """Start ``cmd`` and SIGKILL it and every process it started (torchrun's workers) once ``ready()``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"the process ended (exit {proc.returncode}) before the kill point"
            assert time.monotonic() < deadline, "the kill point never came"
            time.sleep(0.002)
    finally:
        for pid in [proc.pid, *descendants(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the process finished before it could be killed"


def only_store(root) -> TrajectoryStore:
    (manifest,) = root.glob("digits/*/*/manifest.json")
    return TrajectoryStore.open(manifest.parent)


def stores(root) -> list:
    return list(root.glob("digits/*/*/manifest.json"))


# -- dd.buffer -------------------------------------------------------------------------------------

SLOW = pytest.mark.slow  # CI kills each stage at one point; -m slow adds the others


@pytest.mark.e2e
@pytest.mark.parametrize("point", [pytest.param("preprocess.safetensors", marks=SLOW), "expert_00000.json",
                                   pytest.param("expert_00001.json", marks=SLOW)])
def test_killed_buffer_resumes_without_loss_or_corruption(tmp_path, mlp_buffer, point):
    command = python_m(*MLP_BUFFER, "--buffer-dir", tmp_path)
    kill_when(command, lambda: bool(stores(tmp_path)) and (only_store(tmp_path).root / point).exists())
    store = only_store(tmp_path)
    kept = store.completed()
    assert len(kept) >= (0 if point.startswith("pre") else int(point[7:12]) + 1), "a finished expert was lost"
    out = run_ok(command).stdout
    assert f"({len(kept)}/3 experts already stored)" in out
    assert store.completed() == [0, 1, 2] and store.verify() == []
    assert sorted(p.name for p in store.root.iterdir()) == sorted(
        ["manifest.json", "preprocess.safetensors"] + [f"expert_0000{i}.{ext}" for i in range(3)
                                                       for ext in ("json", "safetensors")])
    reference = only_store(mlp_buffer)
    for i in range(3):
        assert torch.equal(store.read_expert(i), reference.read_expert(i))


# -- dd.distill ------------------------------------------------------------------------------------

def distill_command(buffer_root, run_dir, *extra) -> list[str]:
    return python_m("dd.distill", "--buffer-dir", buffer_root, "--run-dir", run_dir, "--iterations", 6,
                    "--checkpoint-every", 2, "--syn-steps", 3, "--eval-every", 0, "--eval-epochs", 1,
                    "--expert-epochs", 2, "--max-start-epoch", 2, "--lr-img", 100, "--log-every", 1,
                    "--device", "cpu", "--resume", *extra)


@pytest.fixture(scope="module")
def reference_set(digits_buffer, tmp_path_factory):
    run = tmp_path_factory.mktemp("reference") / "run"
    run_ok(distill_command(digits_buffer, run))
    return dd.load_synset(run / "synset")


@pytest.mark.e2e
@pytest.mark.parametrize("point, resumes_at", [pytest.param("config.json", None, marks=SLOW),
                                               ("checkpoint.safetensors", 2),
                                               pytest.param("iteration 5", 4, marks=SLOW)])
def test_killed_distillation_resumes_to_the_same_set(tmp_path, digits_buffer, reference_set, point, resumes_at):
    """Killed as the run starts (before its first checkpoint, at iteration 0, 1 or 2), as its first
    checkpoint appears, and after iteration 5 (checkpoint 4): the rerun resumes from the last checkpoint."""
    run = tmp_path / "run"

    def ready() -> bool:
        if point == "iteration 5":
            metrics = run / "metrics.jsonl"
            return metrics.exists() and '"iteration": 5, "loss"' in metrics.read_text()
        return (run / point).exists()

    kill_when(distill_command(digits_buffer, run), ready)
    found = load_checkpoint(run)
    saved = found[1]["iteration"] if found else 0
    assert resumes_at is None or saved == resumes_at
    out = run_ok(distill_command(digits_buffer, run)).stdout
    assert (f"resumed {run} at iteration {saved}" in out) == (saved > 0)
    assert_same_set(dd.load_synset(run / "synset"), reference_set)
    assert logged_iterations(run) == [1, 2, 3, 4, 5, 6], "each iteration logged once after the resume"


@pytest.mark.e2e
def test_diverging_distillation_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path, digits_buffer):
    run = tmp_path / "run"
    result = subprocess.run(distill_command(digits_buffer, run, "--lr-img", "1e30", "--checkpoint-every", 1,
                                            "--log-every", 2), capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0] == result.stderr.splitlines()[-1]
    assert errors[0].startswith("error: distillation diverged at iteration 2 ")
    assert "--lr-img 1e+30 is likely too high" in errors[0] and "checkpoint (iteration 1)" in errors[0]
    assert errors[0].endswith("rerun with a lower value and a new --run-dir")
    assert load_checkpoint(run)[1]["iteration"] == 1, "the diverged state was not checkpointed"
    kept = dd.load_synset(run / "synset")
    assert kept.meta["iteration"] == 1 and torch.isfinite(kept.images).all()
    # a lower rate is another run: --resume refuses to mix it into this one (tests/test_run_integrity.py)
    result = subprocess.run(distill_command(digits_buffer, run), capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 2 and "--lr-img 1e+30 (checkpoint) vs 100 (now)" in result.stderr.splitlines()[-1]


# -- dd.eval ---------------------------------------------------------------------------------------

EVAL = ["dd.eval", "--baseline", "random", "--models", "MLP,LeNet", "--runs", "2", "--epochs", "20", "--device", "cpu"]


@pytest.fixture(scope="module")
def eval_reference(tmp_path_factory):
    """(synthetic set, records of an uninterrupted evaluation of it: 2 sources x 2 models x 2 seeds)."""
    root = tmp_path_factory.mktemp("eval")
    synset = make_set(root / "set", soft=False)
    run_ok(python_m(*EVAL, "--synset", synset, "--out", root / "out"))
    return synset, read_json(root / "out" / "results.json")["runs"]


def recorded(out) -> int:
    path = out / "results.json"
    return len(read_json(path)["runs"]) if path.is_file() else 0


@pytest.mark.e2e
@pytest.mark.parametrize("point", [1, pytest.param(4, marks=SLOW)])
def test_killed_eval_keeps_finished_runs(tmp_path, eval_reference, point):
    synset, reference = eval_reference
    command = python_m(*EVAL, "--synset", synset, "--out", tmp_path)
    kill_when(command, lambda: recorded(tmp_path) >= point)
    kept = recorded(tmp_path)
    assert point <= kept < 8
    assert f"eval: {kept} of 8 runs already in" in run_ok(command).stdout
    assert read_json(tmp_path / "results.json")["runs"] == reference, "no run lost, none duplicated"


@pytest.mark.e2e
def test_killed_torchrun_eval_is_merged_by_a_single_process_rerun(tmp_path, eval_reference):
    from dd.eval.results import run_key

    synset, reference = eval_reference
    args = [*EVAL, "--synset", str(synset), "--out", str(tmp_path)]
    kill_when([*TORCHRUN, "-m", *args], lambda: any(tmp_path.glob("results.rank*.json")))
    parts = [read_json(p)["runs"] for p in tmp_path.glob("results.rank*.json")]
    kept = sum(map(len, parts))
    assert kept >= 1 and not (tmp_path / "results.json").exists()
    assert f"eval: {kept} of 8 runs already in" in run_ok(python_m(*args)).stdout
    runs = read_json(tmp_path / "results.json")["runs"]
    assert sorted(map(run_key, runs)) == sorted(map(run_key, reference)) and len(runs) == 8
    assert {run_key(r): r["accuracy"] for r in runs} == {run_key(r): r["accuracy"] for r in reference}
    assert not list(tmp_path.glob("results.rank*.json"))


# -- atomic writes ---------------------------------------------------------------------------------

def test_crash_mid_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_json(path, {"version": 1})

    def crash(tmp):
        tmp.write_bytes(b'{"version": 2, "tru')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        atomic_write(path, crash)
    assert read_json(path) == {"version": 1}
    assert os.listdir(tmp_path) == ["state.json"], "no temporary file left behind"
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "new.json", crash)
    assert os.listdir(tmp_path) == ["state.json"], "a failed first write leaves no file at all"


def test_full_disk_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "t.safetensors"
    save_tensors(path, {"x": torch.arange(4.0)})

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 16)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dd.io, "save_file", full_disk)
    with pytest.raises(DDError, match=r"no space left on the device while writing .*t\.safetensors "
                                      r"\(the previous file is intact\); free some space"):
        save_tensors(path, {"x": torch.zeros(1000)})
    assert torch.equal(load_tensors(path)["x"], torch.arange(4.0))
    assert os.listdir(tmp_path) == ["t.safetensors"]
