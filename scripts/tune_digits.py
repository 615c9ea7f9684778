"""Tune the digits presets on the validation split; write docs/tuning-digits.{md,json}.

    python scripts/tune_digits.py                      # every method and IPC of GRID
    python scripts/tune_digits.py --methods mtt --ipcs 1 --iterations 20 --seeds 1 --out /tmp/smoke

For each (method, IPC) the preset's knobs are moved one at a time (GRID: the image lr, and the initial inner lr
that the learned lr starts from; DM's budget); every candidate is distilled at the preset's budget (or
--iterations) and evaluated on the validation split only (10 % of every class of the training split, seed 0), under
protocol mtt with the set's lr (DM's sets: lr 0.01), as scripts/results_digits.py evaluates them. The candidate with
the best validation mean is what the preset should hold; the test split is never read here.
docs/results-digits.md then reports the presets on the test split. Every stage resumes. Runs are named by the
candidate, relative to the preset of their day: once a preset takes a candidate, tune it again in a new --work
(dd.distill refuses to resume a run whose settings differ, with one error line). `--carry docs/tuning-digits.json`
keeps an earlier report's (method, IPC) sections that this call does not rerun, each with the command that made it;
with several reports (comma-separated) a later one's section replaces an earlier one's, and `--methods ''` runs
nothing, so the reports of separate calls merge into one.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
from pathlib import Path

from _results import cell, check_epochs, fail, int_list, read_runs, sh

from dd.device import describe_machine


def one_knob(lr_teacher: str) -> dict[str, list[str]]:
    """The candidates around a preset: the image lr x0.3 and x3, and the initial inner lr ``lr_teacher``."""
    return {"lr_img 30": ["--lr-img", "30"], "lr_img 300": ["--lr-img", "300"],
            f"lr_teacher {lr_teacher}": ["--lr-teacher", lr_teacher]}


# method -> candidates: name -> extra dd.distill flags over experiments/<method>/digits_ipc<k>.yaml ("preset": none).
# AST's inner loop has momentum 0.9, so its initial inner lr is 5x smaller than the others' (0.002, not 0.01).
# DATM's label candidates separate what its soft labels do: "lr_y 0" keeps the experts' initial soft labels fixed,
# "hard labels" drops them. TESLA's labels are fixed, softmax(expert logits / T): its knob is T (smaller: sharper).
# DM has no learned lr: its knobs are the image lr and the budget.
GRID: dict[str, dict[str, list[str]]] = {
    "mtt": one_knob("0.02"), "ftd": one_knob("0.02"), "ast": one_knob("0.004"),
    "datm": {**one_knob("0.02"), "lr_y 0": ["--lr-y", "0"], "hard labels": ["--no-soft-labels"]},
    "tesla": {**one_knob("0.02"), "label_temperature 0.25": ["--label-temperature", "0.25"],
              "label_temperature 0.1": ["--label-temperature", "0.1"]},
    "dm": {"lr_img 10": ["--lr-img", "10"], "iterations 1000": ["--iterations", "1000"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(GRID),
                        help="comma-separated methods of GRID ('': none, only merge the --carry reports)")
    parser.add_argument("--ipcs", default="1", help="comma-separated IPCs")
    parser.add_argument("--iterations", type=int, default=None,
                        help="distillation iterations of every candidate (default: each preset's own)")
    parser.add_argument("--seeds", type=int, default=10, help="validation seeds per candidate")
    parser.add_argument("--epochs", type=int, default=200, help="evaluation epochs (protocol mtt runs epochs + 1)")
    parser.add_argument("--candidates", default="",
                        help="comma-separated candidate names to run, 'preset' among them (default: all)")
    parser.add_argument("--no-report", action="store_true",
                        help="distill and evaluate only: for two instances on one --work, each with its own --methods")
    parser.add_argument("--work", default="runs/tune-digits", help="folder for the candidates' runs")
    parser.add_argument("--out", default="docs", help="where tuning-digits.md/.json are written")
    parser.add_argument("--carry", default="",
                        help="earlier tuning-digits.json reports (comma-separated; a later one's section replaces "
                             "an earlier one's) whose (method, IPC) sections this call does not rerun")
    args = parser.parse_args()
    work = Path(args.work)
    methods, ipcs = [m for m in args.methods.split(",") if m], int_list(args.ipcs, "--ipcs")
    wanted = set(args.candidates.split(",")) if args.candidates else None
    for method in methods:
        if method not in GRID:
            fail(f"--methods: {method!r} has no grid; choose from {', '.join(GRID)}")
    budget = [] if args.iterations is None else ["--iterations", str(args.iterations)]
    command = " ".join(["python scripts/tune_digits.py --methods", shlex.quote(args.methods), "--ipcs", args.ipcs,
                        *budget, "--seeds", str(args.seeds), "--epochs", str(args.epochs),
                        *(["--candidates", shlex.quote(args.candidates)] if args.candidates else [])])  # its records
    records: list[dict] = []
    for ipc in ipcs:
        for method in methods:
            preset = f"experiments/{method}/digits_ipc{ipc}.yaml"
            for name, flags in {"preset": [], **GRID[method]}.items():
                if wanted and name not in wanted:
                    continue
                run_dir = work / f"{method}-ipc{ipc}-{name.replace(' ', '-')}"
                sh("dd.distill", "--config", preset, *budget, "--run-dir", str(run_dir), "--eval-every", "0",
                   "--resume", *flags)
                folder = run_dir / "val-synset"
                sh("dd.eval", "--synset", str(run_dir / "synset"), "--out", str(folder), "--split", "val",
                   "--protocol", "mtt", "--runs", str(args.seeds), "--epochs", str(args.epochs))
                records += [r for r in read_runs(folder, method_row=method, ipc_row=ipc, candidate=name, flags=flags,
                                                 command=command) if r["model"] == "ConvNet"]
    done = {(m, k) for m in methods for k in ipcs}
    for path in reversed([Path(c) for c in args.carry.split(",") if c]):  # the last report first
        kept = carry(path, done, args.epochs)
        records += kept
        done |= {(r["method_row"], r["ipc_row"]) for r in kept}
    if not args.no_report:
        write_report(records, Path(args.out), args, command + (f" --carry {args.carry}" if args.carry else ""))


def carry(path: Path, rerun: set[tuple[str, int]], epochs: int) -> list[dict]:
    """The records of the earlier report at ``path`` outside the (method, IPC) sections in ``rerun``, each with its
    command (the report's when it has none); all must be ``epochs``-epoch evaluations."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        fail(f"--carry {path}: cannot read it ({e}); pass an earlier tuning-digits.json or drop --carry")
    kept = [{**r, "command": r.get("command", earlier["command"])} for r in earlier["runs"]
            if (r["method_row"], r["ipc_row"]) not in rerun]
    check_epochs(path, kept, epochs)
    return kept


def write_report(records: list[dict], out: Path, args: argparse.Namespace, command: str) -> None:
    lines = ["# Tuning the digits presets on the validation split", "",
             f"Produced by `{command}` on {describe_machine()}; each section names the command that ran it. "
             f"Validation accuracy in % (mean ± std over {args.seeds} seeds, ConvNet, protocol mtt, "
             f"{args.epochs}+1 epochs, each set's lr: learned, DM's 0.01); every candidate distilled from the "
             "preset of its day with one knob moved, at the preset's iteration budget unless its command says "
             "--iterations. The test split is not read. **Bold**: the best on validation, which the preset takes "
             "unless its file says why not.", ""]
    chosen: dict[str, str] = {}
    for ipc in sorted({r["ipc_row"] for r in records}):
        for method in sorted({r["method_row"] for r in records if r["ipc_row"] == ipc}, key=list(GRID).index):
            by = {}
            for r in records:
                if r["ipc_row"] == ipc and r["method_row"] == method:
                    by.setdefault(r["candidate"], []).append(r)
            best = max(by, key=lambda c: statistics.fmean(r["accuracy"] for r in by[c]))
            chosen[f"{method}@{ipc}"] = best
            commands = " ; ".join(dict.fromkeys(r["command"] for runs in by.values() for r in runs))
            lines += [f"## {method}, IPC {ipc}", "", f"Command: `{commands}`", "",
                      "| candidate | flags | validation |", "|---|---|---|"]
            for name, runs in by.items():
                text = f"**{name}**" if name == best else name
                lines.append(f"| {text} | `{' '.join(runs[0]['flags']) or '–'}` | {cell(runs)} |")
            lines.append("")
    out.mkdir(parents=True, exist_ok=True)
    (out / "tuning-digits.md").write_text("\n".join(lines))
    (out / "tuning-digits.json").write_text(json.dumps({"machine": describe_machine(), "command": command,
                                                        "chosen": chosen, "runs": records}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
