"""Reproduce docs/results-lr-guard.md: how many distillation runs stay usable with and without the learned-lr
floor (--lr-floor), over many seeds of one preset.

    python scripts/results_lr_guard.py                          # MTT digits IPC 1, 10 seeds, both settings
    python scripts/results_lr_guard.py --seeds 2 --iterations 20 --out /tmp/smoke   # a quick smoke run

A run is usable when it finishes (no divergence error), its learned lr is positive and its final set's
validation accuracy (the in-run evaluation, ConvNet) is at least --usable-accuracy. Every run resumes.
Extra flags go to dd.distill (e.g. --lr-img 10 --buffer PATH).

A guarded run whose unguarded twin (same seed, --lr-floor 0) finished with its lr above the floor at every
iteration (logged every iteration) is that same run bit for bit, since the floor never acted: its outcome is
reused, not recomputed, and the table says how many were.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from dd.device import describe_machine


def run(config: str, run_dir: Path, seed: int, floor: float, iterations: int, extra: list[str]) -> dict:
    """One distillation; returns its outcome (finished, final lr, final validation accuracy, error line)."""
    cmd = [sys.executable, "-m", "dd.distill", "--config", config, "--seed", str(seed), "--lr-floor", str(floor),
           "--iterations", str(iterations), "--eval-every", str(max(1, iterations // 3)), "--log-every", "1",
           "--run-dir", str(run_dir), *extra]
    if (run_dir / "checkpoint.safetensors").exists():
        cmd.append("--resume")
    print("+", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] \
        if (run_dir / "metrics.jsonl").exists() else []
    lrs = [m["syn_lr"] for m in lines if "syn_lr" in m]
    vals = [m["val/ConvNet"] for m in lines if "val/ConvNet" in m]
    error = next((line for line in done.stderr.splitlines() if line.startswith("error:")), "")
    return {"seed": seed, "floor": floor, "finished": done.returncode == 0, "error": error,
            "final_lr": lrs[-1] if lrs else None, "min_lr": min(lrs) if lrs else None,
            "final_val": vals[-1] if vals and done.returncode == 0 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/mtt/digits_ipc1.yaml")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--floors", default="0,0.01", help="comma-separated --lr-floor values to compare")
    parser.add_argument("--usable-accuracy", type=float, default=0.5,
                        help="validation accuracy a usable run's final set must reach")
    parser.add_argument("--work", default="runs/results-lr-guard")
    parser.add_argument("--out", default="docs")
    args, extra = parser.parse_known_args()
    floors = [float(f) for f in args.floors.split(",")]
    outcomes: list[dict] = []
    for floor in floors:
        for seed in range(args.seeds):
            twin = next((o for o in outcomes if o["floor"] == 0 and o["seed"] == seed), None)
            if floor > 0 and twin and twin["finished"] and twin["min_lr"] > floor * _lr_teacher(args):
                outcomes.append({**twin, "floor": floor, "reused": True})
            else:
                run_dir = Path(args.work) / f"floor{floor:g}-seed{seed}"
                outcomes.append(run(args.config, run_dir, seed, floor, args.iterations, extra))
    for o in outcomes:
        o["usable"] = bool(o["finished"] and o["final_lr"] and o["final_lr"] > 0
                           and o["final_val"] is not None and o["final_val"] >= args.usable_accuracy)
    command = (f"python scripts/results_lr_guard.py --config {args.config} --seeds {args.seeds} --iterations "
               f"{args.iterations} --floors {args.floors} --usable-accuracy {args.usable_accuracy} {' '.join(extra)}")
    lines = ["# The learned-lr guard: usable runs out of many seeds", "",
             f"Produced by `{command.strip()}` on {describe_machine()}. A run is usable when it finishes, its learned "
             f"lr is positive and its final set reaches {100 * args.usable_accuracy:g} % validation accuracy "
             "(in-run evaluation, ConvNet). `--lr-floor 0` is the reference codes' behaviour (no guard).", "",
             "| --lr-floor | usable runs | diverged | final lr ≤ 0 | validation accuracy of the usable runs | "
             "runs whose lr met the floor | reused unguarded twins |", "|---|---|---|---|---|---|---|"]
    for floor in floors:
        mine = [o for o in outcomes if o["floor"] == floor]
        usable = [100 * o["final_val"] for o in mine if o["usable"]]
        spread = (f"{statistics.fmean(usable):.2f} ± {statistics.pstdev(usable):.2f}" if len(usable) > 1
                  else (f"{usable[0]:.2f}" if usable else "–"))
        floor_value = floor * _lr_teacher(args)
        touched = sum(1 for o in mine if floor > 0 and o["min_lr"] is not None and o["min_lr"] <= floor_value * 1.0001)
        lines.append(f"| {floor:g} | {len(usable)} / {len(mine)} | {sum(not o['finished'] for o in mine)} | "
                     f"{sum(1 for o in mine if o['final_lr'] is not None and o['final_lr'] <= 0)} | {spread} | "
                     f"{touched if floor > 0 else '–'} | {sum(1 for o in mine if o.get('reused'))} |")
    lines += ["", "Per run:", "", "| --lr-floor | seed | finished | final lr | min lr | final validation | error |",
              "|---|---|---|---|---|---|---|"]
    for o in outcomes:
        val = f"{100 * o['final_val']:.2f}" if o["final_val"] is not None else "–"
        lines.append(f"| {o['floor']:g} | {o['seed']} | {o['finished']} | {o['final_lr']:.4g} | {o['min_lr']:.4g} | "
                     f"{val} | {o['error'][:120]} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results-lr-guard.md").write_text("\n".join(lines) + "\n")
    (out / "results-lr-guard.json").write_text(json.dumps({"command": command, "runs": outcomes}, indent=1) + "\n")
    print("\n".join(lines))


def _lr_teacher(args: argparse.Namespace) -> float:
    """The runs' --lr-teacher (the same in all), read back from a run's config.json."""
    return json.loads(next(Path(args.work).glob("*/config.json")).read_text())["lr_teacher"]


if __name__ == "__main__":
    main()
