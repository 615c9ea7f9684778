"""Reproduce docs/results-digits.md and docs/results-digits.json: every trajectory-matching method on
digits at IPC 1 and 10 with the same iteration budget, evaluated under one protocol, beside random real
images and the full data, plus cross-architecture rows for the best set of each IPC (best on the validation
split; the test split is read only for the reported numbers); the KRR-ST transfer
section of scripts/results_transfer.py (docs/results-transfer.md) is appended when it exists.

    python scripts/results_digits.py                  # full run (about an hour on a 2-core CPU)
    python scripts/results_digits.py --iterations 20 --seeds 2 --out /tmp/smoke   # a quick smoke run

Every stage resumes: rerunning after an interruption skips finished experts, iterations and runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _results import cell, sh

from dd.device import describe_machine

METHODS = ("mtt", "ftd", "datm", "ast")
# The BatchNorm variants: at 8 px the instance-norm ResNet18 and VGG11 normalise 1x1 maps, which makes
# every output the same (dd.models refuses them; they scored chance before that check existed).
CROSS_ARCH = ("ResNet18BN", "VGG11BN", "AlexNet", "MLP")


def read_runs(folder: Path) -> list[dict]:
    return json.loads((folder / "results.json").read_text())["runs"]


def seconds_per_iteration(run_dir: Path) -> float:
    """Median of the logged seconds per iteration (evaluation and saving excluded)."""
    values = [json.loads(line)["seconds_per_iteration"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if "seconds_per_iteration" in line]
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=300, help="distillation iterations of every method")
    parser.add_argument("--seeds", type=int, default=5, help="evaluation seeds per row")
    parser.add_argument("--epochs", type=int, default=200, help="evaluation epochs (experiments/eval/digits.yaml)")
    parser.add_argument("--ipcs", default="1,10", help="comma-separated IPCs to run")
    parser.add_argument("--cross-arch-ipcs", default="1,10",
                        help="IPCs whose best set is also evaluated on ResNet18BN, VGG11BN, AlexNet and MLP "
                             "(comma-separated; empty for none)")
    parser.add_argument("--timing-iterations", type=int, default=0,
                        help="time each method in a separate short run of this many iterations (run it on an idle "
                             "machine; 0: report the s/iteration of the long runs)")
    parser.add_argument("--work", default="runs/results-digits", help="folder for buffers' runs and evaluations")
    parser.add_argument("--out", default="docs", help="where results-digits.md/.json are written")
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    ipcs = [int(k) for k in args.ipcs.split(",")]
    common = ["--runs", str(args.seeds), "--epochs", str(args.epochs), "--protocol", "mtt"]

    for recipe in ("digits", "digits_gsam", "digits_ast"):
        sh("dd.buffer", "--config", f"experiments/buffer/{recipe}.yaml")

    runs: list[dict] = []
    validation: list[dict] = []  # the same sets on the validation split: what the best set is chosen by
    speed: dict[tuple[str, int], float] = {}
    for ipc in ipcs:
        for method in METHODS:
            run_dir = work / f"{method}-ipc{ipc}"
            sh("dd.distill", "--config", f"experiments/{method}/digits_ipc{ipc}.yaml", "--iterations",
               str(args.iterations), "--run-dir", str(run_dir), "--eval-every", "0", "--resume")
            speed[(method, ipc)] = seconds_per_iteration(run_dir)
            sets = ["synset"] + (["synset_ema"] if (run_dir / "synset_ema").exists() else [])
            for name in sets:
                sh("dd.eval", "--synset", str(run_dir / name), "--out", str(run_dir / f"eval-{name}"), *common)
                runs += read_runs(run_dir / f"eval-{name}")
                sh("dd.eval", "--synset", str(run_dir / name), "--out", str(run_dir / f"val-{name}"), "--split", "val",
                   *common)
                validation += read_runs(run_dir / f"val-{name}")
        baseline = work / f"baselines-ipc{ipc}"
        sh("dd.eval", "--dataset", "digits", "--ipc", str(ipc), "--baseline", "random", "--out", str(baseline),
           *common)
        runs += read_runs(baseline)
    for method, ipc in list(speed) if args.timing_iterations else []:
        run_dir = work / "timing" / f"{method}-ipc{ipc}"
        sh("dd.distill", "--config", f"experiments/{method}/digits_ipc{ipc}.yaml", "--iterations",
           str(args.timing_iterations), "--run-dir", str(run_dir), "--eval-every", "0", "--eval-epochs", "1",
           "--log-every", "5", "--resume")
        speed[(method, ipc)] = seconds_per_iteration(run_dir)
    full = work / "full"
    sh("dd.eval", "--dataset", "digits", "--baseline", "full", "--out", str(full), *common)
    runs += read_runs(full)

    # Cross-architecture rows for the best ConvNet set of each IPC, with random real beside it.
    for ipc in [int(k) for k in args.cross_arch_ipcs.split(",") if k]:
        distilled = [r for r in validation if r["ipc"] == ipc and r["model"] == "ConvNet"]
        best = max({r["method"] for r in distilled},
                   key=lambda m: statistics.fmean(r["accuracy"] for r in distilled if r["method"] == m))
        method, _, set_name = best.partition("-")
        run_dir = work / f"{method}-ipc{ipc}"
        synset = run_dir / ("synset" + (f"_{set_name}" if set_name else ""))
        models = ",".join(CROSS_ARCH)
        sh("dd.eval", "--synset", str(synset), "--models", models, "--baseline", "random",
           "--out", str(run_dir / "eval-cross-arch"), *common)
        runs += [r for r in read_runs(run_dir / "eval-cross-arch") if r["model"] in CROSS_ARCH]

    write_report(runs, speed, out, args, ipcs)


def write_report(runs: list[dict], speed: dict[tuple[str, int], float], out: Path, args: argparse.Namespace,
                 ipcs: list[int]) -> None:
    machine = describe_machine()
    lines = ["# dd on digits: MTT, FTD, DATM and AST", "",
             f"Produced by `python scripts/results_digits.py --iterations {args.iterations} --seeds {args.seeds} "
             f"--epochs {args.epochs} --ipcs {args.ipcs} --cross-arch-ipcs '{args.cross_arch_ipcs}' "
             f"--timing-iterations {args.timing_iterations}` "
             f"on {machine}. Test accuracy in % (mean ± std over {args.seeds} seeds), "
             "ConvNet distilled and evaluated; every set trained under the same protocol (dd.protocols mtt: "
             f"SGD momentum 0.9, wd 5e-4, {args.epochs}+1 epochs, lr x0.1 after epoch {args.epochs // 2 + 1} with a "
             "fresh optimiser, DSA), with the set's learned lr "
             "(baselines: lr 0.01). Full data: the 1,437 training images. s/iteration: median of the logged "
             "seconds per iteration (evaluation and saving excluded) "
             + (f"of a separate {args.timing_iterations}-iteration run per method, one after another"
                if args.timing_iterations else "of the distillation runs") + ".", ""]
    full = [r for r in runs if r["source"] == "full" and r["model"] == "ConvNet"]
    for ipc in ipcs:
        lines += [f"## IPC {ipc}", "", "| method | ConvNet | s/iteration |", "|---|---|---|"]
        for method in sorted({r["method"] for r in runs if r["source"] == "distilled" and r["ipc"] == ipc},
                             key=lambda m: (METHODS.index(m.split("-")[0]), m)):
            rows = [r for r in runs if r["method"] == method and r["ipc"] == ipc and r["model"] == "ConvNet"]
            base = method.split("-")[0]
            lines.append(f"| {method} | {cell(rows)} | {speed[(base, ipc)]:.2f} |")
        rand = [r for r in runs if r["source"] == "random" and r["ipc"] == ipc and r["model"] == "ConvNet"]
        lines += [f"| random real | {cell(rand)} | – |", f"| full data | {cell(full)} | – |", ""]
        cross = [r for r in runs if r["ipc"] == ipc and r["model"] in CROSS_ARCH]
        if cross:
            best = next(r["method"] for r in cross if r["source"] == "distilled")
            lines += [f"Cross-architecture, IPC {ipc} ({best}, the ConvNet set best on the validation split):", "",
                      "| model | " + best + " | random real |", "|---|---|---|"]
            for model in CROSS_ARCH:
                d = [r for r in cross if r["model"] == model and r["source"] == "distilled"]
                rr = [r for r in cross if r["model"] == model and r["source"] == "random"]
                lines.append(f"| {model} | {cell(d)} | {cell(rr)} |")
            lines.append("")
    transfer = out / "results-transfer.md"  # written by scripts/results_transfer.py (KRR-ST), if run before
    if transfer.is_file():
        lines += [transfer.read_text()]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results-digits.md").write_text("\n".join(lines))
    (out / "results-digits.json").write_text(json.dumps({"machine": machine, "runs": runs}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
