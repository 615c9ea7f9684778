"""Import the ``replay_buffer_N.pt`` files of the original MTT/FTD/DATM code into a trajectory store.

Such a file is ``torch.save`` of a list of experts; an expert is a list of E+1 timestamps (index 0 the
initialisation, index e after epoch e); a timestamp is a list of tensors in ``model.parameters()``
order with their original shapes. The files carry no metadata, so the store's header (model, recipe,
epochs) comes from the caller, and the parameter shapes are checked against it. Files are read with
``weights_only=True``: nothing but tensors and lists is unpickled. ``import_buffers`` (``python -m dd.buffer
import``) makes the store of an ``ImportConfig`` and fills it.
"""

from __future__ import annotations

import pickle
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dd.buffer.config import BufferConfig, store_header, store_root
from dd.buffer.experts import ExpertRecipe
from dd.buffer.store import TrajectoryStore
from dd.config import load_yaml, make_config, opt, validate
from dd.data import get_spec
from dd.errors import DDError
from dd.io import sha256_file


@dataclass
class ImportConfig:
    dataset: str = opt("cifar10", "dataset the original buffer was trained on")
    model: str = opt("ConvNet", "architecture of the original experts")
    zca: bool = opt(False, "the original buffer was trained on ZCA-whitened images (--zca)")
    epochs: int = opt(50, "train_epochs of the original run")
    lr: float = opt(0.01, "lr_teacher of the original run")
    momentum: float = opt(0.0, "mom of the original run")
    weight_decay: float = opt(0.0, "l2 of the original run")
    batch_size: int = opt(256, "batch_train of the original run")
    dsa_strategy: str = opt("color_crop_cutout_flip_scale_rotate", "dsa_strategy of the original run")
    buffer_dir: str = opt("buffers", "root of the trajectory stores")
    recipe_config: str | None = opt(None, "dd.buffer preset of the original run's recipe (e.g. experiments/buffer/"
                                    "cifar10_gsam.yaml for FTD/DATM flat experts, cifar10_ast.yaml for AST's): "
                                    "its recipe replaces --epochs ... --dsa-strategy and --zca")


def import_recipe(config: ImportConfig) -> dict:
    """The recorded recipe of imported experts: from ``--recipe-config`` (any optimiser, schedule and
    regulariser a preset can name) or from the plain-SGD flags."""
    if config.recipe_config is None:
        recipe = ExpertRecipe(lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                              batch_size=config.batch_size, epochs=config.epochs, dsa_strategy=config.dsa_strategy,
                              preprocess="zca" if config.zca else "standard")
        return recipe.to_dict()
    preset = make_config(BufferConfig, load_yaml(config.recipe_config), config.recipe_config)
    if preset.dataset != config.dataset or preset.model != config.model:
        raise DDError(f"--recipe-config {config.recipe_config} is for {preset.model} on {preset.dataset}, not "
                      f"{config.model} on {config.dataset}; pass the matching --dataset/--model or preset")
    validate(preset)
    return preset.recipe().to_dict()


def import_buffers(config: ImportConfig, paths: Sequence[str | Path]) -> tuple[Path, list[int]]:
    """Import the original ``replay_buffer_N.pt`` files ``paths`` into the store of ``config``; returns its folder
    and the new experts' indices. A store this call made and filled with nothing is removed again."""
    spec = get_spec(config.dataset)
    recipe = import_recipe(config)
    # Imported experts get their own folder: their data pipeline was not ours, so they never mix
    # with experts trained here under the same hyper-parameters.
    recipe["origin"] = "imported replay_buffer"
    header = store_header(spec, config.model, recipe, {"kind": recipe["preprocess"]},
                          imported_from=[str(p) for p in paths])
    root = store_root(config.buffer_dir, spec.name, config.model, recipe)
    created = not root.exists()
    store = TrajectoryStore.create(root, header)
    try:
        indices = import_legacy(paths, store)
    except BaseException:
        if created and not store.completed():  # a store this call made and filled with nothing goes again
            shutil.rmtree(root, ignore_errors=True)
        raise
    return store.root, indices


def _load(path: Path) -> list:
    if not path.is_file():
        raise DDError(f"replay buffer {path} does not exist")
    try:
        experts = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please|\n\n|$)", str(e), re.DOTALL)
        reason = " ".join(match.group(1).split())[:160] if match else type(e).__name__
        raise DDError(f"{path} is not a plain replay buffer (refusing to unpickle arbitrary objects: "
                      f"{reason})") from None
    except Exception as e:  # a damaged zip archive or pickle raises several types
        raise DDError(f"{path} could not be read as a torch.save file ({type(e).__name__}); "
                      "is it a complete replay_buffer_N.pt?") from None
    if not isinstance(experts, (list, tuple)):
        raise DDError(f"{path} holds a {type(experts).__name__}, not a list of experts; "
                      "is it a replay_buffer_N.pt of MTT/FTD/DATM?")
    return list(experts)


def _flatten(expert: Any, store: TrajectoryStore, where: str) -> torch.Tensor:
    """Trajectory [E+1, P] of one original expert, after checking its layout against the store."""
    spec = store.param_spec
    if not isinstance(expert, (list, tuple)) or not all(isinstance(t, (list, tuple)) for t in expert):
        raise DDError(f"{where} is not a list of timestamps (lists of tensors); is it a replay_buffer_N.pt?")
    if len(expert) != store.num_epochs + 1:
        raise DDError(f"{where} has {len(expert)} timestamps but the buffer at {store.root} expects "
                      f"{store.num_epochs + 1} (epochs+1); pass the --epochs the original run used")
    rows = []
    for epoch, timestamp in enumerate(expert):
        if len(timestamp) != len(spec.shapes):
            raise DDError(f"{where}, epoch {epoch} has {len(timestamp)} parameter tensors but the model has "
                          f"{len(spec.shapes)}; it was made for a different model")
        for i, (tensor, name, shape) in enumerate(zip(timestamp, spec.names, spec.shapes, strict=True)):
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
                got = list(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise DDError(f"{where}, epoch {epoch}: parameter {i} ({name}) is {got}, expected {list(shape)}; "
                              "it was made for a different model (or dataset)")
        rows.append(torch.cat([t.detach().reshape(-1).to(torch.float32) for t in timestamp]))
    trajectory = torch.stack(rows)
    if not bool(torch.isfinite(trajectory).all()):
        raise DDError(f"{where} holds non-finite parameters; leave that file out of the import")
    return trajectory


def import_legacy(paths: Sequence[str | Path], store: TrajectoryStore, start_index: int | None = None) -> list[int]:
    """Write the experts of the original ``replay_buffer_N.pt`` files into ``store`` and return their
    new indices. They go after the existing experts unless ``start_index`` is given. Experts already
    imported from a file with the same SHA-256 are skipped, so an interrupted import can be rerun."""
    imported = {(r["source"]["sha256"], r["source"]["position"])
                for r in store.records() if isinstance(r.get("source"), dict) and "sha256" in r["source"]}
    done = store.completed()
    index = start_index if start_index is not None else (done[-1] + 1 if done else 0)
    new = []
    for path in map(Path, paths):
        experts = _load(path)
        digest = sha256_file(path)
        for position, expert in enumerate(experts):
            if (digest, position) in imported:
                continue
            trajectory = _flatten(expert, store, f"{path} expert {position}")
            record = {"seed": None, "test_acc": [None] * (store.num_epochs + 1), "final_test_acc": None,
                      "train_seconds": None,
                      "source": {"file": str(path.resolve()), "sha256": digest, "position": position}}
            store.write_expert(index, trajectory, record)
            imported.add((digest, position))
            new.append(index)
            index += 1
    return new
