"""``python -m dd.distill``: learn a small synthetic set whose training trajectories match the experts'.

    python -m dd.distill --method mtt --config experiments/mtt/digits_ipc1.yaml
    python -m dd.distill --config experiments/mtt/cifar10_ipc10.yaml --data-path data --resume
    python -m dd.distill --method krr_st --config experiments/krr_st/digits-0to4_n50.yaml   # KRR-ST

--method krr_st (self-supervised KRR-ST, a transfer set) takes its own flags: see
python -m dd.distill --method krr_st --help.

Writes into --run-dir: synset/ (safetensors + JSON: images, labels, learned lr; load it with
dd.load_synset), synset_best/, grid.png, metrics.jsonl, config.json and a resumable checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

from dd import distributed
from dd.cli import run_cli
from dd.config import build_parser, parse_config, peek_option
from dd.distill import krr_st
from dd.distill.config import DistillConfig
from dd.distill.engine import Distiller


def main(argv: Sequence[str] | None = None) -> int:
    if peek_option(argv, "method", "mtt") == "krr_st":
        return krr_st.main(argv)
    config, _ = parse_config(DistillConfig, argv, build_parser(DistillConfig, "python -m dd.distill", __doc__))
    distiller = Distiller(config, argv)
    distiller.run()
    if distributed.is_main():
        print(f"synthetic set: {distiller.run_dir / 'synset'} (lr {distiller.syn_lr.item():.4g}); "
              f"evaluate with: python -m dd.eval --synset {distiller.run_dir / 'synset'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
