"""bf16 evaluation training (fp32 master weights, its own protocol identity), deterministic mode, and the allocator
setting that keeps training loops out of the kernel."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dd.device import use_deterministic
from dd.errors import DDError
from dd.eval.config import EvalConfig
from dd.eval.jobs import protocol_overrides
from dd.protocols import get_protocol
from dd.realdata import prepare_data, random_subset
from dd.training import train_model


def test_bf16_is_part_of_the_protocol_identity():
    fp32, bf16 = get_protocol("mtt"), get_protocol("mtt", amp="bf16")
    assert "amp" not in fp32.describe(0.01)  # records written before the flag keep their key
    assert bf16.describe(0.01) == {**fp32.describe(0.01), "amp": "bf16"}
    assert protocol_overrides(EvalConfig(amp="bf16"))["amp"] == "bf16"
    assert "amp" not in protocol_overrides(EvalConfig())
    with pytest.raises(DDError, match="amp must be one of none, bf16"):
        get_protocol("mtt", amp="fp16")


@pytest.mark.e2e
def test_bf16_training_keeps_fp32_weights_and_learns():
    data = prepare_data("digits", torch.device("cpu"))
    train = random_subset(data, 10, seed=0)
    runs = {}
    for amp in ("none", "bf16"):
        protocol = get_protocol("mtt", epochs=20, amp=amp, dsa_strategy="none")
        model = train_model("ConvNet", 1, 10, (8, 8), train, 0.01, protocol, seed=0)
        runs[amp] = torch.cat([p.detach().flatten() for p in model.parameters()])
        assert all(p.dtype == torch.float32 for p in model.parameters())
    init = torch.cat([p.detach().flatten() for p in train_model(
        "ConvNet", 1, 10, (8, 8), train, 0.01, get_protocol("mtt", epochs=1, extra_epochs=0, dsa_strategy="none"),
        seed=0).parameters()])
    moved = (runs["none"] - init).norm()
    gap = (runs["bf16"] - runs["none"]).norm()
    assert 0 < gap < 0.2 * moved, "bf16 rounds (not equal to fp32) but follows the fp32 run"


def test_deterministic_sets_the_flags():
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic
    try:
        use_deterministic(False)
        assert torch.are_deterministic_algorithms_enabled() == before[0]
        use_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic = before[1]


FAULTS = """
import resource, sys, torch
from dd.device import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "retain" else False
torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, above glibc's largest mmap threshold, allocated and freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(64 << 20, dtype=torch.uint8)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.e2e
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_retained_memory_is_reused_without_page_faults():
    """Ten 64 MiB blocks allocated and freed: by default each is mapped afresh (16k faults of 4 KiB pages each);
    with ``retain_freed_memory`` the heap's pages are reused (here 1-4 blocks' worth were faulted in: the kernel's own
    reclaim on a loaded machine takes some back), a bound well under the default's."""
    counts = {}
    for mode in ("default", "retain"):
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], check=True, capture_output=True, text=True)
        applied, faults = out.stdout.split()
        counts[mode] = int(faults)
        assert applied == str(mode == "retain")
    block = (64 << 20) // 4096
    assert counts["default"] > 8 * block and counts["retain"] < 0.6 * counts["default"]
