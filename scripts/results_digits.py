"""Reproduce docs/results-digits.md and docs/results-digits.json: every distillation method on digits at IPC 1
and 10, evaluated under one protocol (dd.protocols mtt), beside random real images and the full data.

    python scripts/results_digits.py                  # full run (about an hour and a half on a 2-core CPU)
    python scripts/results_digits.py --iterations 20 --seeds 2 --epochs 20 --out /tmp/smoke   # a smoke run

Choices read the validation split only; the test split is read for the reported numbers:
- each method runs its preset (experiments/<method>/digits_ipc<k>.yaml) and the variants in VARIANTS (the
  method's own idea switched off, or another value of the knob the preset chose); every set is evaluated on the
  validation split, and the test row of a method is the set whose validation mean is highest;
- the cross-architecture rows are for the method whose chosen set is best on validation.
The chosen sets and random real are also evaluated under dd0, dd's protocol before the named protocols, to show
the offset between the two. Trajectory methods share one iteration budget (--iterations); the gradient- and
distribution-matching methods (dc, dsa, dm), whose iterations are not comparable, run their presets' own.
Every stage resumes: rerunning after an interruption skips finished experts, iterations and evaluations.
`--carry docs/results-digits.json` keeps an earlier report's rows that this call does not rerun (other IPCs, other
methods, and the full-data row with --full-seeds 0); each record keeps the command that produced it and the
report marks carried rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _results import cell, check_epochs, fail, int_list, read_runs, seconds_per_iteration, select, sh

from dd.config import load_yaml
from dd.device import describe_machine
from dd.models import list_models

TRAJECTORY = ("mtt", "ftd", "datm", "ast", "tesla")
OWN_BUDGET = ("dc", "dsa", "dm")  # no experts, and iterations that mean something else
# method -> {variant name: extra dd.distill flags}; the preset itself is the variant "preset"
VARIANTS: dict[str, dict[str, list[str]]] = {
    "datm": {"hard labels": ["--no-soft-labels"]},
    "tesla": {"exact gradient": ["--unroll", "full"]},  # its labels with the exact gradient: what TESLA's unroll costs
    # AST's matching over MTT's plain SGD experts (inner loop without momentum, MTT's initial lr): on digits its
    # smooth experts, not its matching, cost accuracy (docs/findings.md, "AST on digits")
    "ast": {"sgd experts": ["--buffer-config", "experiments/buffer/digits.yaml", "--inner-momentum", "0",
                            "--lr-teacher", "0.01"]},
}
# method -> {name: extra dd.eval flags}: other evaluation settings of a method's sets, also chosen on validation.
# AST's learned lr is the step of an inner loop with momentum 0.9 (about 0.002 on digits, a fifth of MTT's), so
# the 201 steps of a 200-epoch evaluation at that lr may leave its networks undertrained.
EVAL_VARIANTS: dict[str, dict[str, list[str]]] = {
    "ast": {"eval lr 0.01": ["--lr", "0.01"]},
}
# The BatchNorm variants: at 8 px the instance-norm ResNet18 and VGG11 normalise 1x1 maps, which makes
# every output the same (dd.models refuses them). ViTP2: 2-px patches, 16 tokens at 8 px.
CROSS_ARCH = tuple(m for m in ("ResNet18BN", "VGG11BN", "AlexNet", "MLP", "ViTP2") if m in list_models())


def mean(runs: list[dict]) -> float:
    return statistics.fmean(r["accuracy"] for r in runs)


def methods_with_presets(ipc: int) -> list[str]:
    return [m for m in (*TRAJECTORY, *OWN_BUDGET) if Path(f"experiments/{m}/digits_ipc{ipc}.yaml").is_file()]


def run_name(method: str, ipc: int, variant: str) -> str:
    return f"{method}-ipc{ipc}" + ("" if variant == "preset" else "-" + variant.replace(" ", "-"))


def distill(method: str, ipc: int, variant: str, flags: list[str], work: Path, iterations: int) -> Path:
    run_dir = work / run_name(method, ipc, variant)
    budget = [] if method in OWN_BUDGET else ["--iterations", str(iterations)]
    sh("dd.distill", "--config", f"experiments/{method}/digits_ipc{ipc}.yaml", *budget, "--run-dir", str(run_dir),
       "--eval-every", "0", "--resume", *flags)
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=300, help="distillation iterations of the trajectory methods")
    parser.add_argument("--seeds", type=int, default=5, help="evaluation seeds per row")
    parser.add_argument("--full-seeds", type=int, default=2,
                        help="evaluation seeds of the full-data row (0: carry it from --carry)")
    parser.add_argument("--epochs", type=int, default=200, help="evaluation epochs (protocol mtt runs epochs + 1)")
    parser.add_argument("--ipcs", default="1,10", help="comma-separated IPCs to run")
    parser.add_argument("--methods", default="", help="comma-separated methods (default: every one with a preset)")
    parser.add_argument("--cross-arch-ipcs", default="1,10",
                        help="IPCs whose best set is also evaluated on the other architectures (empty for none)")
    parser.add_argument("--skip", default="",
                        help="comma-separated run names not to distill or report (e.g. dc-ipc10)")
    parser.add_argument("--sets-only", action="store_true",
                        help="distill and evaluate the methods' sets only (no baselines, cross-architecture rows or "
                             "report): for several instances on one --work at once, each with its own --methods")
    parser.add_argument("--work", default="runs/results-digits", help="folder for the runs and evaluations")
    parser.add_argument("--out", default="docs", help="where results-digits.md/.json are written")
    parser.add_argument("--carry", default="",
                        help="an earlier results-digits.json whose rows this call does not rerun are kept")
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    ipcs = int_list(args.ipcs, "--ipcs")
    common = ["--runs", str(args.seeds), "--epochs", str(args.epochs)]
    selected = [m for m in (*TRAJECTORY, *OWN_BUDGET) if not args.methods or m in args.methods.split(",")]
    presets = [f"experiments/{m}/digits_ipc{k}.yaml" for k in ipcs for m in selected]
    recipes = {load_yaml(p)["buffer_config"] for p in presets if Path(p).is_file() and "buffer_config" in load_yaml(p)}
    recipes |= {flags[i + 1] for m in selected for flags in VARIANTS.get(m, {}).values()
                for i, flag in enumerate(flags) if flag == "--buffer-config"}
    for recipe in sorted(recipes):
        sh("dd.buffer", "--config", recipe)

    runs: list[dict] = []  # every record, tagged with row, ipc_row, variant and split
    speed: dict[tuple[str, int], float | None] = {}
    chosen: dict[tuple[str, int], tuple[str, Path]] = {}  # (method, ipc) -> (row, synset) picked on validation
    for ipc in ipcs:
        for method in [m for m in methods_with_presets(ipc) if m in selected]:
            if run_name(method, ipc, "preset") in args.skip.split(","):
                continue
            candidates: list[tuple[str, Path, float, list[str]]] = []
            for variant, flags in {"preset": [], **VARIANTS.get(method, {})}.items():
                if run_name(method, ipc, variant) in args.skip.split(","):
                    continue
                run_dir = distill(method, ipc, variant, flags, work, args.iterations)
                if variant == "preset":
                    speed[(method, ipc)] = seconds_per_iteration(run_dir)
                evals = {"": [], **(EVAL_VARIANTS.get(method, {}) if variant == "preset" else {})}
                for name in ["synset", *(["synset_ema"] if (run_dir / "synset_ema").exists() else [])]:
                    for how, eval_flags in evals.items():
                        label = ", ".join(x for x in (variant if variant != "preset" else "", how) if x)
                        row = method + ("-ema" if name.endswith("ema") else "") + (f" ({label})" if label else "")
                        folder = run_dir / ("val-" + name + (f"-{how.replace(' ', '-')}" if how else ""))
                        sh("dd.eval", "--synset", str(run_dir / name), "--out", str(folder), "--split", "val",
                           "--protocol", "mtt", *common, *eval_flags)
                        found = read_runs(folder, row=row, ipc_row=ipc, split="val")
                        runs += found
                        candidates.append((row, run_dir / name, mean(found), eval_flags))
            row, synset, _, eval_flags = max(candidates, key=lambda c: c[2])
            chosen[(method, ipc)] = (row, synset)
            for protocol in ("mtt", "dd0"):
                suffix = "".join(f"-{flag.lstrip('-')}" for flag in eval_flags)
                folder = synset.parent / f"test-{protocol}-{synset.name}{suffix}"
                sh("dd.eval", "--synset", str(synset), "--out", str(folder), "--protocol", protocol, *common,
                   *eval_flags)
                runs += read_runs(folder, row=row, ipc_row=ipc, split="test", method_row=method)
        for protocol in () if args.sets_only else ("mtt", "dd0"):
            folder = work / f"random-ipc{ipc}-{protocol}"
            sh("dd.eval", "--dataset", "digits", "--ipc", str(ipc), "--baseline", "random", "--out", str(folder),
               "--protocol", protocol, *common)
            runs += read_runs(folder, row="random real", ipc_row=ipc, split="test")
    if args.sets_only:
        return
    if args.full_seeds:
        full = work / "full"
        sh("dd.eval", "--dataset", "digits", "--baseline", "full", "--out", str(full), "--protocol", "mtt", *common,
           "--runs", str(args.full_seeds))
        runs += read_runs(full, row="full data", ipc_row=None, split="test")
    command = report_command(args)
    runs = [{**r, "command": command} for r in runs]
    if args.carry:
        runs, speed = carry(Path(args.carry), runs, speed, ipcs, keep_full=not args.full_seeds,
                            epochs=args.epochs)

    for ipc in [k for k in int_list(args.cross_arch_ipcs, "--cross-arch-ipcs") if k in ipcs]:
        best = max(((family(r), ipc) for r in runs if r["split"] == "val" and r["ipc_row"] == ipc),
                   key=lambda key: max_val(runs, *key))
        if best not in chosen:
            fail(f"{best[0]} (carried from {args.carry}) is the best set on validation at IPC {ipc}; rerun it "
                 "(--methods) for the cross-architecture rows")
        row, synset = chosen[best]
        folder = synset.parent / f"test-cross-arch-{synset.name}"
        sh("dd.eval", "--synset", str(synset), "--models", ",".join(CROSS_ARCH), "--baseline", "random",
           "--out", str(folder), "--protocol", "mtt", *common)
        runs += [{**r, "cross_arch": True, "command": command}
                 for r in read_runs(folder, row=row, ipc_row=ipc, split="test") if r["model"] in CROSS_ARCH]
    write_report(runs, speed, out, args, ipcs)


def max_val(runs: list[dict], method: str, ipc: int) -> float:
    """The best validation mean among ``method``'s sets at ``ipc`` (its chosen one), FTD's EMA sets among FTD's."""
    rows = {r["row"] for r in runs if r["split"] == "val" and r["ipc_row"] == ipc and family(r) == method}
    return max(mean([r for r in runs if r["split"] == "val" and r["ipc_row"] == ipc and r["row"] == row])
               for row in rows)


def family(record: dict) -> str:
    """The distillation method a set record belongs to (FTD's EMA set to ftd)."""
    return str(record.get("method")).removesuffix("-ema")


def carry(path: Path, runs: list[dict], speed: dict[tuple[str, int], float | None], ipcs: list[int],
          keep_full: bool, epochs: int) -> tuple[list[dict], dict[tuple[str, int], float | None]]:
    """``runs`` plus the records of the earlier report at ``path`` that this call did not produce: every record of
    an IPC not rerun, the sets of methods not rerun at a rerun IPC, and the full-data row when ``keep_full``; each
    keeps its command (the report's when it has none), and all must be ``epochs``-epoch evaluations. ``speed``
    gains the carried methods' s/iteration."""
    earlier = json.loads(path.read_text())
    rerun = {(r["ipc_row"], family(r)) for r in runs if r["source"] == "distilled"}
    kept = []
    for r in earlier["runs"]:
        ipc = r["ipc_row"]
        if ipc is None:
            keep = keep_full
        elif ipc in ipcs:
            keep = r["source"] == "distilled" and not r.get("cross_arch") and (ipc, family(r)) not in rerun
        else:
            keep = True
        if keep:
            kept.append({**r, "command": r.get("command", earlier["command"])})
    check_epochs(path, kept, epochs)
    for key, value in earlier.get("speed", {}).items():
        method, ipc = key.split("@")
        if (int(ipc), method) not in rerun:
            speed.setdefault((method, int(ipc)), value)
    return runs + kept, speed


def report_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this call's records."""
    return (f"python scripts/results_digits.py --iterations {args.iterations} --seeds {args.seeds} "
            f"--full-seeds {args.full_seeds} --epochs {args.epochs} --ipcs {args.ipcs} --cross-arch-ipcs "
            f"'{args.cross_arch_ipcs}'" + (f" --methods {args.methods}" if args.methods else "")
            + (f" --skip {args.skip}" if args.skip else "") + (f" --carry {args.carry}" if args.carry else ""))


def write_report(runs: list[dict], speed: dict[tuple[str, int], float | None], out: Path, args: argparse.Namespace,
                 ipcs: list[int]) -> None:
    machine = describe_machine()
    command = report_command(args)
    earlier = sorted({r["command"] for r in runs} - {command})

    def mark(records: list[dict]) -> str:
        return " ‡" if any(r["command"] != command for r in records) else ""

    full = select(runs, row="full data", model="ConvNet")
    lines = ["# dd on digits: every method at IPC 1 and 10", "",
             f"Produced by `{command}` on {machine}. Accuracy in % (mean ± std over {args.seeds} seeds; full data: "
             f"{len(full)}), ConvNet "
             f"distilled and evaluated, protocol mtt (dd/protocols.py: the reference evaluate_synset, SGD momentum "
             f"0.9, wd 5e-4, {args.epochs}+1 epochs, lr x0.1 after epoch {args.epochs // 2 + 1} with a fresh "
             "optimiser, DSA, batch 256) with each set's learned lr (random real, full data, dc, dsa, dm: lr 0.01). "
             "Selection: each method's row is the set (its preset or a variant) with the best validation mean; "
             "the test column is read only for that set. The validation split is 10 % of every class of the "
             "training split (seed 0); the experts trained on the whole training split. Trajectory methods: "
             f"{args.iterations} iterations each; dc, dsa, dm: their presets' iterations. s/iteration: median of "
             "the logged seconds per iteration (evaluation and saving excluded), from the long runs, with other "
             "jobs on the machine's other core."
             + ("".join(f" Rows marked ‡ are carried from `{c}` (each record in results-digits.json keeps its "
                        "command)." for c in earlier)), ""]
    for ipc in sorted({r["ipc_row"] for r in runs if r["ipc_row"] is not None}):
        lines += [f"## IPC {ipc}", "", "| method | chosen set | validation | test | s/iteration |",
                  "|---|---|---|---|---|"]
        methods = sorted({r["method_row"] for r in runs if r.get("method_row") and r["ipc_row"] == ipc},
                         key=lambda m: (TRAJECTORY + OWN_BUDGET).index(m))
        for method in methods:
            test = select(runs, method_row=method, ipc_row=ipc, split="test", model="ConvNet")
            test = [r for r in test if r["protocol"]["name"] == "mtt"]
            row = test[0]["row"]
            val = select(runs, row=row, ipc_row=ipc, split="val", model="ConvNet")
            s = speed.get((method, ipc))
            lines.append(f"| {method}{mark(test)} | {row} | {cell(val)} | {cell(test)} | {f'{s:.2f}' if s else '–'} |")
        rand = [r for r in select(runs, row="random real", ipc_row=ipc, model="ConvNet")
                if r["protocol"]["name"] == "mtt"]
        lines += [f"| random real{mark(rand)} | – | – | {cell(rand)} | – |",
                  f"| full data{mark(full)} | – | – | {cell(full)} | – |", ""]
        variants = sorted({r["row"] for r in select(runs, ipc_row=ipc, split="val", model="ConvNet")})
        lines += [f"Every set distilled at IPC {ipc}, validation split (what chose the rows above):", "",
                  "| set | validation |", "|---|---|"]
        for row in variants:
            val = select(runs, row=row, ipc_row=ipc, split="val", model="ConvNet")
            lines.append(f"| {row}{mark(val)} | {cell(val)} |")
        lines.append("")
        lines += [f"The same chosen sets under dd0 (dd's protocol before the named ones: {args.epochs} epochs, lr x0.1 "
                  f"from epoch {args.epochs // 2} with the momentum kept), test split:", "",
                  "| set | mtt | dd0 | mtt − dd0 |", "|---|---|---|---|"]
        for row in [*sorted({r["row"] for r in select(runs, ipc_row=ipc, split="test") if r.get("method_row")}),
                    "random real"]:
            by = {p: [r for r in select(runs, row=row, ipc_row=ipc, split="test", model="ConvNet")
                      if r["protocol"]["name"] == p] for p in ("mtt", "dd0")}
            if by["mtt"] and by["dd0"]:
                lines.append(f"| {row}{mark(by['mtt'] + by['dd0'])} | {cell(by['mtt'])} | {cell(by['dd0'])} | "
                             f"{100 * (mean(by['mtt']) - mean(by['dd0'])):+.2f} |")
        lines.append("")
        cross = [r for r in runs if r.get("cross_arch") and r["ipc_row"] == ipc]
        if cross:
            best = next(r["row"] for r in cross if r["source"] == "distilled")
            lines += [f"Cross-architecture, IPC {ipc} ({best}, the set best on the validation split), test split:",
                      "", f"| model | {best} | random real |", "|---|---|---|"]
            for model in CROSS_ARCH:
                d = [r for r in cross if r["model"] == model and r["source"] == "distilled"]
                rr = [r for r in cross if r["model"] == model and r["source"] == "random"]
                if d and rr:
                    lines.append(f"| {model} | {cell(d)} | {cell(rr)} |")
            lines.append("")
    transfer = out / "results-transfer.md"  # written by scripts/results_transfer.py (KRR-ST), if run before
    if transfer.is_file():
        lines += [transfer.read_text()]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results-digits.md").write_text("\n".join(lines))
    report = {"machine": machine, "command": command,
              "speed": {f"{m}@{k}": v for (m, k), v in speed.items() if v}, "runs": runs}
    (out / "results-digits.json").write_text(json.dumps(report, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
