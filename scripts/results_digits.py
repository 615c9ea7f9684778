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
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _results import cell, sh

from dd.device import describe_machine
from dd.models import list_models

TRAJECTORY = ("mtt", "ftd", "datm", "ast", "tesla")
OWN_BUDGET = ("dc", "dsa", "dm")  # no experts, and iterations that mean something else
# method -> {variant name: extra dd.distill flags}; the preset itself is the variant "preset"
VARIANTS: dict[str, dict[str, list[str]]] = {
    "datm": {"hard labels": ["--no-soft-labels"]},
    "tesla": {"exact gradient": ["--unroll", "full"]},  # its labels with the exact gradient: what TESLA's unroll costs
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
BUFFERS = ("digits", "digits_gsam", "digits_ast")


def read_runs(folder: Path, **tags: object) -> list[dict]:
    """The records of ``folder``'s results.json, each tagged with ``tags`` (row, variant, ...)."""
    return [{**r, **tags} for r in json.loads((folder / "results.json").read_text())["runs"]]


def seconds_per_iteration(run_dir: Path) -> float | None:
    """Median of the logged seconds per iteration (evaluation and saving excluded)."""
    values = [json.loads(line)["seconds_per_iteration"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if "seconds_per_iteration" in line]
    return statistics.median(values) if values else None


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
    parser.add_argument("--full-seeds", type=int, default=2, help="evaluation seeds of the full-data row")
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
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    ipcs = [int(k) for k in args.ipcs.split(",")]
    common = ["--runs", str(args.seeds), "--epochs", str(args.epochs)]
    for recipe in BUFFERS:
        sh("dd.buffer", "--config", f"experiments/buffer/{recipe}.yaml")

    runs: list[dict] = []  # every record, tagged with row, ipc_row, variant and split
    speed: dict[tuple[str, int], float | None] = {}
    chosen: dict[tuple[str, int], tuple[str, Path]] = {}  # (method, ipc) -> (row, synset) picked on validation
    for ipc in ipcs:
        for method in [m for m in methods_with_presets(ipc) if not args.methods or m in args.methods.split(",")]:
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
    full = work / "full"
    sh("dd.eval", "--dataset", "digits", "--baseline", "full", "--out", str(full), "--protocol", "mtt", *common,
       "--runs", str(args.full_seeds))
    runs += read_runs(full, row="full data", ipc_row=None, split="test")

    for ipc in [int(k) for k in args.cross_arch_ipcs.split(",") if k and int(k) in ipcs]:
        best = max((key for key in chosen if key[1] == ipc),
                   key=lambda key: mean([r for r in runs if r["split"] == "val" and r["row"] == chosen[key][0]
                                         and r["ipc_row"] == ipc]))
        row, synset = chosen[best]
        folder = synset.parent / f"test-cross-arch-{synset.name}"
        sh("dd.eval", "--synset", str(synset), "--models", ",".join(CROSS_ARCH), "--baseline", "random",
           "--out", str(folder), "--protocol", "mtt", *common)
        runs += [{**r, "cross_arch": True} for r in read_runs(folder, row=row, ipc_row=ipc, split="test")
                 if r["model"] in CROSS_ARCH]
    write_report(runs, speed, out, args, ipcs)


def select(runs: list[dict], **want: object) -> list[dict]:
    """The records whose fields equal ``want`` (missing fields count as None); cross-arch rows only when asked."""
    want.setdefault("cross_arch", None)
    return [r for r in runs if all(r.get(k) == v for k, v in want.items())]


def write_report(runs: list[dict], speed: dict[tuple[str, int], float | None], out: Path, args: argparse.Namespace,
                 ipcs: list[int]) -> None:
    machine = describe_machine()
    command = (f"python scripts/results_digits.py --iterations {args.iterations} --seeds {args.seeds} "
               f"--full-seeds {args.full_seeds} --epochs "
               f"{args.epochs} --ipcs {args.ipcs} --cross-arch-ipcs '{args.cross_arch_ipcs}'"
               + (f" --methods {args.methods}" if args.methods else "")
               + (f" --skip {args.skip}" if args.skip else ""))
    lines = ["# dd on digits: every method at IPC 1 and 10", "",
             f"Produced by `{command}` on {machine}. Accuracy in % (mean ± std over {args.seeds} seeds; full data: "
             f"{args.full_seeds}), ConvNet "
             f"distilled and evaluated, protocol mtt (dd/protocols.py: the reference evaluate_synset, SGD momentum "
             f"0.9, wd 5e-4, {args.epochs}+1 epochs, lr x0.1 after epoch {args.epochs // 2 + 1} with a fresh "
             "optimiser, DSA, batch 256) with each set's learned lr (random real, full data, dc, dsa, dm: lr 0.01). "
             "Selection: each method's row is the set (its preset or a variant) with the best validation mean; "
             "the test column is read only for that set. The validation split is 10 % of every class of the "
             "training split (seed 0); the experts trained on the whole training split. Trajectory methods: "
             f"{args.iterations} iterations each; dc, dsa, dm: their presets' iterations. s/iteration: median of "
             "the logged seconds per iteration (evaluation and saving excluded), from the long runs, with other "
             "jobs on the machine's other core.", ""]
    full = select(runs, row="full data", model="ConvNet")
    for ipc in ipcs:
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
            lines.append(f"| {method} | {row} | {cell(val)} | {cell(test)} | {f'{s:.2f}' if s else '–'} |")
        rand = [r for r in select(runs, row="random real", ipc_row=ipc, model="ConvNet")
                if r["protocol"]["name"] == "mtt"]
        lines += [f"| random real | – | – | {cell(rand)} | – |", f"| full data | – | – | {cell(full)} | – |", ""]
        variants = sorted({r["row"] for r in select(runs, ipc_row=ipc, split="val", model="ConvNet")})
        lines += [f"Every set distilled at IPC {ipc}, validation split (what chose the rows above):", "",
                  "| set | validation |", "|---|---|"]
        lines += [f"| {row} | {cell(select(runs, row=row, ipc_row=ipc, split='val', model='ConvNet'))} |"
                  for row in variants] + [""]
        lines += [f"The same chosen sets under dd0 (dd's protocol before the named ones: {args.epochs} epochs, lr x0.1 "
                  f"from epoch {args.epochs // 2} with the momentum kept), test split:", "",
                  "| set | mtt | dd0 | mtt − dd0 |", "|---|---|---|---|"]
        for row in [*sorted({r["row"] for r in select(runs, ipc_row=ipc, split="test") if r.get("method_row")}),
                    "random real"]:
            by = {p: [r for r in select(runs, row=row, ipc_row=ipc, split="test", model="ConvNet")
                      if r["protocol"]["name"] == p] for p in ("mtt", "dd0")}
            if by["mtt"] and by["dd0"]:
                lines.append(f"| {row} | {cell(by['mtt'])} | {cell(by['dd0'])} | "
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
    (out / "results-digits.json").write_text(json.dumps({"machine": machine, "command": command, "runs": runs},
                                                        indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
