"""The benchmark rows of scripts/gpu_check.sh: distillation s/it and peak memory (full vs checkpointed unroll) at the
CIFAR-10 IPC 10 and 50 shapes, evaluation seeds batched vs sequential, and bf16 vs fp32 evaluation training.

    python scripts/gpu_check.py --out docs                 # on a GPU: docs/benchmarks-gpu.{md,json}
    python scripts/gpu_check.py --device cpu --quick --out /tmp/g

Data are generated tensors of the real shape (3x32x32, 10 classes); the distillation rows run the real ``Student``,
unrolls and ``normalized_distance`` from random start and target parameters (MTT's CIFAR-10 settings: syn_steps 30,
the whole set per step). Seconds are medians over ``repeats`` after a warm-up; peak memory is
``torch.cuda.max_memory_allocated`` on CUDA, the resident set's high-water mark on the CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from dd.augment import DSA
from dd.device import describe_machine, make_generator, resolve_device
from dd.distill.methods.base import normalized_distance
from dd.distill.unroll import Student, make_plan, make_unroll
from dd.functional import flatten_params
from dd.models import create_model
from dd.multiseed import train_and_test_seeds
from dd.protocols import get_protocol

SHAPE, CLASSES = (3, 32, 32), 10


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def median_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        synchronize(device)
        tic = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - tic)
    return round(statistics.median(times), 4)


def synthetic(ipc: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = make_generator(seed)
    n = ipc * CLASSES
    return torch.randn(n, *SHAPE, generator=g).to(device), torch.arange(n).remainder(CLASSES).to(device)


def distill_case(device: torch.device, ipc: int, unroll_name: str, syn_steps: int, repeats: int) -> dict:
    """Seconds and peak memory of one distillation iteration at ``ipc`` images per class."""
    images, labels = synthetic(ipc, device)
    images.requires_grad_(True)
    model = create_model("ConvNet", SHAPE[0], CLASSES, SHAPE[1:], seed=0).to(device)
    student, unroll = Student(model, DSA()), make_unroll(unroll_name)
    w_start = flatten_params(model)
    w_target = w_start + 0.01 * torch.randn(w_start.shape, generator=make_generator(1)).to(device)
    lr = torch.tensor(0.01, device=device, requires_grad=True)
    generator = make_generator(2)

    def iteration() -> None:
        plan = make_plan(images.shape[0], images.shape[0], syn_steps, generator, device)
        (w,) = unroll(student, w_start, images, labels, lr, plan, [syn_steps])
        normalized_distance(w, w_start, w_target).backward()
        images.grad = lr.grad = None

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_seconds(iteration, repeats, device)
    return {"name": "distill_iter", "ipc": ipc, "syn_steps": syn_steps, "unroll": unroll_name, "seconds": seconds,
            "peak_mb": peak_mb(device)}


def distill_rows(device: torch.device, ipcs: list[int], syn_steps: int, repeats: int) -> list[dict]:
    rows = []
    for ipc in ipcs:
        for unroll_name in ("full", "checkpointed"):
            rows.append(distill_case(device, ipc, unroll_name, syn_steps, repeats))
            print(rows[-1], flush=True)
    return rows


def eval_case(device: torch.device, amp: str, batched: bool, epochs: int, seeds: int, repeats: int) -> dict:
    """Seconds and mean test accuracy of ``seeds`` ConvNets trained on an IPC-10 set under the mtt protocol."""
    train, test = synthetic(10, device), synthetic(10, device, seed=1)
    protocol = get_protocol("mtt", epochs=epochs, amp=amp)
    accs: list[float] = []

    def run() -> None:
        accs[:] = train_and_test_seeds("ConvNet", SHAPE[0], CLASSES, SHAPE[1:], train, test, 0.01, protocol,
                                       list(range(seeds)), batched=batched)

    seconds = median_seconds(run, repeats, device)
    return {"name": "eval_seeds", "amp": amp, "seeds": seeds, "epochs": epochs, "seconds": seconds,
            "mean_acc": round(sum(accs) / len(accs), 4)}


def eval_rows(device: torch.device, epochs: int, seeds: int, repeats: int) -> list[dict]:
    """Evaluation training: seeds sequential vs batched (fp32), and bf16 sequential."""
    rows = []
    for mode, amp, batched in (("sequential", "none", False), ("batched", "none", True), ("bf16", "bf16", False)):
        rows.append({"mode": mode, **eval_case(device, amp, batched, epochs, seeds, repeats)})
        print(rows[-1], flush=True)
    by = {r["mode"]: r["seconds"] for r in rows}
    rows.append({"name": "eval_ratios", "batched_speedup": round(by["sequential"] / by["batched"], 3),
                 "bf16_speedup": round(by["sequential"] / by["bf16"], 3)})
    return rows


def write(rows: list[dict], out: Path, command: str, extra: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    (out / "benchmarks-gpu.json").write_text(json.dumps({"machine": machine, "command": command, **extra,
                                                         "rows": rows}, indent=1) + "\n")
    lines = ["# GPU check", "", f"Machine: {machine}  ", f"Command: `{command}`", "",
             __doc__.split("\n\n", 2)[2].strip().replace("\n", " "), ""]
    for key, value in extra.items():
        lines.append(f"- {key}: {value}")
    for name in dict.fromkeys(r["name"] for r in rows):
        group = [r for r in rows if r["name"] == name]
        columns = [c for c in dict.fromkeys(k for r in group for k in r) if c != "name"]
        lines += ["", f"## {name}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in group]
    (out / "benchmarks-gpu.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke run of every row")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--note", action="append", default=[], help="KEY=VALUE lines for the report (the shell "
                        "script's test and method results)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.quick:
        rows = distill_rows(device, [1], 2, 1) + eval_rows(device, 1, 2, 1)
    else:
        rows = distill_rows(device, [10, 50], 30, 3) + eval_rows(device, 300, 5, 1)
    extra = dict(note.split("=", 1) for note in args.note)
    command = "python scripts/gpu_check.py " + " ".join(f"'{a}'" if " " in a else a for a in sys.argv[1:])
    write(rows, Path(args.out), command, extra)
    print(f"wrote {args.out}/benchmarks-gpu.md and .json")


if __name__ == "__main__":
    main()
