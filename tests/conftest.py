"""Shared fixtures: a small expert buffer on digits, trained once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dd.buffer.__main__ import main as buffer_main
from tests.procs import MLP_BUFFER, python_m, run_ok

TINY_BUFFER_FLAGS = ["--num-experts", "2", "--epochs", "4", "--batch-size", "64", "--test-every", "2",
                     "--device", "cpu"]


THREADS = 2  # every in-process computation, the session fixtures' references included


@pytest.fixture(scope="session", autouse=True)
def _few_threads_for_the_session():
    """Before any session fixture: the reference experts must be trained with the thread count of the tests
    that recompute them, whatever test runs first (a function fixture would run after the session ones)."""
    torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _no_system_datasets(monkeypatch):
    """Tests never read the datasets a system package installed on this machine."""
    from dd.data import mnist

    for name in mnist.SYSTEM_DIRS:
        monkeypatch.setitem(mnist.SYSTEM_DIRS, name, ())


@pytest.fixture(scope="session")
def digits_buffer(tmp_path_factory) -> Path:
    """``buffers/`` root holding 2 ConvNet experts of 4 epochs on digits."""
    root = tmp_path_factory.mktemp("buffers")
    assert buffer_main([*TINY_BUFFER_FLAGS, "--buffer-dir", str(root)]) == 0
    return root


TINY_TEACHER_FLAGS = ["--teacher", "barlow_twins", "--dataset", "digits-0to4", "--model", "ConvNetW32", "--epochs", "2",
                      "--batch-size", "128", "--lr", "0.05", "--momentum", "0.9", "--proj-dim", "32", "--device", "cpu"]


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> Path:
    """``buffers/`` root holding a 2-epoch Barlow Twins ConvNetW32 teacher on digits-0to4."""
    root = tmp_path_factory.mktemp("teachers")
    assert buffer_main([*TINY_TEACHER_FLAGS, "--buffer-dir", str(root)]) == 0
    return root


@pytest.fixture(scope="session")
def mlp_buffer(tmp_path_factory) -> Path:
    """``buffers/`` root holding 3 MLP experts of 2 epochs on digits, from a one-thread subprocess (the
    reference of the subprocess tests: kill and resume, torchrun)."""
    root = tmp_path_factory.mktemp("mlp-buffers")
    run_ok(python_m(*MLP_BUFFER, "--buffer-dir", root))
    return root
