"""Run metrics: a ``metrics.jsonl`` file always, Weights & Biases only when asked for."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from dd.errors import DDError
from dd.io import atomic_write_bytes


def _iteration(path: Path, number: int, line: str) -> float:
    """The iteration of a logged line; infinity for a blank line or one torn by a kill mid-write (dropped)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return math.inf
    iteration = record.get("iteration", 0) if isinstance(record, dict) else None
    if not isinstance(iteration, (int, float)) or isinstance(iteration, bool):
        raise DDError(f"{path} line {number} is not a metrics record (a JSON object with a numeric iteration): "
                      f"{line[:60]!r}; delete that line, then rerun")
    return iteration


def check_wandb(mode: str) -> None:
    """DDError unless ``--wandb mode`` can start: "off", or the wandb package (and, online, a login)."""
    if mode == "off":
        return
    try:
        import wandb
    except ImportError:
        raise DDError(f"--wandb {mode} needs the wandb package; pip install 'dd[wandb]' or use --wandb off") from None
    if mode == "online" and not (os.environ.get("WANDB_API_KEY") or getattr(getattr(wandb, "api", None),
                                                                            "api_key", None)):
        raise DDError("--wandb online needs a Weights & Biases login: run `wandb login` (or set WANDB_API_KEY), "
                      "or use --wandb offline")


def _start_wandb(mode: str, config: dict[str, Any] | None, folder: Path) -> Any:
    check_wandb(mode)
    import wandb

    try:
        return wandb.init(project="dd", mode=mode, config=config, dir=str(folder))
    except Exception as e:  # wandb raises its own types for a bad key, no network, a bad setting
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DDError(f"--wandb {mode} could not start ({first}); fix it or use --wandb off") from None


class MetricsLog:
    """Append one JSON object per line; on resume, drop lines past the resumed iteration first."""

    def __init__(self, path: Path, wandb_mode: str = "off", config: dict[str, Any] | None = None,
                 resume_from: int | None = None) -> None:
        self.path = Path(path)
        if resume_from is not None and self.path.exists():
            lines = self.path.read_text().splitlines()
            kept = [line for n, line in enumerate(lines, 1) if _iteration(self.path, n, line) <= resume_from]
            if len(kept) < len(lines):
                atomic_write_bytes(self.path, "".join(line + "\n" for line in kept).encode())
        self._wandb = None if wandb_mode == "off" else _start_wandb(wandb_mode, config, self.path.parent)
        self._file = open(self.path, "a")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "iteration"}, step=record.get("iteration"))

    def image(self, key: str, path: Path, iteration: int) -> None:
        """Log the PNG at ``path`` to wandb under ``key`` at ``iteration`` (nothing when wandb is off)."""
        if self._wandb is not None:
            import wandb

            self._wandb.log({key: wandb.Image(str(path))}, step=iteration)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
