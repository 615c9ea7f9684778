"""The TESLA unroll against dd's exact gradient: error as syn_steps grows, and time and peak memory beside the
full and checkpointed unrolls. Prints the tables and writes docs/benchmarks-tesla.md and .json.

    python scripts/bench_tesla.py --buffer-dir buffers    # experts of experiments/buffer/digits.yaml
    python scripts/bench_tesla.py --buffer-dir buffers --quick --out /tmp/bench-tesla    # a smoke run

Sections:

- ``gradient_error``: on digits IPC 10 (the first real images of each class, minibatches of 50, the default DSA)
  and a real expert (the first complete one; start epoch t drawn in [0, 8), target t + 2), the gradient of
  MTT's normalised distance w.r.t. the images and the lr through ``--unroll tesla`` and through the exact
  ``full`` unroll on the same inner plan: the cosine of the two image gradients, the relative error
  ||g_tesla - g_exact|| / ||g_exact|| and the norm ratio ||g_tesla|| / ||g_exact||, and the lr gradients' ratio;
  the mean over ``--draws`` (expert start, plan) draws per syn_steps.
- ``unroll_cost``: seconds per distillation iteration and the peak memory of the measured iterations for full,
  checkpointed (every state and every ceil(sqrt(N))-th) and tesla, each in a fresh process, through
  ``scripts/bench.py``'s worker (random start and target, the whole set per step).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from bench import FULL, MALLOC_ENV, Settings, distill_worker, synthetic_set

from dd.augment import DSA
from dd.device import describe_machine, make_generator, resolve_device
from dd.distill.experts import find_store
from dd.distill.methods.base import normalized_distance
from dd.distill.unroll import Student, full_unroll, make_plan, tesla_unroll
from dd.models import create_model

ERROR_STEPS = (1, 5, 10, 20, 40, 80)
COST_STEPS = (10, 20, 40, 80)
BATCH_SYN, EXPERT_EPOCHS, MAX_START_EPOCH = 50, 2, 8
ROOT = Path(__file__).parents[1]


def gradients(unroll, student, w_start, w_target, images, labels, plan, steps):
    """d normalized_distance(w_N) / d(images, lr) through ``unroll``."""
    x = images.clone().requires_grad_(True)
    lr = torch.tensor(0.01, device=images.device, requires_grad=True)
    (w_final,) = unroll(student, w_start, x, labels, lr, plan, [steps])
    normalized_distance(w_final, w_start, w_target).backward()
    return x.grad, lr.grad


def gradient_error(buffer_dir: str, steps_list: tuple[int, ...], draws: int, device: torch.device) -> list[dict]:
    images, labels = synthetic_set("digits", device, 10)
    model = create_model("ConvNet", 1, 10, (8, 8), seed=0).to(device).train()
    student = Student(model, DSA())
    store = find_store(None, buffer_dir, "digits", "ConvNet", str(ROOT / "experiments/buffer/digits.yaml"))
    trajectory = store.read_expert(store.completed()[0]).to(device)
    rows = []
    for steps in steps_list:
        generator = make_generator(steps)
        figures = []
        for _ in range(draws):
            start = int(torch.randint(0, MAX_START_EPOCH, (1,), generator=generator))
            plan = make_plan(images.shape[0], BATCH_SYN, steps, generator, device)
            w_start, w_target = trajectory[start], trajectory[start + EXPERT_EPOCHS]
            exact_x, exact_lr = gradients(full_unroll, student, w_start, w_target, images, labels, plan, steps)
            tesla_x, tesla_lr = gradients(tesla_unroll, student, w_start, w_target, images, labels, plan, steps)
            figures.append({
                "cosine": torch.nn.functional.cosine_similarity(tesla_x.flatten(), exact_x.flatten(), dim=0).item(),
                "relative_error": ((tesla_x - exact_x).norm() / exact_x.norm()).item(),
                "norm_ratio": (tesla_x.norm() / exact_x.norm()).item(),
                "lr_grad_ratio": (tesla_lr / exact_lr).item()})
        rows.append({"name": "gradient_error", "syn_steps": steps, "draws": draws,
                     **{k: round(statistics.mean(f[k] for f in figures), 4) for k in figures[0]}})
        print(rows[-1], flush=True)
    return rows


def unroll_cost(steps_list: tuple[int, ...], repeats: int, device: str, clock: str) -> list[dict]:
    rows = []
    for steps in steps_list:
        stride = math.isqrt(steps - 1) + 1
        for unroll, every in [("full", 1), ("checkpointed", 1), ("checkpointed", stride), ("tesla", 1)]:
            command = [sys.executable, __file__, "--worker", unroll, str(steps), str(every), "--repeats",
                       str(repeats), "--device", device, "--clock", clock]
            done = subprocess.run(command, check=True, capture_output=True, text=True,
                                  env={**os.environ, **MALLOC_ENV})
            rows.append({"name": "unroll_cost", "unroll": unroll, "snapshot_every": every, "syn_steps": steps,
                         **json.loads(done.stdout.splitlines()[-1])})
            print(rows[-1], flush=True)
    return rows


def table(rows: list[dict]) -> list[str]:
    keys = [k for k in rows[0] if k != "name"]
    return [f"| {' | '.join(keys)} |", f"|{'---|' * len(keys)}",
            *[f"| {' | '.join(str(r[k]) for k in keys)} |" for r in rows]]


def write(out: Path, command: str, machine: str, error: list[dict], cost: list[dict], clock: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks-tesla.json").write_text(json.dumps({"command": command, "machine": machine,
                                                           "rows": error + cost}, indent=1) + "\n")
    lines = ["# TESLA unroll: gradient error, time and memory", "",
             f"Command: `{command}`  ", f"Machine: {machine}", "",
             "## Gradient error against the exact gradient (digits IPC 10, a real expert)", "",
             "Mean over draws of (start epoch, inner plan); image gradients unless named lr.", "", *table(error),
             "", "## Seconds per iteration and peak memory (digits IPC 10, whole set per step)", "",
             f"Seconds: {'CPU time of the worker process' if clock == 'cpu' else 'wall clock'}, median of the "
             "measured iterations after a warm-up. Peak memory: resident set on CPU (allocated tensors on CUDA) "
             "during the measured iterations, minus before them.", "", *table(cost), ""]
    (out / "benchmarks-tesla.md").write_text("\n".join(lines))


def steps_of(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(",")) if text else default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--buffer-dir", default="buffers", help="root holding experiments/buffer/digits.yaml's store")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke run of both sections")
    parser.add_argument("--error-steps", default=None, help="comma-separated syn_steps of gradient_error")
    parser.add_argument("--cost-steps", default=None, help="comma-separated syn_steps of unroll_cost")
    parser.add_argument("--draws", type=int, default=3, help="draws per syn_steps in gradient_error")
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations per configuration (median)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                        help="time by the wall clock, or by the worker's CPU time (a core shared with other jobs)")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder of benchmarks-tesla.md and .json")
    parser.add_argument("--note", default="", help="appended to the machine line (e.g. 'core shared with other jobs')")
    parser.add_argument("--worker", nargs=3, metavar=("UNROLL", "SYN_STEPS", "EVERY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        unroll, steps, every = args.worker[0], int(args.worker[1]), int(args.worker[2])
        settings = Settings(syn_steps=(steps,), repeats=args.repeats, ipc=10, cifar_ipc=FULL.cifar_ipc,
                            expert_images=FULL.expert_images, eval_epochs=FULL.eval_epochs, device=args.device,
                            clock=args.clock)
        print(json.dumps(distill_worker("digits", unroll, steps, every, settings)))
        return
    error_steps = steps_of(args.error_steps, (1, 5) if args.quick else ERROR_STEPS)
    cost_steps = steps_of(args.cost_steps, (4,) if args.quick else COST_STEPS)
    draws, repeats = (1, 1) if args.quick else (args.draws, args.repeats)
    error = gradient_error(args.buffer_dir, error_steps, draws, resolve_device(args.device))
    cost = unroll_cost(cost_steps, repeats, args.device, args.clock)
    command = "python scripts/bench_tesla.py " + " ".join(sys.argv[1:])
    machine = describe_machine() + (f"; {args.note}" if args.note else "")
    write(Path(args.out), command, machine, error, cost, args.clock)


if __name__ == "__main__":
    main()
