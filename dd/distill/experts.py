"""Finding a trajectory store and sampling expert segments from it during distillation."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from dd.buffer.store import ExpertFile, TrajectoryStore, recipe_tag
from dd.errors import DDError


def find_store(buffer: str | None, buffer_dir: str, dataset: str, model: str,
               buffer_config: str | None = None) -> TrajectoryStore:
    """Open ``buffer`` if given; else the store that the buffer preset ``buffer_config`` writes; else the
    single store under ``<buffer_dir>/<dataset>/<model>/``. Given both, the store's recipe must be the preset's
    (the run records both), else DDError."""
    if buffer_config:
        from dd.buffer.config import BufferConfig, store_root
        from dd.config import load_yaml, make_config

        preset = make_config(BufferConfig, load_yaml(buffer_config), f"buffer preset {buffer_config}")
        recipe = preset.recipe().to_dict()
        if not buffer:
            return TrajectoryStore.open(store_root(buffer_dir, dataset, model, recipe))
        store = TrajectoryStore.open(buffer)
        stored = {k: v for k, v in store.header["recipe"].items() if k != "origin"}  # imported experts: same recipe
        if recipe_tag(stored) != recipe_tag(recipe):
            raise DDError(f"--buffer {buffer} holds experts of recipe {recipe_tag(stored)}, but --buffer-config "
                          f"{buffer_config} (the preset's store) is {recipe_tag(recipe)}; pass --buffer-config none to "
                          "match the experts of --buffer, or drop --buffer")
        return store
    if buffer:
        return TrajectoryStore.open(buffer)
    parent = Path(buffer_dir) / dataset / model
    candidates = sorted(p for p in parent.glob("*") if (p / "manifest.json").is_file())
    if not candidates:
        raise DDError(f"no expert buffer under {parent}; run python -m dd.buffer --dataset {dataset} "
                      f"--model {model} first, or pass --buffer PATH")
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise DDError(f"several expert buffers under {parent} ({names}); choose one with --buffer PATH")
    return TrajectoryStore.open(candidates[0])


def pinned_block_bytes(nbytes: int) -> int:
    """The bytes PyTorch's caching pinned-memory allocator takes for a tensor of ``nbytes``: the next power of two
    (a freed block stays with the allocator for the next tensor of that size, not with the operating system)."""
    return 1 << max(0, nbytes - 1).bit_length()


class ExpertPool:
    """Uniform sampling of complete experts, read by rows.

    Each expert file is checksummed once per pool (the first time it is drawn) and then memory-mapped; an
    iteration reads only the rows it asks for (``ExpertRows``): asking for epoch t reads rows t..t+M
    (M = ``window - 1``; MTT, FTD and DATM need t and t+M, AST t..t+M). Rows are kept in a host
    cache bounded in bytes (least recently used first out), pinned when the device is CUDA so that their
    copies to the device do not block. A pinned row is counted at the size of the block PyTorch's pinned-memory
    allocator gives it (``pinned_block_bytes``), so the pinned memory the cache holds stays within the bound."""

    def __init__(self, store: TrajectoryStore, device: torch.device, cache_mb: float = 1024.0,
                 window: int = 1) -> None:
        self.store = store
        self.device = torch.device(device)
        self.indices = store.completed()
        if not self.indices:
            raise DDError(f"the buffer at {store.root} holds no finished expert; run python -m dd.buffer first")
        self.cache_bytes = max(0, int(cache_mb * 2**20))
        self.window = max(1, window)
        self._pin = self.device.type == "cuda"
        self._files: dict[int, ExpertFile] = {}
        self._cache: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        self._cached_bytes = 0

    def file(self, index: int) -> ExpertFile:
        """Expert ``index``'s mapped file, checksummed on first use."""
        if index not in self._files:
            self._files[index] = self.store.open_expert(index, verify=True)
        return self._files[index]

    def host_rows(self, index: int, start: int, stop: int) -> list[torch.Tensor]:
        """Rows ``start``..``stop - 1`` [P] of expert ``index`` on the host (pinned on CUDA), from the cache or,
        for those not cached, from the mapped file."""
        rows = []
        for e in range(start, stop):
            key = (index, e)
            row = self._cache.get(key)
            if row is None:
                row = self.file(index).rows(e, e + 1, pin=self._pin)[0]  # one copy from the mapping
                self._put(key, row)
            else:
                self._cache.move_to_end(key)
            rows.append(row)
        return rows

    def _size(self, row: torch.Tensor) -> int:
        size = row.numel() * row.element_size()
        return pinned_block_bytes(size) if self._pin else size

    def _put(self, key: tuple[int, int], row: torch.Tensor) -> None:
        size = self._size(row)
        if size > self.cache_bytes:
            return
        self._cache[key] = row
        self._cached_bytes += size
        while self._cached_bytes > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= self._size(old)

    @property
    def cached_bytes(self) -> int:
        """Bytes of rows held in the host cache (at most ``cache_mb`` MiB)."""
        return self._cached_bytes

    def get(self, index: int) -> ExpertRows:
        """Expert ``index``'s trajectory as ``ExpertRows`` (rows read when indexed)."""
        return ExpertRows(self, index)

    def sample(self, generator: torch.Generator) -> tuple[int, ExpertRows]:
        """A uniformly drawn expert: (index, its rows)."""
        index = self.indices[int(torch.randint(len(self.indices), (1,), generator=generator))]
        return index, self.get(index)


class ExpertRows:
    """One drawn expert's trajectory, indexed like the tensor [E+1, P]: ``rows[e]`` is row e on the device.
    Indexing epoch e brings rows e..e+M (the pool's window) to the device at once, so ``rows[t]`` then
    ``rows[t + M]`` issues all of the window's non-blocking copies before the unroll needs the last."""

    def __init__(self, pool: ExpertPool, index: int) -> None:
        self.pool, self.index = pool, index
        self.shape = torch.Size(pool.store.shape)
        self._on_device: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, epoch: int) -> torch.Tensor:
        epoch = int(epoch)
        if not 0 <= epoch < self.shape[0]:
            raise IndexError(f"epoch {epoch} outside the trajectory's {self.shape[0]} rows")
        if epoch not in self._on_device:
            stop = min(self.shape[0], epoch + self.pool.window)
            rows = self.pool.host_rows(self.index, epoch, stop)
            for e, row in zip(range(epoch, stop), rows, strict=True):
                self._on_device.setdefault(e, row.to(self.pool.device, non_blocking=True))
        return self._on_device[epoch]
