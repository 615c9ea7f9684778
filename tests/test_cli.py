"""The three commands as a user runs them: --help, and one-line errors without tracebacks."""

import subprocess
import sys

import pytest


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("stage, flag", [("dd.buffer", "--num-experts"), ("dd.distill", "--syn-steps"),
                                         ("dd.eval", "--baseline")])
def test_help(stage, flag):
    result = run(stage, "--help")
    assert result.returncode == 0 and flag in result.stdout and "default:" in result.stdout


@pytest.mark.parametrize("args, message", [
    (("dd.buffer", "--dataset", "nope"), "error: unknown dataset 'nope'"),
    (("dd.buffer", "--dataset", "cifar10", "--data-path", "missing-dir"), "--download"),
    (("dd.distill", "--model", "Nope"), "error: unknown model 'Nope'"),
    (("dd.distill", "--buffer-dir", "no-buffers"), "error: no expert buffer"),
    (("dd.eval", "--synset", "no-such-set"), "error: synthetic set no-such-set does not exist"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
