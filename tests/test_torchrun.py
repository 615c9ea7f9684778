"""torchrun with 2 CPU processes (gloo) against one process with the same seeds: the same experts
(bitwise), the same evaluation records, and one distillation whose inner minibatches the 2 processes
share giving the same set."""

import json

import pytest
import torch
from safetensors.torch import load_file

from dd.buffer.store import TrajectoryStore
from dd.distill.synset import load_synset
from dd.eval.results import run_key
from tests.helpers import MLP_BUFFER, TORCHRUN, make_set, python_m, run_ok, tiny_problem

pytestmark = pytest.mark.e2e  # every test here runs a stage end to end

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


def test_torchrun_unroll_equals_single_process_in_float64(tmp_path):
    """2 gloo processes sharing every inner minibatch give the images, soft labels and lr of one process after
    3 outer steps, for MTT's, DATM's and AST's students and the full, checkpointed and chunked unrolls."""
    run_ok(python_m("tests.rank_unroll", tmp_path / "one.safetensors"))
    run_ok([*TORCHRUN, "-m", "tests.rank_unroll", str(tmp_path / "two.safetensors")])
    one, two = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    assert len(one) == 21 and one.keys() == two.keys()
    start = tiny_problem()[2]
    for key in one:
        if key.endswith("images"):
            assert (one[key] - start).abs().max() > 1e-5, "the images moved"
        assert torch.allclose(two[key], one[key], rtol=1e-11, atol=1e-14), key


DISTILL = ["dd.distill", "--model", "MLP", "--ipc", "1", "--syn-steps", "4", "--expert-epochs", "1",
           "--max-start-epoch", "1", "--batch-syn", "5", "--lr-img", "100", "--eval-every", "0", "--eval-models",
           "MLP", "--eval-runs", "1", "--eval-epochs", "2", "--device", "cpu"]  # rank 1 has no evaluation seed


def test_torchrun_distill_equals_single_process_and_resumes_with_another_count(tmp_path, mlp_buffer):
    flags = [*DISTILL, "--buffer-dir", str(mlp_buffer), "--unroll", "checkpointed"]
    run_ok(python_m(*flags, "--iterations", "3", "--run-dir", tmp_path / "one"))
    out = run_ok([*TORCHRUN, "-m", *flags, "--iterations", "2", "--run-dir", str(tmp_path / "two")]).stdout
    assert out.count("synthetic set: ") == 1, "rank 0 alone prints"
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "loss" in r] == [2], "rank 0 alone logs"
    assert [r["iteration"] for r in records if "val/MLP" in r] == [2], "the evaluation's one seed ran on rank 0"
    run_ok(python_m(*flags, "--iterations", "3", "--run-dir", tmp_path / "two", "--resume"))
    one, two = (load_synset(tmp_path / d / "synset") for d in ("one", "two"))
    assert one.meta["iteration"] == two.meta["iteration"] == 3
    assert torch.allclose(two.images, one.images, rtol=1e-4, atol=1e-5)
    assert abs(two.lr - one.lr) <= 1e-6 * abs(one.lr)
