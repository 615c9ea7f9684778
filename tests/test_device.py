"""dd.device and dd.distributed set-up: the device actually used is printed and recorded, ``auto`` landing on the
CPU with a CUDA build warns, TF32 and cuDNN autotuning are set in one place, and the process group gets a generous,
configurable timeout."""

from __future__ import annotations

import datetime
import json

import pytest
import torch

from dd import distributed
from dd.device import auto_fallback_warning, configure_backends, runtime_facts, setup_device
from dd.errors import DDError
from tests.helpers import run_distill


@pytest.fixture
def backends():
    """Restore torch's backend switches that ``configure_backends`` sets."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


def test_auto_on_the_cpu_warns_only_for_a_cuda_build(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    warning = auto_fallback_warning("auto", cpu)
    assert warning.startswith("warning: --device auto found no usable GPU") and "CUDA 13.0" in warning
    assert auto_fallback_warning("cpu", cpu) is None  # asked for
    monkeypatch.setattr(torch.version, "cuda", None)
    assert auto_fallback_warning("auto", cpu) is None  # a CPU-only torch: nothing to warn about


def test_setup_prints_one_line_and_sets_tf32_both_ways(backends, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    torch.backends.cudnn.benchmark = False
    assert setup_device("auto", tf32=True) == torch.device("cpu")
    assert capsys.readouterr().out == "device: cpu\n"
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert torch.backends.cudnn.benchmark  # autotuning outside deterministic mode
    setup_device("cpu", tf32=False, quiet=True)
    assert capsys.readouterr().out == ""
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    facts = runtime_facts(torch.device("cpu"))
    assert facts["device"] == "cpu" and facts["tf32_matmul"] is False and facts["tf32_cudnn"] is False


def test_deterministic_backends_turn_autotuning_off(backends):
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic
    try:
        configure_backends(tf32=False, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic = before[1]


@pytest.mark.e2e
def test_a_run_records_the_device_it_used_and_tf32(tmp_path, backends, capsys):
    run = tmp_path / "dm"
    run_distill(method="dm", model="ConvNetW32", iterations=1, batch_real=4, eval_every=0, eval_epochs=1,
                device="auto", run_dir=str(run))
    config = json.loads((run / "config.json").read_text())
    used = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert config["device"] == used and config["tf32"] is False  # not "auto"
    out = capsys.readouterr().out
    assert f"device: {used}" in out or "warning: --device auto found no usable GPU" in out


def test_the_process_group_timeout_is_generous_and_configurable(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.timeout() == datetime.timedelta(minutes=distributed.DEFAULT_TIMEOUT_MINUTES)
    assert distributed.timeout() > datetime.timedelta(minutes=10)  # NCCL's own default
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "90")
    assert distributed.timeout() == datetime.timedelta(minutes=90)
    for bad in ("0", "-5", "soon"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(DDError, match=f"DD_DIST_TIMEOUT_MINUTES='{bad}' is not a positive number of minutes"):
            distributed.timeout()


def test_setup_under_torchrun_passes_the_timeout(monkeypatch, backends):
    joined = {}
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "120")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kw: joined.update(backend=backend,
                                                                                                   **kw))
    monkeypatch.setattr(distributed.atexit, "register", lambda fn: None)
    assert distributed.setup("cpu") == torch.device("cpu")
    assert joined == {"backend": "gloo", "timeout": datetime.timedelta(minutes=120)}
