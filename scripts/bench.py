"""Speed and memory of dd's hot paths; prints a table and writes docs/benchmarks.md and docs/benchmarks.json.

    python scripts/bench.py                    # the full benchmark (run it on an otherwise idle machine)
    python scripts/bench.py --quick --out /tmp/bench   # a smoke run of every section (tiny settings)

Sections (each a function returning rows; add one to SECTIONS and its rows appear in both files):

- ``distill_iter``: seconds per distillation iteration (unroll + matching loss + backward + outer SGD
  step) and its peak memory, per dataset, syn_steps and unroll: full, checkpointed keeping every state,
  checkpointed keeping every ceil(sqrt(N))-th state (``--unroll-snapshot-every``). Each configuration runs
  in two fresh subprocesses: one timed under glibc's default allocator, one measuring memory with glibc told
  to return freed blocks at once (which makes every large allocation a fresh mmap, a cost the unroll that
  frees and rebuilds a step's graph pays N times and the full unroll once, so it is not timed). The student
  starts from random parameters and matches a random target (no buffer needed), through the real ``Student``,
  unroll and ``normalized_distance`` code.
- ``plain_step`` and ``inner_step_ratio``: one plain training step (DSA, forward, backward, SGD step) on
  the same synthetic batch with the same model, and one inner step of the full unroll (iteration time /
  syn_steps) divided by it.
- ``expert_epoch``: expert-training throughput (``train_epoch`` with the default expert recipe), images/s.
- ``eval_seeds`` and ``eval_speedup``: 5 evaluation seeds of ConvNet on digits trained one after another
  vs together (``dd.multiseed``), and the ratio.

Times are medians of ``--repeats`` runs after one warm-up. Ratios use figures measured in the same run.
``--clock cpu`` times by the process's CPU time instead of the wall clock: on a core shared with other jobs
(one thread) it counts this process's work alone.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dd.augment import DSA
from dd.buffer.experts import ExpertRecipe
from dd.data import class_indices
from dd.device import describe_machine, make_generator, resolve_device
from dd.distill.methods.base import normalized_distance
from dd.distill.unroll import Student, make_plan, make_unroll
from dd.functional import flatten_params
from dd.models import create_model
from dd.multiseed import train_and_test_seeds
from dd.realdata import prepare_data, random_subset
from dd.training import Protocol, classification_loss, train_epoch

# glibc returns freed blocks of 128 KiB and more to the system at once, so the resident set follows the
# live memory and "peak RSS during the measured iterations minus RSS before them" measures them alone.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


@dataclass(frozen=True)
class Settings:
    syn_steps: tuple[int, ...]
    repeats: int
    ipc: int  # synthetic images per class of digits
    cifar_ipc: int  # ... and of the CIFAR-shaped set (7x the pixels of an 8 px digit padded to 12 px)
    expert_images: int  # size of the CIFAR-shaped training set of the throughput section
    eval_epochs: int  # epochs of each network of the eval_seeds section
    device: str
    clock: str = "wall"  # "wall" (perf_counter) or "cpu" (process_time, for a shared core)


FULL = Settings(syn_steps=(10, 20, 40, 80), repeats=5, ipc=10, cifar_ipc=10, expert_images=5000, eval_epochs=50,
                device="auto")
QUICK = Settings(syn_steps=(2, 4), repeats=1, ipc=1, cifar_ipc=1, expert_images=64, eval_epochs=2, device="auto")
EVAL_SEEDS = 5
DATASETS = {"digits": "ConvNet", "cifar-shaped": "ConvNetD3"}


# -- the problems ------------------------------------------------------------------------------------------
def training_set(dataset: str, device: torch.device, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits training set (``n`` unused), or ``n`` random CIFAR-shaped images [n, 3, 32, 32] in 10
    balanced classes."""
    if dataset == "digits":
        data = prepare_data("digits", device)
        return data.train_images, data.train_labels
    g = make_generator(0)
    return torch.randn(n, 3, 32, 32, generator=g).to(device), torch.arange(n).remainder(10).to(device)


def synthetic_set(dataset: str, device: torch.device, ipc: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` images per class: the first real digits of each class, or random CIFAR-shaped tensors."""
    images, labels = training_set(dataset, device, 10 * ipc)
    picks = torch.cat([idx[:ipc] for idx in class_indices(labels, 10)])
    return images[picks].clone(), labels[picks].clone()


def model_for(dataset: str, images: torch.Tensor) -> torch.nn.Module:
    return create_model(DATASETS[dataset], images.shape[1], 10, tuple(images.shape[2:]), seed=0).to(images.device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn: Callable[[], object], repeats: int, device: torch.device, clock: str = "wall") -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs by ``clock`` (callers run it once before, as a warm-up)."""
    now = CLOCKS[clock]
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        tic = now()
        fn()
        synchronize(device)
        seconds.append(now() - tic)
    return statistics.median(seconds)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- memory ------------------------------------------------------------------------------------------------
def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024


def reset_peak(device: torch.device) -> float:
    """Start a peak-memory window; returns the memory in use (MB) at its start."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (VmHWM) to the current RSS
    return _status_mb("VmRSS:")


def peak(device: torch.device) -> float:
    """Peak memory (MB) since ``reset_peak``: allocated tensors on CUDA, the resident set on CPU."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _status_mb("VmHWM:")


# -- distill_iter: one configuration, in a fresh process ----------------------------------------------------
def worker_env() -> dict[str, str]:
    return {**os.environ, **MALLOC_ENV}


def distill_worker(dataset: str, unroll_name: str, syn_steps: int, snapshot_every: int, settings: Settings) -> dict:
    """Seconds per distillation iteration and the peak memory of the measured iterations."""
    device = resolve_device(settings.device)
    images, labels = synthetic_set(dataset, device, settings.ipc)
    model = model_for(dataset, images)
    student = Student(model, DSA())
    unroll = make_unroll(unroll_name, snapshot_every)
    w_start = flatten_params(model)
    w_target = w_start + 0.01 * torch.randn(w_start.shape, generator=make_generator(1)).to(device)
    images.requires_grad_(True)
    lr = torch.tensor(0.01, device=device, requires_grad=True)
    optimizers = [torch.optim.SGD([images], lr=100.0, momentum=0.5), torch.optim.SGD([lr], lr=1e-5, momentum=0.5)]
    generator = make_generator(2)

    def iteration() -> None:
        plan = make_plan(images.shape[0], images.shape[0], syn_steps, generator, device)
        (w_final,) = unroll(student, w_start, images, labels, lr, plan, [syn_steps])
        loss = normalized_distance(w_final, w_start, w_target)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            opt.step()

    iteration()  # warm-up
    synchronize(device)
    before = reset_peak(device)
    seconds = timed(iteration, settings.repeats, device, settings.clock)
    return {"seconds": seconds, "peak_mem_mb": round(peak(device) - before, 1)}


def variants(syn_steps: int) -> list[tuple[str, int]]:
    """(unroll, snapshot stride) pairs measured at ``syn_steps``: the full unroll, the checkpointed one keeping
    every state (fastest) and keeping every ceil(sqrt(N))-th (least memory: about 2 sqrt(N) states)."""
    stride = math.isqrt(syn_steps - 1) + 1
    return [("full", 1), ("checkpointed", 1), *([("checkpointed", stride)] if stride > 1 else [])]


def ipc_of(dataset: str, settings: Settings) -> int:
    return settings.ipc if dataset == "digits" else settings.cifar_ipc


def run_worker(command: list[str], env: dict[str, str]) -> dict:
    """The figures a ``--worker`` subprocess prints as its last line."""
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.splitlines()[-1])


def distill_iter(settings: Settings) -> list[dict]:
    rows = []
    for dataset in DATASETS:
        for syn_steps in settings.syn_steps:
            for unroll, stride in variants(syn_steps):
                command = [sys.executable, __file__, "--worker", dataset, unroll, str(syn_steps),
                           "--snapshot-every", str(stride), "--ipc", str(ipc_of(dataset, settings)),
                           "--device", settings.device, "--clock", settings.clock]
                timing = run_worker([*command, "--repeats", str(settings.repeats)], os.environ)
                memory = run_worker([*command, "--repeats", "1"], worker_env())
                rows.append({"name": "distill_iter", "unroll": unroll, "snapshot_every": stride,
                             "syn_steps": syn_steps, "dataset": dataset, "ipc": ipc_of(dataset, settings),
                             "seconds": timing["seconds"], "peak_mem_mb": memory["peak_mem_mb"]})
                print(rows[-1], flush=True)
    return rows


# -- plain step and the inner-step ratio --------------------------------------------------------------------
def plain_step_seconds(dataset: str, device: torch.device, ipc: int, repeats: int, clock: str = "wall") -> float:
    """One DSA + forward + backward + SGD step of the model on the whole synthetic set."""
    images, labels = synthetic_set(dataset, device, ipc)
    model = model_for(dataset, images)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    augment, generator = DSA(), make_generator(0)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        classification_loss(model(augment(images, generator)), labels).backward()
        optimizer.step()

    step()  # warm-up
    return timed(step, repeats, device, clock)


def plain_step(settings: Settings) -> list[dict]:
    device = resolve_device(settings.device)
    return [{"name": "plain_step", "dataset": dataset, "ipc": ipc_of(dataset, settings),
             "seconds": plain_step_seconds(dataset, device, ipc_of(dataset, settings), 10 * settings.repeats,
                                           settings.clock)}
            for dataset in DATASETS]


def inner_step_ratio(rows: list[dict]) -> list[dict]:
    """(seconds per full-unroll iteration / syn_steps) / seconds per plain step, per dataset and syn_steps."""
    plain = {r["dataset"]: r["seconds"] for r in rows if r["name"] == "plain_step"}
    return [{"name": "inner_step_ratio", "dataset": r["dataset"], "syn_steps": r["syn_steps"], "ipc": r["ipc"],
             "ratio": r["seconds"] / r["syn_steps"] / plain[r["dataset"]]}
            for r in rows if r["name"] == "distill_iter" and r["unroll"] == "full" and r["dataset"] in plain]


# -- expert throughput --------------------------------------------------------------------------------------
def expert_epoch(settings: Settings) -> list[dict]:
    """Images per second of one expert-training epoch (default recipe: SGD, batch 256, DSA)."""
    device = resolve_device(settings.device)
    recipe = ExpertRecipe()
    rows = []
    for dataset in DATASETS:
        images, labels = training_set(dataset, device, settings.expert_images)
        model = model_for(dataset, images)
        optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
        augment, generator = DSA(recipe.dsa_strategy), make_generator(0)
        epoch = functools.partial(train_epoch, model, images, labels, optimizer, recipe.batch_size, augment, generator)
        epoch()  # warm-up
        seconds = timed(epoch, settings.repeats, device, settings.clock)
        rows.append({"name": "expert_epoch", "dataset": dataset, "images": images.shape[0], "seconds": seconds,
                     "images_per_s": images.shape[0] / seconds})
    return rows


# -- evaluation of several seeds ----------------------------------------------------------------------------
def eval_seeds(settings: Settings) -> list[dict]:
    """Seconds to train and test EVAL_SEEDS ConvNets on digits (random real images, IPC 1 and the bench's
    IPC), one seed after another vs all seeds in one vmap (``dd.multiseed``)."""
    device = resolve_device(settings.device)
    data = prepare_data("digits", device, "data", False, "standard", None)
    protocol = Protocol(epochs=settings.eval_epochs)
    seeds = list(range(EVAL_SEEDS))
    rows = []
    for ipc in dict.fromkeys((1, settings.ipc)):
        train = random_subset(data, ipc, seed=0)
        for batched in (False, True):
            run = functools.partial(train_and_test_seeds, "ConvNet", 1, 10, (8, 8), train, data.test, 0.01, protocol,
                                    seeds, batched)
            train_and_test_seeds("ConvNet", 1, 10, (8, 8), train, data.test, 0.01, Protocol(epochs=1), seeds[:2],
                                 batched)  # warm-up
            seconds = timed(run, settings.repeats, device, settings.clock)
            rows.append({"name": "eval_seeds", "dataset": "digits", "ipc": ipc, "seeds": len(seeds),
                         "epochs": protocol.epochs, "batched": batched, "seconds": seconds})
    return rows


def eval_speedup(rows: list[dict]) -> list[dict]:
    """Sequential over batched seconds of the eval_seeds section, per IPC."""
    runs = {(r["ipc"], r["batched"]): r["seconds"] for r in rows if r["name"] == "eval_seeds"}
    return [{"name": "eval_speedup", "dataset": "digits", "ipc": ipc, "seeds": EVAL_SEEDS,
             "speedup": runs[(ipc, False)] / runs[(ipc, True)]} for ipc, batched in runs if batched]


SECTIONS: list[Callable[[Settings], list[dict]]] = [distill_iter, plain_step, expert_epoch, eval_seeds]
DERIVED: list[Callable[[list[dict]], list[dict]]] = [inner_step_ratio, eval_speedup]


# -- report -------------------------------------------------------------------------------------------------
def fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def tables(rows: list[dict]) -> list[str]:
    """One Markdown table per row name, with the keys of its rows as columns."""
    lines = []
    for name in dict.fromkeys(r["name"] for r in rows):
        group = [r for r in rows if r["name"] == name]
        keys = [k for k in dict.fromkeys(k for r in group for k in r) if k != "name"]
        lines += [f"### {name}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in group]
        lines.append("")
    return lines


def targets(rows: list[dict]) -> list[str]:
    """dd's speed and memory goals, checked on this run's figures, per dataset: memory growth of the checkpointed
    unroll from the smallest to the largest syn_steps, its time over the full unroll's, the inner-step ratio."""
    lines = []
    for dataset in DATASETS:
        iters = [r for r in rows if r["name"] == "distill_iter" and r["dataset"] == dataset]
        full = {r["syn_steps"]: r for r in iters if r["unroll"] == "full"}
        for label, every_state in (("every state", True), ("every ceil(sqrt(N))-th state", False)):
            mode = {r["syn_steps"]: r for r in iters
                    if r["unroll"] == "checkpointed" and (r["snapshot_every"] == 1) == every_state}
            if len(mode) < 2:
                continue
            low, high = min(mode), max(mode)
            growth = mode[high]["peak_mem_mb"] / mode[low]["peak_mem_mb"] - 1
            slowdown = max(mode[s]["seconds"] / full[s]["seconds"] for s in mode)
            lines.append(f"- {dataset}, checkpointed keeping {label}: peak memory grows {100 * growth:+.1f} % from "
                         f"syn_steps {low} to {high} (target <= +10 %); time is at most {slowdown:.2f}x the full "
                         f"unroll's (target <= 1.35x)")
        for r in (r for r in rows if r["name"] == "eval_speedup" and r["dataset"] == dataset):
            lines.append(f"- {dataset}, IPC {r['ipc']}: {r['seeds']} evaluation seeds batched are {r['speedup']:.2f}x "
                         "as fast as sequential (target >= 3x)")
        ratios = [r["ratio"] for r in rows if r["name"] == "inner_step_ratio" and r["dataset"] == dataset]
        if ratios:
            lines.append(f"- {dataset}: one inner step of the full unroll is {min(ratios):.2f}x to "
                         f"{max(ratios):.2f}x a plain training step (target <= 3.5x)")
    return lines


def write_report(rows: list[dict], out: Path, command: str, machine: str, settings: Settings) -> None:
    device = resolve_device(settings.device)
    memory = ("torch.cuda.max_memory_allocated during the measured iterations minus the memory allocated before "
              "them" if device.type == "cuda" else
              "peak resident set size (VmHWM, reset through /proc/self/clear_refs) during the measured iterations "
              "minus the resident set just before them, in a fresh process per configuration (not the timed one), with "
              "glibc told to return freed blocks of 128 KiB and more at once")
    lines = ["# Benchmarks", "", f"Machine: {machine}  ", f"Command: `{command}`  ",
             f"Date: {time.strftime('%Y-%m-%d')}", "",
             f"Seconds ({'CPU time of the process' if settings.clock == 'cpu' else 'wall clock'}) are medians of "
             f"{settings.repeats} runs after a warm-up (plain steps: {10 * settings.repeats}); "
             f"`peak_mem_mb` is {memory}. "
             "Distillation: batch_syn = all images, DSA on, random start and target parameters.", "",
             "## Targets", "", *targets(rows), "", "## Figures", "", *tables(rows)]
    out.mkdir(parents=True, exist_ok=True)
    from _sections import write_section

    write_section(out / "benchmarks.md", "bench", "\n".join(lines))  # the other scripts' sections stay
    (out / "benchmarks.json").write_text(json.dumps({"machine": machine, "command": command, "rows": rows},
                                                    indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke run of every section")
    parser.add_argument("--syn-steps", help="comma-separated syn_steps of the distill_iter section")
    parser.add_argument("--repeats", type=int, help="timed runs per figure (after one warm-up)")
    parser.add_argument("--ipc", type=int, help="synthetic images per class of digits in the distillation sections")
    parser.add_argument("--cifar-ipc", type=int, help="... and of the CIFAR-shaped set")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--clock", default="wall", choices=tuple(CLOCKS),
                        help="time by the wall clock, or by this process's CPU time (a core shared with other jobs)")
    parser.add_argument("--out", default="docs", help="folder for benchmarks.md and benchmarks.json")
    parser.add_argument("--snapshot-every", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=3, metavar=("DATASET", "UNROLL", "SYN_STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    settings = Settings(tuple(int(s) for s in args.syn_steps.split(",")) if args.syn_steps else base.syn_steps,
                        args.repeats or base.repeats, args.ipc or base.ipc, args.cifar_ipc or base.cifar_ipc,
                        base.expert_images, base.eval_epochs, args.device, args.clock)
    if args.worker:
        dataset, unroll, syn_steps = args.worker
        print(json.dumps(distill_worker(dataset, unroll, int(syn_steps), args.snapshot_every, settings)))
        return
    rows = [row for section in SECTIONS for row in section(settings)]
    rows += [row for derive in DERIVED for row in derive(rows)]
    machine = describe_machine()
    write_report(rows, Path(args.out), "python scripts/bench.py " + " ".join(sys.argv[1:]), machine, settings)
    print("\n".join(tables(rows) + targets(rows)))


if __name__ == "__main__":
    main()
