"""How far an expert moves in one matched segment: the relative distance ||w(t+M) - w(t)|| / ||w(0)||, mean over the
experts of each store, for a few start epochs t (docs/results-ast-ipc10.md compares AST's smooth experts with MTT's).

    python scripts/expert_segments.py buffers/digits/ConvNet/<store> [<store> ...] --expert-epochs 2 --starts 0,4,8
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from _results import fail, int_list

from dd.buffer.store import TrajectoryStore
from dd.errors import DDError


def segment_lengths(store: TrajectoryStore, expert_epochs: int, starts: list[int],
                    experts: list[int] | None = None) -> list[float]:
    """Mean over ``experts`` (default: the store's complete experts) of ||w(t+M) - w(t)|| / ||w(0)|| for each
    start epoch t."""
    per_expert = []
    for index in store.completed() if experts is None else experts:
        trajectory = store.read_expert(index)
        if max(starts) + expert_epochs >= trajectory.shape[0]:
            fail(f"start epoch {max(starts)} + {expert_epochs} is past the {trajectory.shape[0] - 1} epochs of "
                 f"{store.root}; pass smaller --starts")
        scale = trajectory[0].norm().item()
        per_expert.append([(trajectory[t + expert_epochs] - trajectory[t]).norm().item() / scale for t in starts])
    return [statistics.fmean(column) for column in zip(*per_expert, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stores", nargs="+", help="expert stores written by dd.buffer")
    parser.add_argument("--expert-epochs", type=int, default=2, help="segment length M in epochs")
    parser.add_argument("--starts", default="0,4,8", help="comma-separated start epochs t")
    args = parser.parse_args()
    starts = int_list(args.starts, "--starts")
    rows = []
    for path in args.stores:
        try:
            lengths = segment_lengths(TrajectoryStore.open(path), args.expert_epochs, starts)
        except DDError as exc:  # a missing store or a damaged expert file
            fail(str(exc))
        rows.append(f"| {Path(path).name} | " + " | ".join(f"{x:.4f}" for x in lengths) + " |")
    print("\n".join(["| store | " + " | ".join(f"t = {t}" for t in starts) + " |", "|---|" + "---|" * len(starts),
                     *rows]))


if __name__ == "__main__":
    main()
