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

from collections.abc import Sequence

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
    distiller.run()
    print(f"synthetic set: {distiller.run_dir / 'synset'} (lr {distiller.syn_lr.item():.4g}); "
          f"evaluate with: python -m dd.eval --synset {distiller.run_dir / 'synset'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
