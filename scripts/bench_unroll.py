"""The full and the checkpointed unroll alternating in one process, and the plain training step, on
scripts/bench.py's distillation problem; prints CPU seconds per iteration (``time.process_time``: on a core
shared with other jobs it counts this process's work alone) and the two ratios docs/benchmarks.md
reports (checkpointed / full, inner step / plain step).

    taskset -c 1 env OMP_NUM_THREADS=1 python scripts/bench_unroll.py --syn-steps 20 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import bench
import torch

from dd.augment import DSA
from dd.device import make_generator
from dd.distill.methods.base import normalized_distance
from dd.distill.unroll import Student, make_plan, make_unroll
from dd.functional import flatten_params
from dd.training import classification_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", choices=tuple(bench.DATASETS))
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--syn-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device, steps = torch.device("cpu"), args.syn_steps
    images, labels = bench.synthetic_set(args.dataset, device, args.ipc)
    model = bench.model_for(args.dataset, images)
    student, w_start = Student(model, DSA()), flatten_params(model)
    w_target = w_start + 0.01 * torch.randn(w_start.shape, generator=make_generator(1))
    images.requires_grad_(True)
    lr = torch.tensor(0.01, requires_grad=True)
    generator = make_generator(2)

    def iteration(unroll) -> None:
        plan = make_plan(images.shape[0], images.shape[0], steps, generator, device)
        (w_final,) = unroll(student, w_start, images, labels, lr, plan, [steps])
        normalized_distance(w_final, w_start, w_target).backward()
        images.grad = lr.grad = None

    optimizer, augment, plain_generator = torch.optim.SGD(model.parameters(), lr=0.01), DSA(), make_generator(0)

    def plain() -> None:
        optimizer.zero_grad(set_to_none=True)
        classification_loss(model(augment(images.detach(), plain_generator)), labels).backward()
        optimizer.step()

    runs = {"full": lambda: iteration(make_unroll("full")),
            "checkpointed": lambda: iteration(make_unroll("checkpointed")),
            "plain_step": lambda: [plain() for _ in range(steps)]}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm-up
    for _ in range(args.repeats):
        for name, run in runs.items():
            tic = time.process_time()
            run()
            seconds[name].append(time.process_time() - tic)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    median["plain_step"] /= steps
    print(json.dumps({"dataset": args.dataset, "ipc": args.ipc, "syn_steps": steps, "cpu_seconds": median,
                      "checkpointed_over_full": median["checkpointed"] / median["full"],
                      "inner_over_plain": median["full"] / steps / median["plain_step"]}))


if __name__ == "__main__":
    main()
