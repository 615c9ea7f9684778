"""Page faults and system time of a few ConvNet training steps at 3x28x28, with glibc's default allocator or with
``dd.device.retain_freed_memory`` (docs/benchmarks.md, kernel share).

    python scripts/bench_faults.py default
    python scripts/bench_faults.py retain
"""

from __future__ import annotations

import resource
import sys

import torch

from dd.device import retain_freed_memory
from dd.models import create_model


def main(mode: str) -> None:
    torch.set_num_threads(1)
    if mode == "retain":
        print("applied", retain_freed_memory())
    model = create_model("ConvNet", 3, 10, (28, 28), seed=0)
    x, y = torch.randn(128, 3, 28, 28), torch.arange(128) % 10

    def step() -> None:
        torch.nn.functional.cross_entropy(model(x), y).backward()

    step()  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(3):
        step()
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(mode, "faults", after.ru_minflt - before.ru_minflt, "sys", round(after.ru_stime - before.ru_stime, 2),
          "user", round(after.ru_utime - before.ru_utime, 2))


if __name__ == "__main__":
    main(sys.argv[1])
