"""Peak memory of one distillation iteration for every MTT/FTD/DATM/AST preset, full vs checkpointed unroll.

    python scripts/bench_memory.py                   # every preset; writes its section of docs/benchmarks.md
    python scripts/bench_memory.py --quick --only digits --out /tmp/m.md

Each distinct shape (dataset, student model, synthetic images, minibatch, soft labels) runs in a fresh process on
generated data of the real shape (random images, random start and target parameters, the real ``Student``, unrolls
and ``normalized_distance``): the full unroll for 2 and 3 inner steps, the checkpointed one for 2. Peak memory is
the CPU resident set (VmHWM reset through /proc/self/clear_refs, glibc told to return freed blocks at once) or, on
CUDA, ``torch.cuda.max_memory_allocated``, above the memory in use before the iteration. One inner step's graph G
is the 3-step peak minus the 2-step one (from the second step on, the set-sized gradient buffers of the images
are already there: the 1-step peak lacks one, which made 1-to-2-step differences overstate G for large sets). The
full unroll's peak at the preset's ``syn_steps`` N is the 2-step peak plus N - 2 more graphs; the checkpointed
one's is its 2-step peak plus the kept states (N parameter vectors, 2N with AST's momentum). A shape whose
minibatch exceeds ``--max-batch``, or whose 2-step full unroll would exceed ``--max-gb`` by the estimate of
``dd.distill.memory``, is measured at a smaller minibatch b and G scaled linearly in the minibatch (marked ``scaled
from b``; measured linear: 11.9 and 11.6 MiB per image at 4 and 16 Tiny ImageNet images): the full unroll's
peak is then the measured 2-step peak plus N B/b - 2 graphs of b images, and the checkpointed one's its measured
peak plus a graph of the B - b images not measured, upper bounds that add what may not be live at once. The last
columns give ``dd.distill.memory``'s estimate, what ``unroll: auto`` picks with 24 GiB free (checkpointed with an
``--unroll-chunk`` c when one step of the whole minibatch would not fit either) and the checkpointed peak at that
chunk (a graph of c images in place of b).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from _results import fail

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("mtt", "ftd", "datm", "ast")
SECTION = "bench_memory"
GIB = 2**30
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def presets(only: str | None) -> list[dict]:
    """The shape of every preset: method, dataset, model, ipc, images N, minibatch, syn_steps, soft labels."""
    from dd.config import load_yaml, make_config
    from dd.data import get_spec
    from dd.distill.registry import get_method

    rows = []
    for method in METHODS:
        for path in sorted((ROOT / "experiments" / method).glob("*.yaml")):
            if only and only not in path.stem:
                continue
            values = load_yaml(path)
            config = make_config(get_method(values.get("method", method)).config, values, str(path))
            spec = get_spec(config.dataset)
            if not spec.num_classes:  # a data-defined set (imagefolder): no shape before its folder is read
                continue
            images = config.ipc * spec.num_classes
            rows.append({"preset": f"{method}/{path.stem}", "dataset": config.dataset, "model": config.model,
                         "shape": [spec.channels, *spec.size], "classes": spec.num_classes, "images": images,
                         "batch": min(config.batch_syn or images, images), "syn_steps": config.syn_steps,
                         "soft": getattr(config, "soft_labels", False), "momentum": method == "ast",
                         "unroll": values.get("unroll", "-")})
    return rows


def shape_key(row: dict) -> tuple:
    return row["model"], tuple(row["shape"]), row["classes"], row["images"], row["batch"], row["soft"]


def _sizes(row: dict) -> tuple[int, int]:
    """(activation floats of one image, parameters) of the row's model."""
    from dd.distill.memory import activation_floats
    from dd.models import create_model

    model = create_model(row["model"], row["shape"][0], row["classes"], tuple(row["shape"][1:]), seed=0)
    return activation_floats(model, row["shape"]), sum(p.numel() for p in model.parameters())


def estimate(row: dict, batch: int, steps: int) -> int:
    from dd.distill.memory import full_unroll_bytes

    return full_unroll_bytes(*_sizes(row), batch, steps, row["images"], math.prod(row["shape"]))


def auto_pick(row: dict, free: int = 24 * GIB) -> tuple[str, int | None]:
    """(the unroll ``auto`` picks for the row with ``free`` bytes, its ``--unroll-chunk`` or None)."""
    from dd.distill.memory import checkpointed_chunk, pick_unroll

    name, _ = pick_unroll(estimate(row, row["batch"], row["syn_steps"]), free)
    if name == "full":
        return name, None
    return name, checkpointed_chunk(*_sizes(row), row["batch"], row["syn_steps"], 1, row["images"],
                                    math.prod(row["shape"]), free)


def worker(row: dict, batch: int, device_name: str) -> dict:
    """Peak MiB of one iteration: full unroll with 2 and 3 steps, checkpointed with 2, minibatch ``batch``."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench import peak, reset_peak, synchronize

    from dd.augment import DSA
    from dd.device import make_generator, resolve_device
    from dd.distill.methods.base import normalized_distance
    from dd.distill.unroll import Student, make_plan, make_unroll
    from dd.functional import flatten_params
    from dd.models import create_model

    device = resolve_device(device_name)
    g = make_generator(0)
    n, k = row["images"], row["classes"]
    images = torch.randn(n, *row["shape"], generator=g).to(device).requires_grad_(True)
    labels = (torch.randn(n, k, generator=g).to(device).requires_grad_(True) if row["soft"]
              else torch.arange(n).remainder(k).to(device))
    model = create_model(row["model"], row["shape"][0], k, tuple(row["shape"][1:]), seed=0).to(device)
    student = Student(model, DSA())
    w_start = flatten_params(model)
    w_target = w_start + 0.01 * torch.randn(w_start.shape, generator=g).to(device)
    lr = torch.tensor(0.01, device=device, requires_grad=True)

    def iteration(unroll_name: str, steps: int) -> tuple[float, float]:
        plan = make_plan(n, batch, steps, g, device)
        synchronize(device)
        before = reset_peak(device)
        tic = time.perf_counter()
        (w,) = make_unroll(unroll_name)(student, w_start, images, labels, lr, plan, [steps])
        normalized_distance(w, w_start, w_target).backward()
        synchronize(device)
        seconds = time.perf_counter() - tic
        images.grad = lr.grad = None
        if labels.requires_grad:
            labels.grad = None
        return round(peak(device) - before, 1), round(seconds, 2)

    iteration("checkpointed", 1)  # warm-up: kernels, allocator
    (full2, s_full2), (full3, _), (ckpt2, s_ckpt2) = (iteration("full", 2), iteration("full", 3),
                                                      iteration("checkpointed", 2))
    return {"full2_mb": full2, "full3_mb": full3, "ckpt2_mb": ckpt2, "s_full2": s_full2, "s_ckpt2": s_ckpt2}


def run_worker(row: dict, args: argparse.Namespace) -> tuple[int, dict]:
    """(the minibatch measured, ``worker``'s figures) for the shape of ``row``, in a fresh process."""
    batch = min(row["batch"], args.max_batch)
    while batch > 1 and estimate(row, batch, 2) > args.max_gb * GIB:
        batch = max(1, batch // 2)
    cmd = [sys.executable, __file__, "--worker", json.dumps(row), "--batch", str(batch), "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **MALLOC_ENV})
    if out.returncode:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        fail(f"the worker for {row['preset']} failed ({last}); the rows so far are printed above")
    return batch, json.loads(out.stdout.strip().splitlines()[-1])


def extrapolate(row: dict, batch: int, got: dict) -> dict:
    """The preset's table row: the measured figures and their extrapolation to its syn_steps N and minibatch."""
    scale = row["batch"] / batch
    step = max(0.0, got["full3_mb"] - got["full2_mb"])  # one more inner step's graph, at the measured minibatch
    n = row["syn_steps"]
    state_mb = _sizes(row)[1] * 4 / 2**20 * (2 if row["momentum"] else 1)
    full_at_n = got["full2_mb"] + (n * scale - 2) * step
    est = estimate(row, row["batch"], n)
    auto, chunk = auto_pick(row)

    def checkpointed(graph_images: int) -> float:  # its measured peak, the graph resized, the other kept states
        return got["ckpt2_mb"] + (graph_images / batch - 1) * step + (n - 2) * state_mb

    ckpt_at_n, ckpt_auto = checkpointed(row["batch"]), checkpointed(min(chunk or row["batch"], row["batch"]))
    return {"preset": row["preset"], "images": row["images"], "batch": row["batch"], "syn_steps": n,
            "measured_at": "real batch" if scale == 1 else f"scaled from {batch}",
            "full_2step_mb": got["full2_mb"], "full_3step_mb": got["full3_mb"], "ckpt_2step_mb": got["ckpt2_mb"],
            "full_at_N_gib": round(full_at_n / 1024, 2), "ckpt_at_N_gib": round(ckpt_at_n / 1024, 2),
            "estimate_full_gib": round(est / GIB, 2), "auto_24gib": auto + (f", chunk {chunk}" if chunk else ""),
            "auto_at_N_gib": round((full_at_n if auto == "full" else ckpt_auto) / 1024, 2),
            "preset_unroll": row["unroll"], "s_full_2step": got["s_full2"], "s_ckpt_2step": got["s_ckpt2"]}


def report(rows: list[dict], command: str, machine: str) -> str:
    columns = list(rows[0])
    lines = ["## Memory per preset (scripts/bench_memory.py)", "",
             f"Machine: {machine}; core shared with other jobs  ", f"Command: `{command}`", "",
             __doc__.split("\n\n", 2)[2].strip().replace("\n", " "), "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="presets whose file name contains this (e.g. cifar10_ipc10)")
    parser.add_argument("--max-gb", type=float, default=6.0, help="largest 2-step full unroll measured as it is")
    parser.add_argument("--max-batch", type=int, default=1_000_000,
                        help="measure at most this minibatch and scale (the step's memory is linear in it)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="the first two shapes only (a smoke run)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker), args.batch, args.device)))
        return
    from dd.device import describe_machine

    measured: dict[tuple, tuple[int, dict]] = {}
    rows = []
    chosen = presets(args.only)
    if not chosen:
        fail(f"--only {args.only}: no {'/'.join(METHODS)} preset's file name contains it (e.g. --only cifar10_ipc10)")
    for row in chosen:
        key = shape_key(row)
        if key not in measured:
            if args.quick and len(measured) >= 2:
                continue
            measured[key] = run_worker(row, args)
        rows.append(extrapolate(row, *measured[key]))
        print(rows[-1], flush=True)
    sys.path.insert(0, str(ROOT / "scripts"))
    from _sections import write_section

    command = "python scripts/bench_memory.py " + " ".join(sys.argv[1:])
    write_section(Path(args.out), SECTION, report(rows, command, describe_machine()))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
