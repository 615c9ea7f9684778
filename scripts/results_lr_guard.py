"""Reproduce docs/results-lr-guard.md: how many distillation runs stay usable with and without the learned-lr
guard (--lr-step-limit), over many seeds of one preset.

    python scripts/results_lr_guard.py --lr-lr 1e-3 --iterations 150    # MTT digits IPC 1, 10 seeds, both
    python scripts/results_lr_guard.py --seeds 2 --iterations 20 --out /tmp/smoke   # a quick smoke run

A run is usable when it finishes (no divergence error), its learned lr is positive and its final set's
validation accuracy (the in-run evaluation, ConvNet) is at least --usable-accuracy. Extra flags go to dd.distill
(e.g. --lr-lr 1e-3 --buffer PATH). Every run resumes.

A guarded run whose unguarded twin (same seed, --lr-step-limit 0) finished and never moved its lr by the limit
or more in one step (the lr is logged every iteration) is that same run bit for bit, since the guard never
acted: its outcome is reused, not recomputed, and the table says how many were.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from dd.device import describe_machine


def run(config: str, run_dir: Path, seed: int, limit: float, iterations: int, extra: list[str]) -> dict:
    """One distillation; returns its outcome (finished, final lr, largest relative lr step, final validation)."""
    cmd = [sys.executable, "-m", "dd.distill", "--config", config, "--seed", str(seed), "--lr-step-limit",
           str(limit), "--iterations", str(iterations), "--eval-every", str(max(1, iterations // 3)), "--log-every",
           "1", "--run-dir", str(run_dir), *extra]
    if (run_dir / "checkpoint.safetensors").exists():
        cmd.append("--resume")
    print("+", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] \
        if (run_dir / "metrics.jsonl").exists() else []
    lrs = [json.loads((run_dir / "config.json").read_text())["lr_teacher"]] + [m["syn_lr"] for m in lines
                                                                             if "syn_lr" in m]
    vals = [m["val/ConvNet"] for m in lines if "val/ConvNet" in m]
    error = next((line for line in done.stderr.splitlines() if line.startswith("error:")), "")
    steps = [abs(b / a - 1) if a else float("inf") for a, b in zip(lrs, lrs[1:], strict=False)]
    return {"seed": seed, "limit": limit, "finished": done.returncode == 0, "error": error, "final_lr": lrs[-1],
            "min_lr": min(lrs), "max_step": max(steps, default=0.0),
            "final_val": vals[-1] if vals and done.returncode == 0 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/mtt/digits_ipc1.yaml")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--limits", default="0,0.1", help="comma-separated --lr-step-limit values to compare")
    parser.add_argument("--usable-accuracy", type=float, default=0.5,
                        help="validation accuracy a usable run's final set must reach")
    parser.add_argument("--work", default="runs/results-lr-guard")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--name", default="results-lr-guard", help="file name (without .md/.json) under --out")
    args, extra = parser.parse_known_args()
    limits = [float(f) for f in args.limits.split(",")]
    outcomes: list[dict] = []
    for limit in limits:
        for seed in range(args.seeds):
            twin = next((o for o in outcomes if o["limit"] == 0 and o["seed"] == seed), None)
            if limit > 0 and twin and twin["finished"] and twin["max_step"] < limit:
                outcomes.append({**twin, "limit": limit, "reused": True})
            else:
                run_dir = Path(args.work) / f"limit{limit:g}-seed{seed}"
                outcomes.append(run(args.config, run_dir, seed, limit, args.iterations, extra))
    for o in outcomes:
        o["usable"] = bool(o["finished"] and o["final_lr"] > 0 and o["final_val"] is not None
                           and o["final_val"] >= args.usable_accuracy)
    command = (f"python scripts/results_lr_guard.py --config {args.config} --seeds {args.seeds} --iterations "
               f"{args.iterations} --limits {args.limits} --usable-accuracy {args.usable_accuracy} --work {args.work} "
               f"--name {args.name} "
               + " ".join(extra)).strip()
    lines = ["# The learned-lr guard: usable runs out of many seeds", "",
             f"Produced by `{command}` on {describe_machine()}. A run is usable when it finishes, its learned lr is "
             f"positive and its final set reaches {100 * args.usable_accuracy:g} % validation accuracy (in-run "
             "evaluation, ConvNet). `--lr-step-limit 0` is the reference codes' behaviour (no guard).", "",
             "| --lr-step-limit | usable runs | diverged | final lr ≤ 0 | validation accuracy of the usable runs | "
             "runs the guard acted in | reused unguarded twins |", "|---|---|---|---|---|---|---|"]
    for limit in limits:
        mine = [o for o in outcomes if o["limit"] == limit]
        usable = [100 * o["final_val"] for o in mine if o["usable"]]
        spread = (f"{statistics.fmean(usable):.2f} ± {statistics.pstdev(usable):.2f}" if len(usable) > 1
                  else (f"{usable[0]:.2f}" if usable else "–"))
        acted = sum(1 for o in mine if not o.get("reused") and o["max_step"] >= limit * 0.999) if limit else "–"
        lines.append(f"| {limit:g} | {len(usable)} / {len(mine)} | {sum(not o['finished'] for o in mine)} | "
                     f"{sum(1 for o in mine if o['final_lr'] <= 0)} | {spread} | {acted} | "
                     f"{sum(1 for o in mine if o.get('reused'))} |")
    lines += ["", "Per run:", "", "| --lr-step-limit | seed | finished | final lr | min lr | largest lr step | "
              "final validation | error |", "|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        val = f"{100 * o['final_val']:.2f}" if o["final_val"] is not None else "–"
        lines.append(f"| {o['limit']:g} | {o['seed']} | {o['finished']} | {o['final_lr']:.4g} | {o['min_lr']:.4g} | "
                     f"{100 * o['max_step']:.3g} % | {val} | {o['error'][:100]} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{args.name}.json").write_text(json.dumps({"command": command, "runs": outcomes}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
