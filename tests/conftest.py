"""Shared fixtures: a small expert buffer on digits, trained once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dd.buffer import BufferConfig, train_store
from tests.helpers import MLP_BUFFER, TINY_BUFFER, TINY_TEACHER, python_m, run_ok

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
    train_store(BufferConfig(**TINY_BUFFER, buffer_dir=str(root)))
    return root


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> Path:
    """``buffers/`` root holding a 2-epoch Barlow Twins ConvNetW32 teacher on digits-0to4."""
    root = tmp_path_factory.mktemp("teachers")
    train_store(BufferConfig(**TINY_TEACHER, buffer_dir=str(root)))
    return root


@pytest.fixture(scope="session")
def mlp_buffer(tmp_path_factory) -> Path:
    """``buffers/`` root holding 3 MLP experts of 2 epochs on digits, from a one-thread subprocess (the
    reference of the subprocess tests: kill and resume, torchrun)."""
    root = tmp_path_factory.mktemp("mlp-buffers")
    run_ok(python_m(*MLP_BUFFER, "--buffer-dir", root))
    return root
