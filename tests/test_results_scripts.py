"""The results scripts' own logic: carrying an earlier report's rows, picking a method's best validation set,
parsing list flags, and the Fashion-MNIST rows' budget experts and flags fitting their presets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import _results  # noqa: E402
import results_digits  # noqa: E402
import results_fashion_mnist as fashion  # noqa: E402

from dd.config import load_yaml  # noqa: E402
from dd.report.presets import preset_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


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


def test_a_methods_best_validation_set_counts_its_ema_set():
    runs = [{**record(1, "ftd"), "accuracy": 0.90}, {**record(1, "ftd-ema"), "row": "ftd-ema", "accuracy": 0.95},
            {**record(1, "mtt"), "accuracy": 0.93}]
    assert results_digits.max_val(runs, "ftd", 1) == 0.95 and results_digits.max_val(runs, "mtt", 1) == 0.93
    assert results_digits.family(runs[1]) == "ftd"


def test_list_flags_parse_or_stop_with_one_line_naming_the_flag(capsys):
    assert _results.int_list("1,10", "--ipcs") == [1, 10] and _results.int_list("", "--cross-arch-ipcs") == []
    with pytest.raises(SystemExit) as exit_info:
        _results.int_list("1,ten", "--ipcs")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --ipcs takes comma-separated integers, got '1,ten'\n"


def test_budget_experts_move_a_one_time_lr_decay_to_the_same_fraction_of_their_epochs(monkeypatch):
    monkeypatch.chdir(ROOT)
    ast = fashion.budget_experts("experiments/buffer/fashionmnist_ast.yaml")
    # AST decays after 0-based epoch 26 of 50: 27/50 of training at the first lr -> 2 of 4 epochs -> after epoch 1
    assert ast == {**fashion.EXPERTS, "lr_decay_epoch": 1}
    assert fashion.budget_experts("experiments/buffer/fashionmnist.yaml") == fashion.EXPERTS  # constant lr: as is


@pytest.mark.parametrize("row", [r for r in fashion.ROWS if "buffer_config" in load_yaml(ROOT / fashion.preset(
    *fashion.parse_row(r)))])
def test_every_trajectory_row_fits_its_budget_experts(row, monkeypatch):
    """A row's experts are valid settings of its buffer preset, and its matching windows end within their epochs."""
    monkeypatch.chdir(ROOT)
    method, ipc = fashion.parse_row(row)
    config = preset_config(fashion.preset(method, ipc))
    buffer_preset = load_yaml(fashion.preset(method, ipc))["buffer_config"]
    experts = fashion.budget_config(buffer_preset)
    flags = fashion.ROWS[row]
    starts = [int(flags[flags.index(f) + 1]) for f in ("--max-start-epoch", "--current-max-start-epoch") if f in flags]
    assert max(starts or [config.max_start_epoch]) + config.expert_epochs <= experts.epochs


def test_random_real_beside_a_row_trains_the_same_network():
    """The row's own protocol first; else one equal in every value but the name, and the batch where both batches
    hold every image; a record of other values never (the lr aside: a set's own, random's 0.01)."""
    from dd.protocols import get_protocol

    def rand(name, **values):
        return {"dataset": "fashionmnist", "protocol": get_protocol(name, **values).describe(0.01)}

    def row(name):
        return {"dataset": "fashionmnist", "protocol": get_protocol(name).describe(0.004)}

    dm, mtt, mtt_300 = rand("dm"), rand("mtt"), rand("mtt", epochs=300)
    assert fashion.random_beside(row("dsa"), [mtt, dm], 100) == ([dm], "dm")  # dm's values are dsa's
    assert fashion.random_beside(row("datm"), [mtt, mtt_300], 100) == ([mtt], "mtt")  # one batch of 100 either way
    assert fashion.random_beside(row("datm"), [mtt], 500) == ([], "")  # 128 vs 256 of 500: other batches
    assert fashion.random_beside(row("dm"), [dm, rand("dsa")], 100)[1] == "dm"  # its own protocol first
    assert fashion.random_beside(row("mtt"), [dm, {**mtt, "dataset": "mnist"}], 10) == ([], "")
