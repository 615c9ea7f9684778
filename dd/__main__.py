"""``python -m dd``: the stages of dd, one line each, and the three commands of the quickstart."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dd.cli import run_cli
from dd.distill.registry import load_plugins, method_names
from dd.errors import DDError


def stages() -> tuple[tuple[str, str], ...]:
    """(command, what it does) of every stage; dd.distill's methods are the registry's, plugins included."""
    load_plugins()
    return (
        ("dd.buffer", "train expert networks on real data and store their trajectories (buffers/...)"),
        ("dd.distill", f"learn a small synthetic set (--method {', '.join(method_names())}; each: --method NAME "
                       "--help)"),
        ("dd.tune", "search a preset's keys on the validation split: resumable, parallel, pruned (Optuna: "
                    "pip install 'dd[tune]')"),
        ("dd.eval", "train fresh networks on a set (and on random real images) and tabulate the test accuracy"),
        ("dd.report", "curves, image history and tables of run folders and buffers (report.md, report.html)"),
    )

QUICKSTART = (
    "python -m dd.buffer --config experiments/buffer/digits.yaml",
    "python -m dd.distill --config experiments/mtt/digits_ipc1.yaml",
    "python -m dd.eval --config experiments/eval/digits.yaml --synset runs/mtt-digits-ipc1/synset --baseline random",
)


def overview() -> str:
    """The text ``python -m dd`` prints."""
    listed = stages()
    width = max(len(name) for name, _ in listed)
    lines = ["dd: dataset distillation. Stages (each: python -m <stage> --help):", ""]
    lines += [f"  {name:<{width}}  {what}" for name, what in listed]
    lines += ["", "Quickstart on the embedded digits set (a CPU, minutes, no download):", ""]
    lines += [f"  {command}" for command in QUICKSTART]
    lines += ["", "then: python -m dd.report runs/mtt-digits-ipc1 (or bash scripts/quickstart.sh for all of it)",
              "Your own images: see 'Your own data' in README.md (experiments/folder/)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] not in ("-h", "--help"):
        raise DDError(f"python -m dd takes no arguments (got {args[0]!r}); run a stage: python -m dd.buffer, "
                      "dd.distill, dd.eval or dd.report")
    print(overview())
    return 0


if __name__ == "__main__":
    run_cli(main)
