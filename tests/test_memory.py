"""``unroll: auto``: the activation count, the estimate's formula, the pick and its record in the run's config."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from dd.data import DatasetSpec, get_spec
from dd.distill import memory
from dd.distill.config import MTTConfig
from dd.distill.memory import activation_floats, checkpointed_chunk, full_unroll_bytes, pick_unroll, resolve_unroll
from dd.models import create_model


def test_activation_floats_counts_every_leaf_output():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    model.train()
    # conv 2x4x4 = 32, relu 32, flatten 32, linear 3
    assert activation_floats(model, (1, 4, 4)) == 32 + 32 + 32 + 3
    assert model.training


def test_full_unroll_estimate_formula():
    a, p, b, n, images, floats = 1000, 500, 8, 5, 20, 48
    expected = 4 * (n * (memory.FULL_ACTIVATION_FACTOR * b * a + memory.FULL_PARAM_FACTOR * p) + 3 * images * floats)
    assert full_unroll_bytes(a, p, b, n, images, floats) == int(expected)
    assert full_unroll_bytes(a, p, b, 2 * n, images, floats) > full_unroll_bytes(a, p, b, n, images, floats)


def test_estimate_is_near_the_measured_resident_set():
    """Within 25 % of the CPU measurements the factors were calibrated on (docs/benchmarks.md, bench_memory)."""
    model = create_model("ConvNet", 3, 10, (32, 32), seed=0)
    a, p = activation_floats(model, (3, 32, 32)), sum(q.numel() for q in model.parameters())
    per_step_mib = {10: 29.1, 40: 113.5}  # measured: 2-step minus 1-step peak, minibatch of 10 and 40 images
    for batch, measured in per_step_mib.items():
        step = (full_unroll_bytes(a, p, batch, 2, 0, 0) - full_unroll_bytes(a, p, batch, 1, 0, 0)) / 2**20
        assert abs(step - measured) / measured < 0.25


def test_cuda_estimates_scale_the_cpu_factors_by_the_margin():
    a, p, b, n, images, floats = 1000, 500, 8, 5, 20, 48
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    expected = 4 * (n * (memory.FULL_ACTIVATION_FACTOR * memory.CUDA_MARGIN * b * a + memory.FULL_PARAM_FACTOR * p)
                    + 3 * images * floats)
    assert full_unroll_bytes(a, p, b, n, images, floats, cuda) == int(expected)
    assert memory.activation_factors(cuda) == (memory.FULL_ACTIVATION_FACTOR * memory.CUDA_MARGIN,
                                               memory.CKPT_ACTIVATION_FACTOR * memory.CUDA_MARGIN)
    # a budget that fits 10 images per chunk at the CPU factor fits 10 / margin = 8 at the CUDA one
    free = int((4 * (memory.FULL_PARAM_FACTOR * p + 10 * memory.CKPT_ACTIVATION_FACTOR * a) + 4 * 6 * p)
               / memory.HEADROOM) + 1
    assert checkpointed_chunk(a, p, 64, 5, 3, 0, 0, free) == 10
    assert checkpointed_chunk(a, p, 64, 5, 3, 0, 0, free, cuda) == 8


def test_free_cuda_memory_counts_the_allocators_cache():
    """What the driver reports free plus what PyTorch holds reserved but unallocated (a fake reader)."""
    gib = 2**30
    cuda = torch.device("cuda:0")
    asked = []

    def reader(device):
        asked.append(device)
        return 2 * gib, 5 * gib, 3 * gib  # driver free, reserved, allocated

    assert memory.free_bytes(cuda, reader) == 4 * gib
    assert asked == [cuda]
    assert memory.free_bytes(cuda, lambda device: (2 * gib, gib, gib)) == 2 * gib  # an empty cache adds nothing
    assert memory.free_bytes(torch.device("cpu"), reader) > 0 and len(asked) == 1  # the CPU reads /proc/meminfo


@pytest.mark.parametrize(("estimate", "free", "picked"), [(79, 100, "full"), (80, 100, "full"),
                                                          (81, 100, "checkpointed")])
def test_auto_picks_checkpointed_beyond_the_headroom(estimate, free, picked):
    name, why = pick_unroll(estimate * 2**30, free * 2**30)
    assert name == picked and "GiB" in why and ("does not fit" in why) == (picked == "checkpointed")


def test_resolve_replaces_auto_only(monkeypatch, capsys):
    spec = get_spec("digits")
    model = create_model("ConvNet", spec.channels, spec.num_classes, spec.size, seed=0)
    cpu = torch.device("cpu")
    explicit = MTTConfig(unroll="full")
    assert resolve_unroll(explicit, model, spec, cpu) is explicit
    monkeypatch.setattr(memory, "free_bytes", lambda device: 2**40)
    roomy = resolve_unroll(MTTConfig(unroll="auto", unroll_snapshot_every=4), model, spec, cpu)
    assert (roomy.unroll, roomy.unroll_snapshot_every) == ("full", 1)  # the stride only applies to checkpointed
    monkeypatch.setattr(memory, "free_bytes", lambda device: 2**20)
    tight = resolve_unroll(MTTConfig(unroll="auto", unroll_snapshot_every=4), model, spec, cpu)
    assert (tight.unroll, tight.unroll_snapshot_every) == ("checkpointed", 4)
    out = capsys.readouterr().out
    assert "unroll auto: full" in out and "unroll auto: checkpointed" in out


def test_checkpointed_chunk_is_the_most_images_whose_step_fits():
    """By hand: budget = 0.8 * free - 4 * (states * P + 3 * images * floats), graph = budget - 4 * P, chunk =
    graph // (4 * 2.5 * A); None when the whole minibatch fits."""
    a, p, steps, stride, images, floats = 1000, 500, 9, 3, 20, 48
    states = 3 + 3  # ceil(9 / 3) + 3
    free = 10**6
    graph = memory.HEADROOM * free - 4 * (states * p + 3 * images * floats) - 4 * p
    whole = int(graph // (4 * memory.CKPT_ACTIVATION_FACTOR * a))
    assert checkpointed_chunk(a, p, whole, steps, stride, images, floats, free) is None
    assert checkpointed_chunk(a, p, whole + 1, steps, stride, images, floats, free) == whole
    assert checkpointed_chunk(a, p, 50, steps, stride, images, floats, 1000) == 1  # nothing fits: one image a time


def test_a_step_too_big_for_the_device_gets_a_chunk_that_fits(monkeypatch, capsys):
    """Tiny ImageNet IPC 10 (2000 images in one minibatch, ConvNetD4) on 24 GiB: one step needs about 47 GiB, so
    auto checkpoints in chunks; an explicit chunk is kept; a BatchNorm student gets no chunk, only the advice."""
    spec = DatasetSpec("tiny", 3, (64, 64), 200, (0.5,) * 3, (0.25,) * 3)
    monkeypatch.setattr(memory, "free_bytes", lambda device: 24 * 2**30)
    cpu = torch.device("cpu")
    model = create_model("ConvNetD4", 3, 200, (64, 64), seed=0)
    config = MTTConfig(unroll="auto", dataset="tiny", model="ConvNetD4", ipc=10, syn_steps=20)
    picked = resolve_unroll(config, model, spec, cpu)
    assert picked.unroll == "checkpointed" and 1 < picked.unroll_chunk < 2000
    a, p = activation_floats(model, (3, 64, 64)), sum(q.numel() for q in model.parameters())
    fits = (a, p, picked.unroll_chunk, 20, 1, 2000, 3 * 64 * 64, 24 * 2**30)
    assert checkpointed_chunk(*fits) is None and checkpointed_chunk(*fits[:2], 2000, *fits[3:]) is not None
    assert f"--unroll-chunk {picked.unroll_chunk}" in capsys.readouterr().out
    explicit = resolve_unroll(dataclasses.replace(config, unroll="checkpointed"), model, spec, cpu)
    assert explicit.unroll_chunk == picked.unroll_chunk  # a given checkpointed unroll is chunked alike
    assert resolve_unroll(dataclasses.replace(config, unroll_chunk=100), model, spec, cpu).unroll_chunk == 100
    bn = create_model("ConvNetD4BN", 3, 200, (64, 64), seed=0)
    assert resolve_unroll(dataclasses.replace(config, model="ConvNetD4BN"), bn, spec, cpu).unroll_chunk is None
    assert "BatchNorm rules out --unroll-chunk: lower --batch-syn" in capsys.readouterr().out


@pytest.mark.e2e
def test_the_run_records_the_picked_unroll(tmp_path, digits_buffer, monkeypatch):
    from tests.helpers import run_distill

    monkeypatch.setattr(memory, "free_bytes", lambda device: 2**20)  # nothing fits: auto must checkpoint
    run = tmp_path / "run"
    run_distill(buffer_dir=str(digits_buffer), iterations=1, syn_steps=2, expert_epochs=1, max_start_epoch=2,
                eval_every=0, eval_epochs=1, device="cpu", run_dir=str(run))
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["unroll"] == "checkpointed" and recorded["unroll_chunk"] == 1  # 1 MiB: one image at a time
