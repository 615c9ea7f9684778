"""Finding a trajectory store and sampling expert segments from it during distillation."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from dd.buffer.store import TrajectoryStore
from dd.errors import DDError


def find_store(buffer: str | None, buffer_dir: str, dataset: str, model: str,
               buffer_config: str | None = None) -> TrajectoryStore:
    """Open ``buffer`` if given; else the store that the buffer preset ``buffer_config`` writes; else the
    single store under ``<buffer_dir>/<dataset>/<model>/``."""
    if buffer:
        return TrajectoryStore.open(buffer)
    if buffer_config:
        from dd.buffer.config import BufferConfig, store_root
        from dd.config import load_yaml, make_config

        recipe = make_config(BufferConfig, load_yaml(buffer_config), f"buffer preset {buffer_config}")
        return TrajectoryStore.open(store_root(buffer_dir, dataset, model, recipe.recipe().to_dict()))
    parent = Path(buffer_dir) / dataset / model
    candidates = sorted(p for p in parent.glob("*") if (p / "manifest.json").is_file())
    if not candidates:
        raise DDError(f"no expert buffer under {parent}; run python -m dd.buffer --dataset {dataset} "
                      f"--model {model} first, or pass --buffer PATH")
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise DDError(f"several expert buffers under {parent} ({names}); choose one with --buffer PATH")
    return TrajectoryStore.open(candidates[0])


class ExpertPool:
    """Uniform sampling of complete experts, with the most recently used ones cached on the device."""

    def __init__(self, store: TrajectoryStore, device: torch.device, max_cached: int = 64) -> None:
        self.store = store
        self.device = device
        self.indices = store.completed()
        if not self.indices:
            raise DDError(f"the buffer at {store.root} holds no finished expert; run python -m dd.buffer first")
        self.max_cached = max(1, max_cached)
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def get(self, index: int) -> torch.Tensor:
        """Trajectory [E+1, P] of expert ``index`` on the device."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        trajectory = self.store.read_expert(index).to(self.device)
        self._cache[index] = trajectory
        if len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return trajectory

    def sample(self, generator: torch.Generator) -> tuple[int, torch.Tensor]:
        """A uniformly drawn expert: (index, trajectory)."""
        index = self.indices[int(torch.randint(len(self.indices), (1,), generator=generator))]
        return index, self.get(index)
