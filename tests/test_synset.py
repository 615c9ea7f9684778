"""The synthetic-set artefact round-trips and is usable as a plain torch Dataset."""

import json

import pytest
import torch

import dd
from dd.errors import DDError


def test_round_trip_hard_and_soft(tmp_path):
    images = torch.randn(20, 1, 8, 8)
    for labels in (torch.arange(10).repeat_interleave(2), torch.randn(20, 10)):
        s = dd.SynSet(images, labels, lr=0.0123, meta={"dataset": "digits", "ipc": 2},
                      preprocess={"mean": torch.tensor([0.5])})
        dd.save_synset(tmp_path / "set", s)
        back = dd.load_synset(tmp_path / "set")
        assert torch.equal(back.images, images) and torch.equal(back.labels, labels)
        assert back.lr == pytest.approx(0.0123)
        assert back.soft == (labels.dim() == 2)
        assert back.meta["ipc"] == 2 and back.meta["labels"] == ("soft" if back.soft else "hard")
        assert torch.equal(back.preprocess["mean"], torch.tensor([0.5]))
        x, y = back.dataset()[3]
        assert torch.equal(x, images[3]) and torch.equal(y, labels[3])
        assert torch.equal(back.hard_labels(), labels.argmax(1) if back.soft else labels)


def test_truncated_and_missing_sets_are_reported(tmp_path):
    dd.save_synset(tmp_path / "set", dd.SynSet(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), 0.01))
    tensors = tmp_path / "set" / "synset.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:50])
    with pytest.raises(DDError, match="corrupted or truncated"):
        dd.load_synset(tmp_path / "set")
    with pytest.raises(DDError, match="does not exist"):
        dd.load_synset(tmp_path / "nothing")
    meta = tmp_path / "set" / "synset.json"
    meta.write_text(json.dumps({"format_version": 99}))
    with pytest.raises(DDError, match="format 99"):
        dd.load_synset(tmp_path / "set")
