"""Seconds per iteration and peak memory of the expert pool's access pattern during a distillation.

    python scripts/bench_experts.py --store /tmp/experts --generate   # 100 CIFAR-10-shaped experts (13 GB)
    python scripts/bench_experts.py --store /tmp/experts --before /path/to/older/checkout

Each iteration does what the engine asks of ``dd.distill.experts.ExpertPool``: draw an expert, read row t (t uniform
below ``--max-start``) and row t+M (M = ``--expert-epochs``), on the device. The experts are generated tensors of the
real size: ConvNet (width 128, depth 3, instance norm) on 3x32x32 images with 10 classes, ``--epochs`` + 1 rows.
Each measurement runs in a fresh process (peak RSS = ru_maxrss); ``--before`` runs the same loop on another
checkout's dd (an ExpertPool that takes ``max_cached`` experts) for the before/after rows. The page cache is
whatever the machine holds (warm after ``--generate`` when the files fit in RAM).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from dd.buffer.store import TrajectoryStore
from dd.device import describe_machine, make_generator, resolve_device
from dd.functional import ParamSpec
from dd.io import atomic_write_json
from dd.models import create_model

SECTION = "bench_experts"


def generate(root: Path, experts: int, epochs: int) -> None:
    """A store of ``experts`` trajectories [epochs+1, P] of the CIFAR-10 ConvNet: expert 0 is random, the others are
    byte copies of its file with their own records (the pool reads and checksums each file as if distinct; copying
    instead of drawing and hashing each one keeps the generation I/O-bound)."""
    model = create_model("ConvNet", 3, 10, (32, 32), seed=0)
    named = list(model.named_parameters())
    spec = ParamSpec(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))
    header = {"dataset": {"name": "cifar10", "preprocess": {"kind": "zca"}}, "model": {"name": "ConvNet"},
              "param_spec": spec.to_json(), "recipe": {"optimizer": "sgd", "epochs": epochs, "generated": True},
              "num_epochs": epochs}
    store = TrajectoryStore.create(root, header)
    if 0 in store.missing(1):
        store.write_expert(0, torch.randn(epochs + 1, spec.numel, generator=make_generator(0)), {"seed": 0})
    first = store.record(0)
    for i in store.missing(experts):
        shutil.copyfile(store.tensor_path(0), store.tensor_path(i))
        atomic_write_json(store.record_path(i), {**first, "index": i, "file": store.tensor_path(i).name, "seed": i})
        print(f"expert {i + 1}/{experts}", end="\r", flush=True)
    print(f"\n{root}: {experts} experts of {store.shape} float32, "
          f"{store.tensor_path(0).stat().st_size / 2**20:.0f} MiB each")


def make_pool(store: TrajectoryStore, device: torch.device, args: argparse.Namespace):
    """This checkout's pool (bounded in MiB, window M+1) or an older one bounded in experts."""
    from dd.distill.experts import ExpertPool

    params = inspect.signature(ExpertPool).parameters
    if "cache_mb" in params:
        return ExpertPool(store, device, args.cache_mb, args.expert_epochs + 1), f"cache {args.cache_mb:g} MiB"
    return ExpertPool(store, device, args.max_cached), f"cache {args.max_cached} experts"


def measure(args: argparse.Namespace) -> dict:
    """Run the access pattern in this process and return its row."""
    device = resolve_device(args.device)
    store = TrajectoryStore.open(args.store)
    pool, cache = make_pool(store, device, args)
    generator = make_generator(1)
    if args.warm:  # the steady state of a long run: every file read (and, in the new pool, checksummed) once
        for index in store.completed():
            pool.get(index)[0]
    times = []
    for _ in range(args.iterations):
        tic = time.perf_counter()
        _, rows = pool.sample(generator)
        t = int(torch.randint(args.max_start, (1,), generator=generator))
        start, target = rows[t], rows[t + args.expert_epochs]
        float((target - start).norm())  # the iteration uses both rows on the device: wait for them
        times.append(time.perf_counter() - tic)
    half = times[len(times) // 2:]
    row = {"code": args.label, "cache": cache, "warm": args.warm, "experts": len(store.completed()),
           "iterations": args.iterations,
           "s_per_it": round(sum(times) / len(times), 4), "s_per_it_second_half": round(sum(half) / len(half), 4),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        row["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return row


def child(code: Path, label: str, args: argparse.Namespace) -> dict:
    """``measure`` in a fresh process importing dd from ``code``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", "--label", label, "--store", args.store,
           "--iterations", str(args.iterations), "--max-start", str(args.max_start), "--expert-epochs",
           str(args.expert_epochs), "--cache-mb", str(args.cache_mb), "--max-cached", str(args.max_cached),
           "--device", args.device, *(["--warm"] if args.warm else [])]
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def report(rows: list[dict], args: argparse.Namespace, command: str) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["## Expert streaming (scripts/bench_experts.py)", "",
             f"Machine: {describe_machine()}; core shared with other jobs  ",
             f"Command: `{command}`", "",
             f"{rows[0]['experts']} CIFAR-10-shaped experts (ConvNet, 3x32x32, 10 classes, "
             f"{args.epochs_label} rows each); per iteration one expert drawn, rows t and t+{args.expert_epochs} "
             f"read (t < {args.max_start}). `warm`: every expert read once before the timed iterations (the steady "
             "state of a long run; the new pool checksums each file then, once); else the timed iterations include "
             "each file's first read. `s_per_it_second_half`: the last half of the iterations. Peak RSS: ru_maxrss "
             "of the process (it counts the touched pages of the mapped files, which the kernel may reclaim).", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="folder of the generated store")
    parser.add_argument("--generate", action="store_true", help="write the store's missing experts and exit")
    parser.add_argument("--experts", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=50, help="expert epochs (rows = epochs + 1)")
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--max-start", type=int, default=20, help="start epochs drawn below this (MTT CIFAR-10)")
    parser.add_argument("--expert-epochs", type=int, default=2, help="M (MTT CIFAR-10)")
    parser.add_argument("--cache-mb", type=float, default=1024.0, help="this checkout's pool: cache in MiB")
    parser.add_argument("--warm", action="store_true", help="read every expert once before timing")
    parser.add_argument("--max-cached", type=int, default=64, help="an older pool: experts cached")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--before", help="a checkout whose dd gives the 'before' row")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"))
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--label", default="this", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(Path(args.store), args.experts, args.epochs)
        return
    if args.measure:
        print(json.dumps(measure(args)))
        return
    here = Path(__file__).resolve().parents[1]
    rows = ([child(Path(args.before), "before", args)] if args.before else []) + [child(here, "after", args)]
    for row in rows:
        print(row)
    args.epochs_label = TrajectoryStore.open(args.store).shape[0]
    from _sections import write_section

    command = "python scripts/bench_experts.py " + " ".join(sys.argv[1:])
    write_section(Path(args.out), SECTION, report(rows, args, command))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
