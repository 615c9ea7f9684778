"""CPU seconds per distillation iteration on each rank: ``Distiller.step`` timed by ``time.process_time`` over
3 iterations after a warm-up, with dd.distill's flags (nothing is written to the run folder).

    python scripts/bench_ranks.py --config experiments/mtt/digits_ipc10.yaml --device cpu
    torchrun --standalone --nproc-per-node 2 scripts/bench_ranks.py --config experiments/mtt/digits_ipc10.yaml \
        --device cpu
"""

from __future__ import annotations

import json
import sys
import time

from dd import distributed
from dd.config import build_parser, parse_config
from dd.distill.config import MTTConfig
from dd.distill.engine import Distiller


def main() -> None:
    config, _ = parse_config(MTTConfig, sys.argv[1:], build_parser(MTTConfig, "bench_ranks.py", __doc__))
    distiller = Distiller(config)
    distiller.step()  # warm-up
    tic = time.process_time()
    for _ in range(3):
        distiller.step()
    every = distributed.all_gather_object((time.process_time() - tic) / 3)
    if distributed.is_main():
        print(json.dumps({"processes": len(every), "cpu_seconds_per_iteration": every, "all_ranks": sum(every)}))


if __name__ == "__main__":
    main()
