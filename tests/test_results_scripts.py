"""The results scripts' own logic: carrying an earlier report's rows, picking a method's best validation set, and
parsing list flags."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import _results  # noqa: E402
import results_digits  # noqa: E402


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
