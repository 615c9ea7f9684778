"""Run integrity: ``--resume`` continues only the run a folder holds, nothing finished is lost to a failing
evaluation or an interrupt (SIGTERM, SIGINT), and a folder or expert slot has one writer at a time."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file, save_file

import dd
from dd.buffer.store import TrajectoryStore
from dd.distill import engine
from dd.distill.__main__ import main as distill_main
from dd.distill.checkpoint import check_resume, load_checkpoint
from dd.errors import DDError
from dd.lock import Lock, hold
from tests.helpers import ENV, assert_same_set, logged_iterations, one_error_line, python_m, run_ok

FLAGS = ["--iterations", "2", "--syn-steps", "2", "--expert-epochs", "2", "--max-start-epoch", "2", "--eval-every",
         "0", "--eval-epochs", "1", "--lr-img", "100", "--log-every", "1", "--device", "cpu"]


def distill_args(buffer, run, *extra) -> list[str]:
    return ["--buffer-dir", str(buffer), "--run-dir", str(run), *FLAGS, *extra]


@pytest.fixture
def finished_run(digits_buffer, tmp_path):
    """A 2-iteration MTT run folder and the bytes of its config.json."""
    run = tmp_path / "run"
    assert distill_main(distill_args(digits_buffer, run)) == 0
    return run, (run / "config.json").read_bytes()


def assert_untouched(run, config: bytes, iteration: int = 2) -> None:
    assert (run / "config.json").read_bytes() == config, "config.json was overwritten"
    assert load_checkpoint(run)[1]["iteration"] == iteration
    assert dd.load_synset(run / "synset").meta["iteration"] == iteration


# -- --resume ---------------------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("extra, words", [
    (["--lr-img", "1000", "--seed", "1"],
     ["--lr-img 100 (checkpoint) vs 1000 (now)", "--seed 0 (checkpoint) vs 1 (now)"]),
    (["--ipc", "2"], ["--ipc 1 (checkpoint) vs 2 (now)"]),
    (["--method", "ftd"], ["--method mtt (checkpoint) vs ftd (now)"]),
])
def test_resume_with_other_result_settings_is_refused(finished_run, digits_buffer, capsys, extra, words):
    run, config = finished_run
    line = one_error_line(capsys, distill_main, distill_args(digits_buffer, run, "--resume", *extra))
    assert line.startswith(f"error: {run} holds a run with different settings: ")
    assert line.endswith("rerun with the checkpoint's flags, or pass a new --run-dir")
    for word in words:
        assert word in line
    assert_untouched(run, config)


@pytest.mark.e2e
def test_krr_st_resume_with_other_settings_is_refused(digits_teacher, tmp_path, capsys):
    run = tmp_path / "run"
    assert distill_main(krr(tmp_path, digits_teacher)) == 0
    config = (run / "config.json").read_bytes()
    line = one_error_line(capsys, distill_main, krr(tmp_path, digits_teacher, "--resume", "--num-images", "10"))
    assert f"{run} holds a run with different settings: --num-images 12 (checkpoint) vs 10 (now)" in line
    assert (run / "config.json").read_bytes() == config and load_checkpoint(run)[1]["iteration"] == 2


@pytest.mark.e2e
def test_resume_with_more_iterations_is_accepted_and_recorded(finished_run, digits_buffer):
    run, _ = finished_run
    assert distill_main(distill_args(digits_buffer, run, "--resume", "--iterations", "3")) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"iteration": 2, "resumed": {"iterations": {"checkpoint": 2, "now": 3}}} in records
    assert json.loads((run / "config.json").read_text())["iterations"] == 3
    assert load_checkpoint(run)[1]["iteration"] == 3 and logged_iterations(run) == [1, 2, 3]


@pytest.mark.e2e
def test_resume_past_the_requested_iterations_is_refused(finished_run, digits_buffer, capsys):
    run, config = finished_run
    line = one_error_line(capsys, distill_main, distill_args(digits_buffer, run, "--resume", "--iterations", "1"))
    assert "holds iteration 2, past --iterations 1; pass --iterations 2 or more" in line
    assert_untouched(run, config)


@pytest.mark.e2e
def test_damaged_resume_state_is_one_line(finished_run, digits_buffer, capsys):
    run, config = finished_run
    with open(run / "metrics.jsonl", "a") as f:
        f.write("[1, 2]\n")
    line = one_error_line(capsys, distill_main, distill_args(digits_buffer, run, "--resume", "--iterations", "3"))
    assert "metrics.jsonl line 4 is not a metrics record" in line and "delete that line" in line
    path = run / "checkpoint.safetensors"
    save_file(load_file(str(path)), str(path))  # the tensors without the state metadata
    line = one_error_line(capsys, distill_main, distill_args(digits_buffer, run, "--resume", "--iterations", "3"))
    assert "lacks its state metadata" in line and "pass a new --run-dir" in line
    assert (run / "config.json").read_bytes() == config


# -- evaluation after the save ----------------------------------------------------------------------

@pytest.mark.e2e
def test_failing_end_of_run_evaluation_keeps_the_set_and_checkpoint(digits_buffer, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"

    def broken(self, *_args, **_kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(engine.Distiller, "evaluate", broken)
    argv = distill_args(digits_buffer, run)
    line = one_error_line(capsys, distill_main, argv)
    assert line.startswith("error: evaluation at iteration 2 failed (RuntimeError: mat1 and mat2 shapes")
    assert f"the set and checkpoint of iteration 2 are in {run}" in line
    assert f"resume with: {shlex.join(['python', '-m', 'dd.distill', *argv, '--resume'])}" in line
    state = load_checkpoint(run)[1]
    assert state["iteration"] == 2 and state["evaluated"] == 0
    assert dd.load_synset(run / "synset").meta["iteration"] == 2
    monkeypatch.undo()
    assert distill_main([*argv, "--resume"]) == 0  # only the missing evaluation runs
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "val/ConvNet" in r] == [2] and logged_iterations(run) == [1, 2]
    assert load_checkpoint(run)[1]["evaluated"] == 2 and (run / "synset_best").is_dir()


@pytest.mark.e2e
def test_os_error_mid_run_is_one_line_and_keeps_the_last_checkpoint(digits_buffer, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    saved = engine.save_grid

    def read_only(path, *args, **kwargs):
        if load_checkpoint(run) is not None:  # the folder turned read-only after the first checkpoint
            raise PermissionError(13, "Permission denied", str(path))
        saved(path, *args, **kwargs)

    monkeypatch.setattr(engine, "save_grid", read_only)
    line = one_error_line(capsys, distill_main, distill_args(digits_buffer, run, "--iterations", "4",
                                                              "--checkpoint-every", "2"))
    assert line == (f"error: cannot write/read {run / 'grid.png'}: Permission denied; make it writable or choose "
                    "another folder, then rerun (work saved before this point is kept)")
    assert load_checkpoint(run)[1]["iteration"] == 2


# -- interrupts -------------------------------------------------------------------------------------

def wait_for(proc: subprocess.Popen, ready, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the process ended (exit {proc.returncode}) too early: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.005)


def logged(run, iteration: int) -> bool:
    path = run / "metrics.jsonl"
    return path.exists() and f'"iteration": {iteration}, "loss"' in path.read_text()


LONG = ["--iterations", "300", "--checkpoint-every", "1000", "--syn-steps", "3", "--lr-img", "100"]


@pytest.fixture(scope="module")
def long_reference(digits_buffer, tmp_path_factory):
    run = tmp_path_factory.mktemp("long") / "run"
    run_ok(python_m("dd.distill", *distill_args(digits_buffer, run, *LONG)))  # one thread, as the interrupted run
    return dd.load_synset(run / "synset")


@pytest.mark.e2e
def test_sigterm_checkpoints_the_last_iteration_and_resumes_to_the_same_set(digits_buffer, tmp_path, long_reference):
    run = tmp_path / "run"
    argv = distill_args(digits_buffer, run, *LONG)
    proc = subprocess.Popen(python_m("dd.distill", *argv), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_for(proc, lambda: logged(run, 3))
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143 and "Traceback" not in err, err
    saved = load_checkpoint(run)[1]["iteration"]
    assert 3 <= saved < 300 and saved == logged_iterations(run)[-1], "the last finished iteration was checkpointed"
    assert dd.load_synset(run / "synset").meta["iteration"] == saved
    last = err.strip().splitlines()[-1]
    command = shlex.join(["python", "-m", "dd.distill", *argv, "--resume"])
    assert last == (f"interrupted (SIGTERM): the set and checkpoint of iteration {saved} are in {run}; "
                    f"resume with: {command}")
    resume = shlex.split(last.split("resume with: ", 1)[1])
    assert resume[:3] == ["python", "-m", "dd.distill"]
    result = subprocess.run([sys.executable, *resume[1:]], env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed {run} at iteration {saved}" in result.stdout
    assert_same_set(dd.load_synset(run / "synset"), long_reference)
    assert logged_iterations(run) == list(range(1, 301)), "each iteration logged once"


@pytest.mark.e2e
def test_second_writer_is_refused_naming_the_pid(digits_buffer, tmp_path, capsys):
    run = tmp_path / "run"
    proc = subprocess.Popen(python_m("dd.distill", *distill_args(digits_buffer, run, "--iterations", "100000")),
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(proc, lambda: logged(run, 1))
        line = one_error_line(capsys, distill_main, distill_args(digits_buffer, run, "--resume"))
        lock = run / ".lock"
        assert line == (f"error: run folder {run} is in use by another dd process (pid {proc.pid}; lock {lock}); "
                        f"wait for it to finish, or delete {lock} if that process is gone")
    finally:
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and err.strip().splitlines()[-1].startswith("interrupted (SIGINT): the set and ")
    iterations = logged_iterations(run)
    assert iterations == list(range(1, len(iterations) + 1)), "one writer: no duplicate iterations"
    assert load_checkpoint(run)[1]["iteration"] == iterations[-1] and not (run / ".lock").exists()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.e2e
def test_stale_lock_is_taken_over(digits_buffer, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(f"{dead_pid()} {os.uname().nodename}\n")
    assert distill_main(distill_args(digits_buffer, run)) == 0
    assert not (run / ".lock").exists() and load_checkpoint(run)[1]["iteration"] == 2


@pytest.mark.e2e
def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    with hold(tmp_path, "folder x"):
        assert not Lock(tmp_path / ".lock").acquire()  # this process is alive
        with pytest.raises(DDError, match=rf"folder x is in use by another dd process \(pid {os.getpid()}; lock "):
            with hold(tmp_path, "folder x"):
                pass
    assert not (tmp_path / ".lock").exists()
    (tmp_path / ".lock").write_text(f"{dead_pid()} {os.uname().nodename}\n")
    lock = Lock(tmp_path / ".lock")
    assert lock.acquire() and lock.holder() == (os.getpid(), os.uname().nodename)
    lock.release()
    (tmp_path / ".lock").write_text("1 another-host\n")
    assert not Lock(tmp_path / ".lock").acquire(), "a lock of another host is never guessed dead"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


def trained(stdout: str) -> list[int]:
    """The experts a dd.buffer process says it trained."""
    return [int(i) for line in stdout.splitlines() if line.startswith("this process trained experts ")
            for i in line.split("experts ", 1)[1].split(", ")]


@pytest.mark.e2e
def test_two_buffer_processes_train_each_expert_once(tmp_path):
    command = python_m("dd.buffer", "--num-experts", "3", "--epochs", "3", "--batch-size", "64", "--test-every", "3",
                       "--device", "cpu", "--buffer-dir", tmp_path)
    first = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(first, lambda: any(tmp_path.glob("digits/*/*/.expert_00000.lock")))
    second = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    out = first.communicate(timeout=300)[0]
    assert first.returncode == 0 and second.returncode == 0, second.stderr[-2000:]
    mine, theirs = trained(out), trained(second.stdout)
    assert 0 in mine and theirs, (out, second.stdout)
    assert sorted(mine + theirs) == [0, 1, 2], "each expert trained exactly once"
    (manifest,) = tmp_path.glob("digits/*/*/manifest.json")
    store = TrajectoryStore.open(manifest.parent)
    assert store.completed() == [0, 1, 2] and store.verify() == [] and not list(store.root.glob(".*.lock"))


# -- one-line errors at start-up ----------------------------------------------------------------------

def krr(tmp, teacher, *extra):
    return ["--method", "krr_st", "--buffer-dir", str(teacher), "--model", "ConvNetW32", "--num-images", "12",
            "--batch-real", "64", "--num-models", "2", "--online-iterations", "3", "--iterations", "2",
            "--device", "cpu", "--run-dir", str(tmp / "run"), *extra]


# case: (argv from (tmp, digits buffer, teacher), words the message must hold); each is refused before any work
STARTUP = {
    "--iterations 1e400": (lambda t, b, s: distill_args(b, t / "run", "--iterations", "1e400"),
                           ["'iterations' must be an int", "1e400"]),
    "--lr-lr -1": (lambda t, b, s: distill_args(b, t / "run", "--lr-lr", "-1"), ["--lr-lr must be >= 0, got -1"]),
    "--lr-lr nan": (lambda t, b, s: distill_args(b, t / "run", "--lr-lr", "nan"), ["--lr-lr must be a finite number"]),
    "--lr-img 0": (lambda t, b, s: distill_args(b, t / "run", "--lr-img", "0"), ["--lr-img must be positive, got 0"]),
    "--lr-img inf": (lambda t, b, s: distill_args(b, t / "run", "--lr-img", "inf"), ["--lr-img must be a finite"]),
    "--lr-teacher -0.01": (lambda t, b, s: distill_args(b, t / "run", "--lr-teacher", "-0.01"),
                           ["--lr-teacher must be positive, got -0.01"]),
    "--lr-teacher nan": (lambda t, b, s: distill_args(b, t / "run", "--lr-teacher", "nan"),
                         ["--lr-teacher must be a finite number, got nan"]),
    "datm --threshold 0": (lambda t, b, s: distill_args(b, t / "run", "--method", "datm", "--threshold", "0"),
                           ["--threshold must be positive, got 0"]),
    "--eval-batch-size 0": (lambda t, b, s: distill_args(b, t / "run", "--eval-batch-size", "0"),
                            ["--eval-batch-size must be positive, got 0"]),
    "--eval-every -1": (lambda t, b, s: distill_args(b, t / "run", "--eval-every", "-1"),
                        ["--eval-every must be >= 0, got -1"]),
    "--eval-models too deep for the images": (lambda t, b, s: distill_args(b, t / "run", "--eval-models", "ConvNetD4"),
                                              ["--eval-models ConvNetD4: ", "images are too small"]),
    "--run-dir is a file": (lambda t, b, s: distill_args(b, t / "file"), ["--run-dir", "is a file; pass a folder"]),
    "--wandb online": (lambda t, b, s: distill_args(b, t / "run", "--wandb", "online"), ["--wandb online needs"]),
    "krr --ridge nan": (lambda t, b, s: krr(t, s, "--ridge", "nan"), ["--ridge must be a finite number, got nan"]),
    "krr --grad-clip -1": (lambda t, b, s: krr(t, s, "--grad-clip", "-1"), ["--grad-clip must be >= 0, got -1"]),
    "krr --online-lr -1": (lambda t, b, s: krr(t, s, "--online-lr", "-1"), ["--online-lr must be >= 0, got -1"]),
    "buffer --lr nan": (lambda t, b, s: ["dd.buffer", "--lr", "nan"], ["--lr must be a finite number, got nan"]),
    "buffer --test-every -1": (lambda t, b, s: ["dd.buffer", "--test-every", "-1"],
                               ["--test-every must be >= 0, got -1"]),
    "teacher --bt-lambda nan": (lambda t, b, s: ["dd.buffer", "--teacher", "barlow_twins", "--bt-lambda", "nan"],
                                ["--bt-lambda must be a finite number, got nan"]),
}


@pytest.mark.e2e
@pytest.mark.parametrize("case", STARTUP)
def test_bad_value_is_refused_at_start_up(case, tmp_path, request, capsys, monkeypatch):
    from dd.buffer.__main__ import main as buffer_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("not a folder")
    make_argv, words = STARTUP[case]
    buffer = request.getfixturevalue("digits_buffer") if not case.startswith(("krr", "buffer", "teacher")) else None
    teacher = request.getfixturevalue("digits_teacher") if case.startswith("krr") else None
    argv = make_argv(tmp_path, buffer, teacher)
    main = buffer_main if argv[0] == "dd.buffer" else distill_main
    line = one_error_line(capsys, main, argv[1:] if argv[0] == "dd.buffer" else argv)
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert not (tmp_path / "run").exists() and not (tmp_path / "buffers").exists(), "refused before any work"


def test_settings_newer_than_the_checkpoint_pass_only_at_their_default(tmp_path):
    """A checkpoint written before a setting existed resumes when the setting is at its default (logged as a
    change), and is refused at any other value or when the defaults are not known."""
    stored = {"ipc": 1, "iterations": 2}
    requested = {"ipc": 1, "iterations": 2, "lr_step_limit": 0.1}
    defaults = {"ipc": 1, "iterations": 5000, "lr_step_limit": 0.1}
    assert check_resume(tmp_path, stored, requested, defaults) == {"lr_step_limit": (None, 0.1)}
    with pytest.raises(DDError, match=r"--lr-step-limit none \(checkpoint\) vs 0.2 \(now\)"):
        check_resume(tmp_path, stored, {**requested, "lr_step_limit": 0.2}, defaults)
    with pytest.raises(DDError, match="--lr-step-limit"):
        check_resume(tmp_path, stored, requested)
    with pytest.raises(DDError, match="--ipc 1 \\(checkpoint\\) vs 2"):  # a key the checkpoint has never passes
        check_resume(tmp_path, stored, {**requested, "ipc": 2}, {**defaults, "ipc": 2})
