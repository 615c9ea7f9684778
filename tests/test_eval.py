"""dd.eval: records, table, resume and the error paths; the protocol's pieces by hand."""

import json

import pytest
import torch

import dd
from dd.errors import DDError
from dd.eval.__main__ import main as eval_main
from dd.eval.report import format_cell, markdown_table
from dd.training import soft_cross_entropy


@pytest.fixture
def synset_dir(tmp_path):
    from dd.data import Preprocessor, load_dataset
    raw = load_dataset("digits")
    pre = Preprocessor.fit("standard", raw.spec, raw.train_images)
    tensors, meta = pre.state()
    idx = torch.cat([torch.nonzero(raw.train_labels == c)[:1, 0] for c in range(10)])
    synset = dd.SynSet(pre(raw.train_images[idx]), raw.train_labels[idx], 0.01,
                       {"dataset": "digits", "ipc": 1, "method": "mtt", "preprocess_meta": meta}, tensors)
    return dd.save_synset(tmp_path / "set", synset)


def test_eval_records_and_resume(tmp_path, synset_dir):
    argv = ["--synset", str(synset_dir), "--runs", "2", "--epochs", "30", "--baseline", "random",
            "--out", str(tmp_path / "ev"), "--device", "cpu"]
    assert eval_main(argv) == 0
    runs = json.loads((tmp_path / "ev" / "results.json").read_text())["runs"]
    assert len(runs) == 4
    assert {r["source"] for r in runs} == {"distilled", "random"}
    for r in runs:
        assert {"source", "method", "model", "ipc", "seed", "accuracy", "protocol", "labels"} <= r.keys()
        assert 0.0 <= r["accuracy"] <= 1.0 and r["ipc"] == 1 and r["protocol"]["epochs"] == 30
    assert "| ConvNet |" in (tmp_path / "ev" / "results.md").read_text()
    assert eval_main(argv) == 0  # everything recorded: nothing retrained, same records
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["runs"] == runs


def test_same_seed_same_accuracy(tmp_path, synset_dir):
    argv = ["--synset", str(synset_dir), "--runs", "1", "--epochs", "10", "--device", "cpu"]
    eval_main([*argv, "--out", str(tmp_path / "a")])
    eval_main([*argv, "--out", str(tmp_path / "b")])
    acc = [json.loads((tmp_path / d / "results.json").read_text())["runs"][0]["accuracy"] for d in "ab"]
    assert acc[0] == acc[1]


def test_eval_errors(tmp_path, synset_dir):
    with pytest.raises(DDError, match="distilled on digits, not mnist"):
        eval_main(["--synset", str(synset_dir), "--dataset", "mnist", "--out", str(tmp_path)])
    with pytest.raises(DDError, match="nothing to evaluate"):
        eval_main(["--out", str(tmp_path)])
    with pytest.raises(DDError, match="unknown baseline 'best'"):
        eval_main(["--synset", str(synset_dir), "--baseline", "best", "--out", str(tmp_path)])
    with pytest.raises(DDError, match="needs --ipc"):
        eval_main(["--baseline", "random", "--out", str(tmp_path)])


def test_table_by_hand():
    assert format_cell([0.9, 0.8]) == "85.00 ± 5.00 (2)"
    runs = [{"source": "distilled", "method": "mtt", "ipc": 1, "model": "ConvNet", "accuracy": 0.5},
            {"source": "full", "method": "full", "ipc": None, "model": "ConvNet", "accuracy": 1.0}]
    table = markdown_table(runs)
    assert "| model | mtt ipc1 | full |" in table
    assert "| ConvNet | 50.00 ± 0.00 (1) | 100.00 ± 0.00 (1) |" in table


def test_soft_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0]])
    target = torch.tensor([[0.0, 100.0]])  # softmax ~ [0, 1]
    assert torch.allclose(soft_cross_entropy(logits, target), torch.log(torch.tensor(2.0)))
    hard = torch.tensor([[2.0, -1.0, 0.5]])
    assert torch.allclose(soft_cross_entropy(hard, torch.tensor([[50.0, 0.0, 0.0]])),
                          torch.nn.functional.cross_entropy(hard, torch.tensor([0])))
