"""The results scripts' own logic: carrying an earlier report's rows, re-estimating BatchNorm statistics, and the
length of an expert's matched segment."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dd.buffer.store import TrajectoryStore
from dd.functional import ParamSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import _results  # noqa: E402
import bn_diagnosis_digits  # noqa: E402
import expert_segments  # noqa: E402
import results_digits  # noqa: E402
import tune_digits  # noqa: E402


def record(ipc, method, source="distilled", split="val", epochs=200, **extra) -> dict:
    return {"ipc_row": ipc, "method": method, "source": source, "split": split, "row": method,
            "protocol": {"name": "mtt", "epochs": epochs}, "accuracy": 0.5, **extra}


def write_report(tmp_path: Path, runs: list[dict], speed: dict) -> Path:
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps({"machine": "m", "command": "old command", "speed": speed, "runs": runs}))
    return path


def test_carry_keeps_what_was_not_rerun_and_only_that(tmp_path):
    earlier = [record(1, "mtt"), record(1, "ftd"), record(1, "ftd-ema"), record(1, "dm"),
               record(1, "random", source="random", split="test"),
               record(1, "mtt", split="test", cross_arch=True),
               record(10, "mtt"), record(10, "random", source="random", split="test"),
               record(None, "full", source="full", split="test")]
    path = write_report(tmp_path, earlier, {"mtt@1": 1.0, "dm@1": 2.0, "mtt@10": 3.0})
    new = [{**record(1, "mtt"), "command": "new"}, {**record(1, "ftd"), "command": "new"},
           {**record(1, "random", source="random", split="test"), "command": "new"}]
    runs, speed = results_digits.carry(path, list(new), {("mtt", 1): 0.5, ("ftd", 1): 0.7}, [1], keep_full=False,
                                       epochs=200)
    carried = runs[len(new):]
    # IPC 1: only dm is carried (mtt and ftd, with its EMA set, were rerun; random and cross-arch rows are rerun)
    assert sorted((r["ipc_row"] or 0, r["method"]) for r in carried) == [(1, "dm"), (10, "mtt"), (10, "random")]
    assert all(r["command"] == "old command" for r in carried)
    assert speed == {("mtt", 1): 0.5, ("ftd", 1): 0.7, ("dm", 1): 2.0, ("mtt", 10): 3.0}
    runs, _ = results_digits.carry(path, list(new), {}, [1], keep_full=True, epochs=200)
    assert any(r["method"] == "full" for r in runs)


def test_carry_refuses_records_of_another_epoch_count(tmp_path, capsys):
    path = write_report(tmp_path, [record(10, "mtt", epochs=300)], {})
    with pytest.raises(SystemExit) as exit_info:
        results_digits.carry(path, [], {}, [1], keep_full=False, epochs=200)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pass --epochs 300" in err and len(err.splitlines()) == 1


def test_tuning_carry_keeps_the_sections_not_rerun_with_their_commands(tmp_path, capsys):
    def tuned(method, ipc, epochs=200, **extra):
        return {**record(ipc, method, epochs=epochs), "method_row": method, "candidate": "preset", **extra}

    path = write_report(tmp_path, [tuned("mtt", 1), tuned("datm", 1, command="datm command"), tuned("ftd", 1),
                                   tuned("mtt", 10)], {})
    kept = tune_digits.carry(path, {("ftd", 1), ("mtt", 10)}, epochs=200)
    assert [(r["method_row"], r["ipc_row"], r["command"]) for r in kept] == [
        ("mtt", 1, "old command"), ("datm", 1, "datm command")]
    path = write_report(tmp_path, [tuned("mtt", 1, epochs=300)], {})
    with pytest.raises(SystemExit) as exit_info:
        tune_digits.carry(path, set(), epochs=200)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "pass --epochs 300" in err and len(err.splitlines()) == 1


def test_reestimated_batchnorm_statistics_are_the_images_exact_moments():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    images = torch.randn(37, 1, 6, 6) * 2 + 1
    model(images[:4])  # materialise the lazy layer; training-mode running stats of 4 images, momentum 0.1
    weights = [p.detach().clone() for p in model.parameters()]
    bn_diagnosis_digits.reestimate_batchnorm(model, images)
    conv_out = model[0](images)
    assert torch.allclose(model[1].running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(model[1].running_var, conv_out.var(dim=(0, 2, 3), unbiased=True), atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    assert not model.training


def test_a_methods_best_validation_set_counts_its_ema_set():
    runs = [{**record(1, "ftd"), "accuracy": 0.90}, {**record(1, "ftd-ema"), "row": "ftd-ema", "accuracy": 0.95},
            {**record(1, "mtt"), "accuracy": 0.93}]
    assert results_digits.max_val(runs, "ftd", 1) == 0.95 and results_digits.max_val(runs, "mtt", 1) == 0.93
    assert results_digits.family(runs[1]) == "ftd"


def test_segment_lengths_are_relative_distances_averaged_over_experts(tmp_path):
    spec = ParamSpec(("w",), ((2,),))
    store = TrajectoryStore.create(tmp_path / "s", {
        "dataset": {"name": "toy"}, "model": {"name": "Toy"}, "param_spec": spec.to_json(),
        "recipe": {"epochs": 3}, "num_epochs": 3})
    # expert 0: |w(0)| = 5, moves by (3, 0), (0, 4), (0, 0); expert 1: |w(0)| = 1, stays put
    store.write_expert(0, torch.tensor([[3.0, 4.0], [6.0, 4.0], [6.0, 8.0], [6.0, 8.0]]), {})
    store.write_expert(1, torch.tensor([[1.0, 0.0]] * 4), {})
    lengths = expert_segments.segment_lengths(store, expert_epochs=2, starts=[0, 1])
    assert lengths == pytest.approx([(5.0 / 5) / 2, (4.0 / 5) / 2])  # ||(3,4)|| / 5 and ||(0,4)|| / 5, halved
    with pytest.raises(SystemExit):
        expert_segments.segment_lengths(store, expert_epochs=2, starts=[2])


def test_list_flags_parse_or_stop_with_one_line_naming_the_flag(capsys):
    assert _results.int_list("1,10", "--ipcs") == [1, 10] and _results.int_list("", "--cross-arch-ipcs") == []
    with pytest.raises(SystemExit) as exit_info:
        _results.int_list("1,ten", "--ipcs")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --ipcs takes comma-separated integers, got '1,ten'\n"
