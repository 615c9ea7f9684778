"""The trajectory store: round trip, crash consistency, corruption detection, header checks, legacy import."""

from __future__ import annotations

import json

import pytest
import torch

from dd.buffer.legacy import import_legacy
from dd.buffer.store import TrajectoryStore, recipe_tag
from dd.errors import DDError
from tests.helpers import EPOCHS, RECIPE, SPEC, header, trajectory


@pytest.fixture
def store(tmp_path) -> TrajectoryStore:
    return TrajectoryStore.create(tmp_path / "toy" / "Toy" / recipe_tag(RECIPE), header())


def test_round_trip(store):
    t = trajectory(0)
    store.write_expert(0, t, {"seed": 7, "test_acc": [None, 0.5, None, 0.75], "final_test_acc": 0.75})
    assert torch.equal(store.read_expert(0), t)
    reopened = TrajectoryStore.open(store.root)
    assert reopened.param_spec == SPEC and reopened.num_epochs == EPOCHS
    assert torch.equal(reopened.read_expert(0), t)
    (record,) = reopened.records()
    assert record["seed"] == 7 and record["index"] == 0 and record["file"] == "expert_00000.safetensors"
    assert reopened.verify() == []
    assert reopened.summary()["experts"][0]["final_test_acc"] == 0.75


def test_write_rejects_bad_shape_and_non_finite(store):
    with pytest.raises(DDError, match="shape"):
        store.write_expert(0, torch.zeros(EPOCHS, SPEC.numel), {})
    bad = trajectory(0)
    bad[2, 5] = float("nan")
    with pytest.raises(DDError, match="epoch 2"):
        store.write_expert(0, bad, {})
    assert store.completed() == []


@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
def test_damaged_file_is_named(store, damage):
    store.write_expert(0, trajectory(0), {})
    store.write_expert(1, trajectory(1), {})
    path = store.tensor_path(1)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-7] ^= 0x10  # a bit in the tensor payload: the file still parses, only the checksum knows
    path.write_bytes(bytes(data))
    with pytest.raises(DDError, match=r"expert_00001\.safetensors.*delete it"):
        store.read_expert(1)
    problems = store.verify()
    assert len(problems) == 1 and "expert_00001.safetensors" in problems[0]
    assert torch.equal(store.read_expert(0), trajectory(0))


def test_kill_between_tensor_and_record_leaves_expert_missing(store):
    for i in range(3):
        store.write_expert(i, trajectory(i), {})
    store.record_path(1).unlink()  # as if killed after the tensor file and before the record
    assert store.completed() == [0, 2]
    assert store.missing(4) == [1, 3]
    store.write_expert(1, trajectory(10), {})  # the resumed run overwrites the orphan
    assert store.missing(4) == [3]
    assert torch.equal(store.read_expert(1), trajectory(10))


def test_deleting_a_damaged_file_makes_it_missing(store):
    store.write_expert(0, trajectory(0), {})
    store.tensor_path(0).unlink()  # what the error message tells the user to do
    assert store.missing(1) == [0]


def test_kill_while_overwriting_leaves_no_stale_record(store, monkeypatch):
    store.write_expert(0, trajectory(0), {})

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("dd.buffer.store.atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        store.write_expert(0, trajectory(1), {})
    assert store.missing(1) == [0] and store.verify() == []


def test_create_reopens_same_header_and_refuses_another_recipe(store):
    store.write_expert(0, trajectory(0), {})
    again = TrajectoryStore.create(store.root, header())
    assert again.completed() == [0]
    assert again.header["created"] == store.header["created"]
    with pytest.raises(DDError, match="different recipe.*lr.*another --buffer-dir or delete it"):
        TrajectoryStore.create(store.root, header(lr=0.02))
    assert json.loads((store.root / "manifest.json").read_text())["recipe"]["lr"] == 0.01


def test_recipe_tag_is_stable_distinct_and_safe():
    tag = recipe_tag(RECIPE)
    assert tag == recipe_tag(dict(reversed(list(RECIPE.items())))) == recipe_tag({**RECIPE, "momentum": 0})
    assert tag.startswith("sgd-lr0.01-m0-wd0-e3-b256-dsa-standard_")
    others = {recipe_tag({**RECIPE, **change}) for change in (
        {"lr": 0.02}, {"epochs": 4}, {"dsa_strategy": "none"}, {"preprocess": "zca"}, {"rho": 0.01})}
    assert len(others) == 5 and tag not in others
    weird = recipe_tag({**RECIPE, "optimizer": "gsam/ρ 0.1"})
    assert all(c.isalnum() and c.isascii() or c in "._+-" for c in weird)


def test_check_window(store):
    store.check_window(1, 2)
    with pytest.raises(DDError, match="stores 3 epochs but --max-start-epoch 2 \\+ --expert-epochs 2 needs 4; lower "
                       "them or train longer experts \\(dd.buffer --epochs\\)$"):
        store.check_window(2, 2)


def test_open_missing_or_wrong_version(tmp_path, store):
    with pytest.raises(DDError, match="no expert buffer at .*nowhere.*python -m dd.buffer"):
        TrajectoryStore.open(tmp_path / "nowhere")
    manifest = store.root / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format_version": 99}))
    with pytest.raises(DDError, match="format version 99"):
        TrajectoryStore.open(store.root)
    manifest.write_text("{not json")
    with pytest.raises(DDError, match="not valid JSON"):
        TrajectoryStore.open(store.root)


def test_preprocess_round_trip(store):
    assert store.load_preprocess() is None
    store.save_preprocess({"mean": torch.arange(3.0)}, {"kind": "zca", "eps": 0.1})
    tensors, meta = store.load_preprocess()
    assert torch.equal(tensors["mean"], torch.arange(3.0)) and meta == {"kind": "zca", "eps": 0.1}


def original_buffer(num_experts: int, seed: int = 0, shapes=SPEC.shapes) -> list:
    """Experts as the original buffer.py saves them: lists of E+1 lists of shaped tensors."""
    g = torch.Generator().manual_seed(seed)
    return [[[torch.randn(s, generator=g) for s in shapes] for _ in range(EPOCHS + 1)] for _ in range(num_experts)]


def test_legacy_import(store, tmp_path):
    store.write_expert(0, trajectory(0), {})
    buffers = [original_buffer(2, seed=1), original_buffer(3, seed=2)]
    paths = []
    for n, experts in enumerate(buffers):
        paths.append(tmp_path / f"replay_buffer_{n}.pt")
        torch.save(experts, paths[-1])
    assert import_legacy(paths, store) == [1, 2, 3, 4, 5]
    originals = [expert for experts in buffers for expert in experts]
    for index, expert in zip(range(1, 6), originals, strict=True):
        flat = torch.stack([torch.cat([p.reshape(-1) for p in timestamp]) for timestamp in expert])
        assert torch.equal(store.read_expert(index), flat)
    assert store.records()[5]["source"]["position"] == 2
    assert import_legacy(paths, store) == [], "re-importing the same files adds nothing"


class CallsOnLoad:
    """Unpickling this calls a function: what ``weights_only`` must refuse."""

    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_legacy_refuses_pickled_objects(store, tmp_path, capsys):
    path = tmp_path / "replay_buffer_0.pt"
    torch.save([[[torch.zeros(1), CallsOnLoad()]]], path)
    with pytest.raises(DDError, match="not a plain replay buffer"):
        import_legacy([path], store)
    assert "unpickled" not in capsys.readouterr().out
    assert store.completed() == []


def test_legacy_refuses_other_model(store, tmp_path):
    path = tmp_path / "replay_buffer_0.pt"
    torch.save(original_buffer(1, shapes=((2, 1, 3, 3), (2,), (3, 5))), path)
    with pytest.raises(DDError, match=r"replay_buffer_0\.pt expert 0.*fc\.weight.*different model"):
        import_legacy([path], store)
    torch.save([expert[:-1] for expert in original_buffer(1)], path)
    with pytest.raises(DDError, match="3 timestamps.*expects 4"):
        import_legacy([path], store)
    assert store.completed() == []
