"""``python -m dd.distill``: learn a small synthetic set whose training trajectories match the experts'.

    python -m dd.distill --method mtt --config experiments/mtt/digits_ipc1.yaml
    python -m dd.distill --config experiments/mtt/cifar10_ipc10.yaml --data-path data --resume

Writes into --run-dir: synset/ (safetensors + JSON: images, labels, learned lr; load it with
dd.load_synset), synset_best/, grid.png, metrics.jsonl, config.json and a resumable checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

from dd.cli import run_cli
from dd.config import build_parser, parse_config
from dd.distill.config import DistillConfig
from dd.distill.engine import Distiller


def main(argv: Sequence[str] | None = None) -> int:
    config, _ = parse_config(DistillConfig, argv, build_parser(DistillConfig, "python -m dd.distill", __doc__))
    distiller = Distiller(config)
    distiller.run()
    print(f"synthetic set: {distiller.run_dir / 'synset'} (lr {distiller.syn_lr.item():.4g}); "
          f"evaluate with: python -m dd.eval --synset {distiller.run_dir / 'synset'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
