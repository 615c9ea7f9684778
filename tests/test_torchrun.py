"""torchrun with 2 CPU processes (gloo) against one process with the same seeds: the same experts
(bitwise) and the same evaluation records."""

import json

import torch

from dd.buffer.store import TrajectoryStore
from dd.eval.results import run_key
from tests.procs import MLP_BUFFER, TORCHRUN, python_m, run_ok
from tests.test_eval import make_set

EVAL = ["dd.eval", "--baseline", "random", "--models", "MLP,LeNet", "--runs", "2", "--epochs", "2", "--device", "cpu"]


def store_at(root) -> TrajectoryStore:
    (manifest,) = root.glob("digits/MLP/*/manifest.json")
    return TrajectoryStore.open(manifest.parent)


def test_torchrun_buffer_equals_single_process(tmp_path, mlp_buffer):
    out = run_ok([*TORCHRUN, "-m", *MLP_BUFFER, "--buffer-dir", str(tmp_path / "two")]).stdout
    assert "(0/3 experts already stored, 2 ranks share the rest)" in out
    assert out.count("experts: 3, final test accuracy") == 1, "rank 0 alone prints the summary"
    one, two = store_at(mlp_buffer), store_at(tmp_path / "two")
    assert two.completed() == [0, 1, 2] and two.verify() == []
    assert not list(two.root.glob(".*.tmp")), "no temporary file left behind"
    for i in range(3):
        assert torch.equal(two.read_expert(i), one.read_expert(i))
        assert two.record(i)["seed"] == one.record(i)["seed"]
    # The 2-rank store resumed by 1 process: only the missing expert is trained, and it is the same.
    two.record_path(1).unlink()
    two.tensor_path(1).unlink()
    assert "(2/3 experts already stored)" in run_ok(python_m(*MLP_BUFFER, "--buffer-dir", tmp_path / "two")).stdout
    assert torch.equal(two.read_expert(1), one.read_expert(1))


def test_torchrun_eval_equals_single_process(tmp_path):
    synset = make_set(tmp_path / "set", soft=False)
    run_ok(python_m(*EVAL, "--synset", synset, "--out", tmp_path / "one"))
    out = run_ok([*TORCHRUN, "-m", *EVAL, "--synset", str(synset), "--out", str(tmp_path / "two")]).stdout
    assert out.count("results: ") == 1, "rank 0 alone writes and prints the report"
    one, two = (json.loads((tmp_path / d / "results.json").read_text())["runs"] for d in ("one", "two"))
    assert len(one) == 8 and len({run_key(r) for r in two}) == 8
    assert two == one, "same records, same accuracies, same order"
    assert not list((tmp_path / "two").glob("results.rank*.json")) and (tmp_path / "two" / "results.md").is_file()
