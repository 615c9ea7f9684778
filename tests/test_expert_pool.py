"""The expert pool of a distillation: rows read from memory-mapped files, checksummed once, a cache bounded in bytes."""

from __future__ import annotations

import pytest
import torch

from dd.buffer.store import ExpertFile, TrajectoryStore, recipe_tag
from dd.distill.experts import ExpertPool
from dd.errors import DDError
from tests.helpers import RECIPE, SPEC, header, trajectory

ROW_MB = SPEC.numel * 4 / 2**20  # one row of float32 parameters, in MiB


@pytest.fixture
def store(tmp_path) -> TrajectoryStore:
    store = TrajectoryStore.create(tmp_path / "toy" / "Toy" / recipe_tag(RECIPE), header())
    for i in range(3):
        store.write_expert(i, trajectory(i), {})
    return store


@pytest.fixture
def reads(monkeypatch) -> list[tuple[str, int, int]]:
    """Every (file name, start, stop) that an ``ExpertFile`` reads, in order."""
    log: list[tuple[str, int, int]] = []
    original = ExpertFile.rows

    def rows(self, start, stop, pin=False):
        log.append((self.path.name, start, stop))
        return original(self, start, stop, pin)

    monkeypatch.setattr(ExpertFile, "rows", rows)
    return log


def test_rows_equal_the_stored_trajectory(store):
    pool = ExpertPool(store, torch.device("cpu"), cache_mb=1, window=2)
    for index in range(3):
        rows = pool.get(index)
        assert rows.shape == trajectory(index).shape and len(rows) == 4
        for epoch in (2, 0, 3, 1):
            assert torch.equal(rows[epoch], trajectory(index)[epoch])
    with pytest.raises(IndexError):
        pool.get(0)[4]


def test_an_iteration_reads_its_window_only(store, reads):
    """Asking for epoch t reads rows t..t+M (window M+1 = 3) and nothing else; t+M then comes from the device copy."""
    pool = ExpertPool(store, torch.device("cpu"), cache_mb=1, window=3)
    rows = pool.get(1)
    rows[1], rows[3]
    assert reads == [("expert_00001.safetensors", e, e + 1) for e in (1, 2, 3)]
    pool.get(1)[2]  # a later iteration: rows 2 and 3 are in the host cache
    assert len(reads) == 3


def test_each_file_is_checksummed_once(store, monkeypatch):
    checked: list[int] = []
    original = TrajectoryStore.verify_expert
    monkeypatch.setattr(TrajectoryStore, "verify_expert", lambda self, i: (checked.append(i), original(self, i)))
    pool = ExpertPool(store, torch.device("cpu"), cache_mb=0)  # no cache: every row is read again
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        _, rows = pool.sample(generator)
        rows[0]
    assert sorted(checked) == [0, 1, 2]


def test_cache_is_bounded_in_bytes(store, reads):
    pool = ExpertPool(store, torch.device("cpu"), cache_mb=2.5 * ROW_MB)  # two rows fit, not three
    for epoch in range(4):
        pool.get(0)[epoch]
        assert pool.cached_bytes <= 2 * SPEC.numel * 4
    assert pool.cached_bytes == 2 * SPEC.numel * 4
    pool.get(0)[3]  # the most recent rows stay
    assert len(reads) == 4
    assert torch.equal(pool.get(0)[0], trajectory(0)[0]) and len(reads) == 5  # evicted: read again, same values


def test_pinned_blocks_are_counted_at_the_allocators_size(tmp_path, monkeypatch):
    """Pinned rows count as the power-of-two blocks the pinned allocator hands out, so the cache's pinned memory
    stays within --expert-cache-mb (pinning itself is faked: this CPU has no CUDA)."""
    from dd.distill.experts import pinned_block_bytes
    from dd.functional import ParamSpec

    assert [pinned_block_bytes(n) for n in (1, 2, 3, 1000, 1024, 1025)] == [1, 2, 4, 1024, 1024, 2048]
    spec = ParamSpec(("w",), ((40,),))  # 160-byte rows in 256-byte blocks
    odd = TrajectoryStore.create(tmp_path / "toy" / "Toy" / recipe_tag(RECIPE), {**header(),
                                                                                 "param_spec": spec.to_json()})
    odd.write_expert(0, torch.randn(4, 40), {})
    pinned: list[bool] = []
    original = ExpertFile.rows
    monkeypatch.setattr(ExpertFile, "rows", lambda self, a, b, pin=False: (pinned.append(pin), original(self, a, b))[1])
    pool = ExpertPool(odd, torch.device("cpu"), cache_mb=2.5 * 256 / 2**20)  # 4 rows by their size, 2 by block
    pool._pin = True  # as on CUDA
    for epoch in range(4):
        pool.get(0)[epoch]
        assert pool.cached_bytes <= 2.5 * 256
    assert pool.cached_bytes == 2 * 256 and len(pool._cache) == 2 and all(pinned) and len(pinned) == 4


def test_a_damaged_file_is_named_when_first_drawn(store):
    path = store.tensor_path(2)
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x10
    path.write_bytes(bytes(data))
    pool = ExpertPool(store, torch.device("cpu"))
    assert torch.equal(pool.get(0)[1], trajectory(0)[1])
    with pytest.raises(DDError, match=r"expert_00002\.safetensors is corrupted.*delete it"):
        pool.get(2)[0]


def test_read_expert_is_the_rows_of_the_mapped_file(store):
    assert torch.equal(store.read_expert(1), trajectory(1))
    assert torch.equal(store.open_expert(1).rows(1, 3), trajectory(1)[1:3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rows_are_pinned_and_copied_to_cuda(store):
    pool = ExpertPool(store, torch.device("cuda"), cache_mb=1, window=2)
    row = pool.get(0)[1]
    assert row.device.type == "cuda" and torch.equal(row.cpu(), trajectory(0)[1])
    assert all(r.is_pinned() for r in pool.host_rows(0, 1, 3))
