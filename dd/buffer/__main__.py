"""``python -m dd.buffer``: train expert networks on real data and store their trajectories.

    python -m dd.buffer --config experiments/buffer/digits.yaml      # train (resumes if interrupted)
    python -m dd.buffer --config experiments/buffer/digits-0to4_barlow_twins.yaml   # an SSL teacher (KRR-ST)
    python -m dd.buffer import replay_buffer_0.pt ... --dataset cifar10 --model ConvNet --epochs 50
    torchrun --nproc-per-node 4 -m dd.buffer --config ...          # 4 processes share the experts
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from dd import distributed
from dd.buffer.config import BufferConfig
from dd.buffer.legacy import ImportConfig, import_buffers
from dd.buffer.store import TrajectoryStore
from dd.buffer.train import train_store
from dd.cli import Interrupted, resume_command, run_cli
from dd.config import build_parser, parse_config


def train_main(argv: Sequence[str] | None) -> int:
    config, _ = parse_config(BufferConfig, argv, build_parser(BufferConfig, "python -m dd.buffer", __doc__,
                                                                "experiments/buffer/digits.yaml"))
    try:
        root = train_store(config)
    except KeyboardInterrupt as e:
        if config.teacher != "none":
            raise
        rerun = resume_command("dd.buffer", argv, flag=None)
        kept = getattr(e, "kept", "")
        raise Interrupted.of(e, f"{kept}; rerun the same command to train the rest: {rerun}" if kept else
                             f"no expert was trained before the interrupt; rerun the same command to train them: "
                             f"{rerun}") from None
    if config.teacher != "none" or not distributed.is_main():
        return 0
    accs = [r["final_test_acc"] for r in TrajectoryStore.open(root).records() if r.get("final_test_acc") is not None]
    if accs:
        print(f"experts: {len(accs)}, final test accuracy {sum(accs) / len(accs):.4f} (mean)")
    print(next_steps(config, root))
    return 0


def next_steps(config: BufferConfig, root: Path) -> str:
    """The stage's last lines: where the experts are and the commands that distil from them and report on them."""
    data = [*(["--data-path", config.data_path] if config.dataset != "digits" else []),
            *(["--image-size", str(config.image_size)] if config.image_size else []),
            *(["--channels", str(config.channels)] if config.channels else [])]
    distill = shlex.join(["python", "-m", "dd.distill", "--dataset", config.dataset, "--model", config.model,
                          "--buffer", str(root), *data])
    return (f"experts: {root}\nnext: distil a set from them: {distill}\n"
            f"      report on them: {shlex.join(['python', '-m', 'dd.report', str(root)])}")


def import_main(argv: Sequence[str]) -> int:
    parser = build_parser(ImportConfig, "python -m dd.buffer import",
                          "Convert original MTT/FTD/DATM/AST replay_buffer_N.pt files into a dd trajectory store.")
    parser.add_argument("paths", nargs="+", help="replay_buffer_N.pt files of the original code")
    config, extras = parse_config(ImportConfig, argv, parser)
    root, indices = import_buffers(config, extras["paths"])
    print(f"imported {len(indices)} experts into {root}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "import":
        return import_main(argv[1:])
    return train_main(argv)


if __name__ == "__main__":
    run_cli(main)
