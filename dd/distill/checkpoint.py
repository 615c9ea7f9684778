"""Resumable state of a distillation run: one safetensors file whose metadata holds the JSON state.

One file means one atomic rename commits the tensors and the state together; nothing is pickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dd.errors import DDError
from dd.io import atomic_write_json, load_tensors_and_metadata, save_tensors

CHECKPOINT = "checkpoint.safetensors"


def save_checkpoint(run_dir: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Atomically write ``tensors`` and the JSON-able ``state`` to ``run_dir/checkpoint.safetensors``."""
    save_tensors(run_dir / CHECKPOINT, tensors, metadata={"state": json.dumps(state)})


def load_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(tensors, state) of the last checkpoint in ``run_dir``, or None when there is none."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    tensors, metadata = load_tensors_and_metadata(path, what="checkpoint")
    return tensors, json.loads(metadata["state"])


def open_run(run_dir: Path, resume: bool,
             config: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Create ``run_dir`` with its resolved ``config.json``; returns its last checkpoint when resuming, and
    refuses to overwrite a run that has one unless ``resume``."""
    found = load_checkpoint(run_dir)
    if found is not None and not resume:
        raise DDError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", config)
    return found
