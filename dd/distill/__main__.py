"""``python -m dd.distill``: learn a small synthetic set whose training trajectories match the experts'.

    python -m dd.distill --method mtt --config experiments/mtt/digits_ipc1.yaml
    python -m dd.distill --config experiments/mtt/cifar10_ipc10.yaml --data-path data --resume
    python -m dd.distill --method krr_st --config experiments/krr_st/digits-0to4_n50.yaml   # KRR-ST
    python -m dd.distill --config experiments/dsa/digits_ipc10.yaml      # DC/DSA, DM: no buffer needed

--method krr_st (self-supervised KRR-ST, a transfer set), dc and dsa (gradient matching) and dm
(distribution matching) take their own flags: see python -m dd.distill --method dsa --help.

Writes into --run-dir: synset/ (safetensors + JSON: images, labels, learned lr; load it with
dd.load_synset), synset_best/, grid.png, metrics.jsonl, config.json and a resumable checkpoint.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from dd import distributed
from dd.cli import run_cli
from dd.config import build_parser, parse_config, peek_option
from dd.distill import dm, gradmatch, krr_st
from dd.distill.config import DistillConfig
from dd.distill.engine import Distiller

# Methods with a loop and config of their own, not the trajectory engine's.
OWN_LOOP = {"krr_st": krr_st.main, "dc": gradmatch.main, "dsa": gradmatch.main, "dm": dm.main}


def main(argv: Sequence[str] | None = None) -> int:
    method = peek_option(argv, "method", "mtt")
    if method in OWN_LOOP:
        return OWN_LOOP[method](argv)
    config, _ = parse_config(DistillConfig, argv, build_parser(DistillConfig, "python -m dd.distill", __doc__))
    distiller = Distiller(config, argv)
    if distributed.is_main():
        print(f"config: {preset_of(argv) or 'the defaults'} and the flags given; resolved in "
              f"{distiller.run_dir / 'config.json'}")
    distiller.run()
    if distributed.is_main():
        print(finished(distiller.run_dir, distiller.iteration, distiller.syn_lr.item()))
    return 0


def preset_of(argv: Sequence[str] | None) -> str | None:
    """The ``--config`` file named in ``argv`` (default: this process's arguments), if any."""
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def finished(run_dir: Path, iteration: int, lr: float) -> str:
    """The stage's last lines: what it wrote and the commands that evaluate the set and report on the run."""
    evaluate = shlex.join(["python", "-m", "dd.eval", "--synset", str(run_dir / "synset"), "--baseline", "random"])
    report = shlex.join(["python", "-m", "dd.report", str(run_dir)])
    return (f"synthetic set: {run_dir / 'synset'} (iteration {iteration}, learned lr {lr:.4g}); best on validation: "
            f"{run_dir / 'synset_best'}; images: {run_dir / 'grids'}, {run_dir / 'progress.gif'}\n"
            f"next: evaluate it: {evaluate}\n"
            f"      report on the run: {report}")


if __name__ == "__main__":
    run_cli(main)
