"""Resumable state of a distillation run: one safetensors file whose metadata holds the JSON state.

One file means one atomic rename commits the tensors and the state together; nothing is pickled.
The state holds the run's config, so that ``--resume`` continues only the run that the folder holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dd.cli import flag
from dd.errors import DDError
from dd.io import atomic_write_json, load_tensors_and_metadata, pack_state, save_tensors, unpack_state
from dd.metrics import MetricsLog

CHECKPOINT = "checkpoint.safetensors"

# Config keys a resumed run may change: how long it runs, how often it logs, saves and evaluates, how it is
# evaluated (the reported numbers, not the set: the best-so-far is reset when they change), where its data
# and outputs live, and memory or device choices that give the same set up to float rounding. Every other key
# changes the synthetic set, so a run resumed with another value would be a mix of two runs.
RUN_CONTROL = frozenset({
    "iterations", "log_every", "checkpoint_every", "eval_every", "eval_models", "eval_runs", "eval_epochs",
    "eval_batch_size", "run_dir", "resume", "device", "wandb", "data_path", "download", "expert_cache_mb",
    "max_cached_experts", "unroll", "unroll_snapshot_every", "unroll_chunk",
})
EVAL_KEYS = frozenset({"eval_models", "eval_runs", "eval_epochs", "eval_batch_size"})


def save_checkpoint(run_dir: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Atomically write ``tensors`` and the JSON-able ``state`` to ``run_dir/checkpoint.safetensors``."""
    save_tensors(run_dir / CHECKPOINT, tensors, metadata={"state": json.dumps(state)})


def load_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(tensors, state) of the last checkpoint in ``run_dir``, or None when there is none."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    tensors, metadata = load_tensors_and_metadata(path, what="checkpoint")
    try:
        state = json.loads(metadata["state"])
    except (KeyError, json.JSONDecodeError):
        state = None
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict) or "iteration" not in state:
        raise DDError(f"checkpoint {path} lacks its state metadata (iteration and config), so it cannot be "
                      "resumed; pass a new --run-dir, or delete it to start this run over")
    return tensors, state


def save_optimizers(optimizers: dict[str, torch.optim.Optimizer]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The checkpoint part of ``optimizers`` (by name): their state dicts as tensors ``optimizers.<i>`` and the JSON
    state ``{"optimizers": skeleton}``, which ``load_optimizers`` reads back. Every run class saves its optimisers
    this way."""
    tensors, skeleton = pack_state({name: opt.state_dict() for name, opt in optimizers.items()}, "optimizers")
    return tensors, {"optimizers": skeleton}


def load_optimizers(optimizers: dict[str, torch.optim.Optimizer], tensors: dict[str, torch.Tensor],
                    state: dict[str, Any], device: torch.device) -> None:
    """Restore ``optimizers`` (by name) from a checkpoint written by ``save_optimizers``, or by an older dd: one
    optimiser's packed state dict under ``"optimizer"`` (DC/DSA/DM, KRR-ST), or the trajectory engine's momentum
    buffers as tensors ``opt.<name>.<group>.<param>``."""
    if "optimizers" in state:
        saved = unpack_state(state["optimizers"], tensors, device)
        for name, opt in optimizers.items():
            opt.load_state_dict(saved[name])
    elif "optimizer" in state:
        (opt,) = optimizers.values()
        opt.load_state_dict(unpack_state(state["optimizer"], tensors, device))
    else:
        for name, opt in optimizers.items():
            for i, group in enumerate(opt.param_groups):
                for j, p in enumerate(group["params"]):
                    key = f"opt.{name}.{i}.{j}"
                    if key in tensors:
                        opt.state[p]["momentum_buffer"] = tensors[key].to(device)


def _show(value: Any) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def config_changes(stored: dict[str, Any], requested: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (stored, requested)} for every key whose value differs (a missing key counts as None)."""
    return {k: (stored.get(k), requested.get(k)) for k in dict.fromkeys([*stored, *requested])
            if stored.get(k) != requested.get(k)}


def check_resume(run_dir: Path, stored: dict[str, Any], requested: dict[str, Any],
                 defaults: dict[str, Any] | None = None) -> dict[str, tuple[Any, Any]]:
    """The run-control changes of a resume; DDError naming each other key that differs, with both values. A key
    the checkpoint lacks (a setting newer than the run) passes when it is requested at its value in ``defaults``:
    the run is continued as if it had had that setting's default from the start. A key the requested config lacks
    is a setting its method does not read (a checkpoint from before each method had its own config, whose config
    held every trajectory method's knobs): it cannot have changed the set and is left out."""
    changes = {k: v for k, v in config_changes(stored, requested).items() if k in requested}
    defaults = defaults or {}
    newer = {k for k, (_, new) in changes.items() if k not in stored and k in defaults and new == defaults[k]}
    mixed = {k: v for k, v in changes.items() if k not in RUN_CONTROL and k not in newer}
    if "method" in mixed:  # the other keys of another method's config follow from it
        mixed = {"method": mixed["method"]}
    if mixed:
        shown = [f"{flag(k)} {_show(old)} (checkpoint) vs {_show(new)} (now)" for k, (old, new) in mixed.items()]
        raise DDError(f"{run_dir} holds a run with different settings: {', '.join(shown)}; rerun with the "
                      "checkpoint's flags, or pass a new --run-dir")
    return {k: v for k, v in changes.items() if k != "resume"}


def open_run(run_dir: Path, resume: bool, config: dict[str, Any], defaults: dict[str, Any] | None = None,
             extra: int = 0, record: dict[str, Any] | None = None
             ) -> tuple[tuple[dict[str, torch.Tensor], dict[str, Any]] | None, dict[str, tuple[Any, Any]], MetricsLog]:
    """Check ``run_dir`` (held by this process, see ``dd.lock``) against ``config``, open its ``metrics.jsonl``
    and only then write its ``config.json`` (``record``, default ``config``). Returns (its last checkpoint or None,
    the run-control changes of a resume, also logged, and the log). Refuses a folder with a checkpoint unless
    ``resume``, a checkpoint of another run (``check_resume``, with the config class's ``defaults`` for settings
    newer than the checkpoint), and one past the requested iterations (plus ``extra``: DC/DSA/DM run one more)."""
    found = load_checkpoint(run_dir)
    if found is None and resume and any(run_dir.glob("synset*/synset.json")):
        raise DDError(f"--resume: {run_dir} holds a set but no {CHECKPOINT}, so its run cannot be continued (starting "
                      "over would overwrite the set and its metrics.jsonl); restore the checkpoint, or pass a new "
                      "--run-dir")
    if found is not None and not resume:
        raise DDError(f"{run_dir} already holds a run; pass --resume to continue it (with the same flags) or "
                      "choose another --run-dir")
    iteration = found[1]["iteration"] if found is not None else 0
    changes = check_resume(run_dir, found[1]["config"], config, defaults) if found is not None else {}
    if iteration > config["iterations"] + extra:
        raise DDError(f"{run_dir} holds iteration {iteration}, past --iterations {config['iterations']}; "
                      f"pass --iterations {iteration - extra} or more")
    log = MetricsLog(run_dir / "metrics.jsonl", config["wandb"], config, resume_from=iteration)
    atomic_write_json(run_dir / "config.json", config if record is None else record)
    if changes:
        log.write({"iteration": iteration, "resumed": {k: {"checkpoint": old, "now": new}
                                                       for k, (old, new) in changes.items()}})
    return found, changes, log
