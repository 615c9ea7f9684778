"""dd.buffer --train-per-class: experts trained on a seeded, stratified part of the training split, with the
part in the store's identity (folder name and manifest), resumable, and bad values as one error."""

from __future__ import annotations

import json

import pytest
import torch

import dd.buffer.train as buffer_train
from dd.buffer import BufferConfig, train_store
from dd.buffer.experts import ExpertRecipe
from dd.buffer.store import TrajectoryStore, recipe_tag
from dd.errors import DDError
from dd.realdata import prepare_data, random_subset

TINY = {"num_experts": 2, "epochs": 2, "batch_size": 16, "test_every": 0, "device": "cpu"}


def store_of(root):
    (manifest,) = root.glob("digits/ConvNet/*/manifest.json")
    return TrajectoryStore.open(manifest.parent)


def test_the_subset_is_in_the_recipe_and_its_tag():
    whole, part = ExpertRecipe(), ExpertRecipe(train_per_class=5)
    assert "train_per_class" not in whole.to_dict() and "train_subset_seed" not in whole.to_dict()
    assert part.to_dict()["train_per_class"] == 5 and part.to_dict()["train_subset_seed"] == 0
    tags = {recipe_tag(r.to_dict()) for r in (whole, part, ExpertRecipe(train_per_class=5, train_subset_seed=1),
                                              ExpertRecipe(train_per_class=6))}
    assert len(tags) == 4
    assert "-5pc0_" in recipe_tag(part.to_dict()) and "pc" not in recipe_tag(whole.to_dict())


def test_the_draw_is_stratified_deterministic_and_from_the_training_split():
    data = prepare_data("digits", torch.device("cpu"))
    images, labels = random_subset(data, 4, seed=0, flag="--train-per-class")
    assert torch.bincount(labels).tolist() == [4] * 10
    again, _ = random_subset(data, 4, seed=0, flag="--train-per-class")
    other, _ = random_subset(data, 4, seed=1, flag="--train-per-class")
    assert torch.equal(images, again) and not torch.equal(images, other)
    rows = (images.flatten(1)[:, None] == data.train_images.flatten(1)[None]).all(-1)
    assert rows.any(1).all(), "every drawn image is a training image"
    matched = rows.float().argmax(1)
    assert torch.equal(data.train_labels[matched], labels)


@pytest.mark.e2e
def test_experts_train_on_the_subset_and_resume_equal(tmp_path, monkeypatch):
    seen = []
    real = buffer_train.train_expert

    def spy(model, channels, num_classes, size, train, *rest):
        seen.append(train[1].clone())
        return real(model, channels, num_classes, size, train, *rest)

    monkeypatch.setattr(buffer_train, "train_expert", spy)
    whole, once, resumed = tmp_path / "whole", tmp_path / "once", tmp_path / "resumed"
    one = {**TINY, "num_experts": 1}
    train_store(BufferConfig(**TINY, buffer_dir=str(once), train_per_class=3))
    assert [torch.bincount(labels).tolist() for labels in seen] == [[3] * 10] * 2
    train_store(BufferConfig(**one, buffer_dir=str(resumed), train_per_class=3))
    train_store(BufferConfig(**TINY, buffer_dir=str(resumed), train_per_class=3))
    train_store(BufferConfig(**one, buffer_dir=str(whole)))
    a, b, full = store_of(once), store_of(resumed), store_of(whole)
    assert a.completed() == b.completed() == [0, 1]
    for i in (0, 1):
        assert torch.equal(a.read_expert(i), b.read_expert(i))
    assert not torch.equal(a.read_expert(0)[-1], full.read_expert(0)[-1])
    assert a.root.name != full.root.name and a.root.name.split("_")[0].endswith("-3pc0")
    manifest = json.loads((a.root / "manifest.json").read_text())
    assert manifest["recipe"]["train_per_class"] == 3 and manifest["recipe"]["train_subset_seed"] == 0
    assert "train_per_class" not in json.loads((full.root / "manifest.json").read_text())["recipe"]


@pytest.mark.e2e
@pytest.mark.parametrize("values, words", [
    ({"train_per_class": 0}, "--train-per-class must be positive, got 0"),
    ({"train_per_class": 100000}, "--train-per-class 100000 is larger than class 0, which has"),
    ({"train_per_class": 2, "train_subset_seed": -1}, "--train-subset-seed must be >= 0, got -1"),
    ({"train_per_class": 2, "teacher": "barlow_twins"}, "--train-per-class applies to experts, not to a"),
])
def test_bad_subset_flags_are_one_error(tmp_path, values, words):
    with pytest.raises(DDError, match=words) as e:
        train_store(BufferConfig(**TINY, buffer_dir=str(tmp_path), **values))
    assert "\n" not in str(e.value)
