"""Run metrics: a ``metrics.jsonl`` file always, Weights & Biases only when asked for."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dd.errors import DDError


def _iteration(line: str) -> float:
    """The iteration of a logged line; infinity for a blank line or one torn by a kill mid-write (dropped)."""
    try:
        return json.loads(line).get("iteration", 0)
    except json.JSONDecodeError:
        return math.inf


class MetricsLog:
    """Append one JSON object per line; on resume, drop lines past the resumed iteration first."""

    def __init__(self, path: Path, wandb_mode: str = "off", config: dict[str, Any] | None = None,
                 resume_from: int | None = None) -> None:
        self.path = Path(path)
        if resume_from is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _iteration(line) <= resume_from]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._file = open(self.path, "a")
        self._wandb = None
        if wandb_mode != "off":
            try:
                import wandb
            except ImportError:
                raise DDError("--wandb needs the wandb package; pip install 'dd[wandb]' or use --wandb off") from None
            self._wandb = wandb.init(project="dd", mode=wandb_mode, config=config, dir=str(self.path.parent))

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "iteration"}, step=record.get("iteration"))

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
