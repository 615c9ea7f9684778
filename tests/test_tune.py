"""dd.tune: the space, a planted optimum found, pruning, resume after an interrupt, two processes on one study,
the test split never read by a trial, and bad input as one error line."""

from __future__ import annotations

import math
import multiprocessing
import re
import sys
from pathlib import Path

import pytest
import yaml

from dd.cli import run_cli
from dd.config import make_config
from dd.distill.config import DATMConfig, MTTConfig
from dd.distill.dm import DMConfig
from dd.errors import DDError
from dd.io import read_json
from dd.realdata import PreparedData
from dd.report.plots import plot_tuning
from dd.tune import Score, TuneConfig, search
from dd.tune.__main__ import main
from dd.tune.search import STUDY, require_optuna, summary
from dd.tune.space import parse_param, parse_space

MTT = {"method": "mtt", "dataset": "digits", "ipc": 1, "iterations": 4, "eval_every": 2}
DM = {"method": "dm", "dataset": "digits", "ipc": 1, "iterations": 4, "batch_real": 16, "pix_init": "real",
      "eval_every": 2, "eval_epochs": 2, "device": "cpu"}


def preset(tmp_path: Path, values: dict, name: str = "preset.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


def planted(values: dict, run_dir: Path, report) -> Score:
    """Validation accuracy peaking at lr_img 100 and syn_steps 20; reported at iterations 1 and 2 (half, then all
    of it) as an in-run validation would be."""
    accuracy = 0.9 - 0.1 * (math.log10(values["lr_img"]) - 2) ** 2 - (0.2 if values["syn_steps"] != 20 else 0.0)
    report(1, accuracy / 2)
    report(2, accuracy)
    return Score(accuracy, 0.01, 2)


# -- the space ------------------------------------------------------------------------------------------------
def test_space_specs_become_typed_ranges_and_choices():
    lr = parse_param("lr_img=log:10..1000", MTTConfig, "mtt")
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 10.0, 1000.0, True)
    steps = parse_param("syn_steps=10,20,40", MTTConfig, "mtt")
    assert (steps.kind, steps.choices) == ("choice", (10, 20, 40))
    assert parse_param("max_start_epoch=2..8", MTTConfig, "mtt").kind == "int"
    assert parse_param("soft_labels=true,no", DATMConfig, "datm").choices == (True, False)
    assert parse_param("eval_lr=log:1e-3..0.1", MTTConfig, "mtt").low == pytest.approx(1e-3)
    assert [p.text() for p in parse_space(["lr_img=log:10..1000", "syn_steps=10,20"], MTTConfig, "mtt")] == \
        ["lr_img=log:10..1000", "syn_steps=10,20"]


@pytest.mark.parametrize("spec, cause", [
    ("nokey=1,2", "mtt has no key 'nokey'"),
    ("syn_steps=1.5..3", "must be an int"),
    ("pix_init=1..3", "not a number"),
    ("pix_init=real,cloud", "must be one of"),
    ("lr_img=5", "one point"),
    ("lr_img=5..5", "lo < hi"),
    ("lr_img=log:0..5", "lo > 0"),
    ("iterations=10,20", "not searchable"),
    ("lr_img", "not key=spec"),
])
def test_bad_space_is_one_error_line(spec, cause):
    with pytest.raises(DDError, match=re.escape(cause)):
        parse_param(spec, MTTConfig, "mtt")


def test_a_key_of_another_method_is_refused():
    assert parse_param("syn_steps=10,20", MTTConfig, "mtt").name == "syn_steps"
    with pytest.raises(DDError, match="dm has no key 'syn_steps'"):
        parse_param("syn_steps=10,20", DMConfig, "dm")


@pytest.mark.parametrize("flags, cause", [
    (["--space", "syn_steps=10,20"], "dm has no key 'syn_steps'"),
    (["--space", "lr_img=3"], "one point"),
    (["--space", "lr_img=a..b"], "must be a float"),
    (["--space", "lr_img=1..3", "--space", "lr_img=2,3"], "more than once"),
    (["--space", "eval_lr=0.01,0.1", "--val-runs", "0"], "--val-runs > 0"),
    ([], "at least one --space"),
])
def test_cli_bad_input_exits_2_with_one_error_line(tmp_path, capsys, flags, cause):
    argv = ["--config", str(preset(tmp_path, DM)), "--out", str(tmp_path / "tune"), *flags]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error: ") and "\n" not in err and cause in err


@pytest.mark.e2e
def test_a_database_of_another_search_is_refused(tmp_path):
    mtt = preset(tmp_path, MTT)
    config = TuneConfig(trials=1, out=str(tmp_path / "tune"), seed=0)
    search(mtt, ["lr_img=log:1..10000", "syn_steps=10,20"], config, scorer=planted)
    with pytest.raises(DDError, match="holds another search .*space"):
        search(mtt, ["lr_img=log:1..100", "syn_steps=10,20"], config, scorer=planted)
    # the same preset by another path (as another machine sharing the folder would name it) is the same search
    (tmp_path / "elsewhere").mkdir()
    moved = preset(tmp_path / "elsewhere", MTT)
    search(moved, ["lr_img=log:1..10000", "syn_steps=10,20"], TuneConfig(trials=2, out=config.out, seed=0),
           scorer=planted)
    # a variant whose base changed after the search began is another search, though its own file did not change
    base = preset(tmp_path, MTT, "base.yaml")
    variant = preset(tmp_path, {"base": "base.yaml"}, "variant.yaml")
    search(variant, ["lr_img=log:1..10000"], TuneConfig(trials=1, out=str(tmp_path / "v"), seed=0),
           scorer=lambda v, d, r: planted({**v, "syn_steps": 20}, d, r))
    base.write_text(yaml.safe_dump({**MTT, "iterations": 8}))
    with pytest.raises(DDError, match="holds another search .*preset_values"):
        search(variant, ["lr_img=log:1..10000"], TuneConfig(trials=2, out=str(tmp_path / "v"), seed=0),
               scorer=planted)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "study.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(DDError, match="is not a dd.tune study"):
        search(mtt, ["lr_img=log:1..100", "syn_steps=10,20"], TuneConfig(trials=1, out=str(tmp_path / "junk")),
               scorer=planted)


# -- the search -----------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_search_finds_the_planted_optimum_prunes_and_writes_table_preset_and_plot(tmp_path):
    out = tmp_path / "tune"
    rows = search(preset(tmp_path, MTT), ["lr_img=log:1..10000", "syn_steps=10,20,40"],
                  TuneConfig(trials=24, seed=0, out=str(out)), scorer=planted)
    assert len(rows) == 24
    assert rows[0]["preset"] and rows[0]["params"] == {"lr_img": 1000.0, "syn_steps": 20}  # the preset, compared
    complete = [r for r in rows if r["state"] == "complete"]
    best = max(complete, key=lambda r: r["val_mean"])
    assert best["params"]["syn_steps"] == 20 and abs(math.log10(best["params"]["lr_img"]) - 2) < 0.5
    pruned = [r for r in rows if r["pruned"]]
    assert pruned and all(r["val_mean"] is None and r["iterations"] in (1, 2) for r in pruned)
    table = read_json(out / "trials.json")
    assert table["best"] == best["number"] and table["search"]["space"] == ["lr_img=log:1..10000",
                                                                           "syn_steps=10,20,40"]
    text = (out / "best.yaml").read_text()
    chosen = make_config(MTTConfig, yaml.safe_load(text))
    assert chosen.lr_img == pytest.approx(best["params"]["lr_img"]) and chosen.syn_steps == 20
    assert "validation split only" in text and "did not read the test split" in text and "24 trials" in text
    assert "| yes |" in (out / "trials.md").read_text()
    plot_tuning(out, out / "tuning.png")
    assert (out / "tuning.png").stat().st_size > 0


def test_summary_counts_the_seconds_pruning_saved():
    rows = [{"state": "complete", "pruned": False, "seconds": s} for s in (10.0, 30.0, 20.0)]
    rows += [{"state": "pruned", "pruned": True, "seconds": 5.0}, {"state": "pruned", "pruned": True, "seconds": 25.0}]
    counts = summary(rows)
    assert (counts["complete"], counts["pruned"], counts["seconds"]) == (3, 2, 90.0)
    assert counts["saved_seconds"] == 15.0  # median complete 20 s: 15 s saved by the first, none by the second


@pytest.mark.e2e
def test_an_interrupted_search_resumes_without_repeating_finished_trials(tmp_path):
    mtt, out = preset(tmp_path, MTT), tmp_path / "tune"
    config = TuneConfig(trials=5, seed=0, out=str(out), pruner="none")
    first: list[str] = []

    def interrupted_at_the_third(values, run_dir, report):
        if len(first) == 2:
            raise KeyboardInterrupt
        first.append(run_dir.name)
        return planted(values, run_dir, report)

    with pytest.raises(KeyboardInterrupt, match="rerun the same command"):
        search(mtt, ["lr_img=log:1..10000", "syn_steps=10,20"], config, scorer=interrupted_at_the_third)
    second: list[str] = []
    rows = search(mtt, ["lr_img=log:1..10000", "syn_steps=10,20"], config,
                  scorer=lambda v, d, r: second.append(d.name) or planted(v, d, r))
    assert first == ["0000", "0001"] and second == ["0003", "0004", "0005"]
    assert [r["state"] for r in rows] == ["complete", "complete", "fail", "complete", "complete", "complete"]


def recording(values: dict, run_dir: Path, report) -> Score:
    """A scorer for two processes: each call appends its trial folder to calls.txt beside the tuning folder."""
    with open(run_dir.parent.parent.parent / "calls.txt", "a") as f:
        f.write(run_dir.name + "\n")
    return planted(values, run_dir, report)


def _search_in_process(preset_path: str, out: str, seed: int) -> None:
    search(preset_path, ["lr_img=log:1..10000", "syn_steps=10,20"], TuneConfig(trials=10, seed=seed, out=out),
           scorer=recording)


@pytest.mark.e2e
def test_two_processes_on_one_study_never_run_the_same_trial(tmp_path):
    mtt, out = preset(tmp_path, MTT), tmp_path / "tune"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_search_in_process, args=(str(mtt), str(out), seed)) for seed in (0, 100)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    calls = (tmp_path / "calls.txt").read_text().split()
    rows = read_json(out / "trials.json")["trials"]
    assert len(calls) == len(set(calls)) and 10 <= len(calls) <= 11
    assert sorted(calls) == sorted(Path(r["run_dir"]).name for r in rows)


def test_each_process_prints_the_trial_it_ran_not_the_newest_in_the_study(tmp_path, capsys):
    import optuna

    out = tmp_path / "tune"

    def while_another_process_starts_one(values, run_dir, report):
        if run_dir.name == "0000":  # another process asks for trial 1 while this one runs trial 0
            optuna.load_study(study_name=STUDY, storage=f"sqlite:///{out / 'study.db'}").ask()
        return planted(values, run_dir, report)

    search(preset(tmp_path, MTT), ["lr_img=log:1..10000", "syn_steps=10,20"],
           TuneConfig(trials=2, seed=0, out=str(out), pruner="none"), scorer=while_another_process_starts_one)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("trial ")]
    assert [re.match(r"trial (\d+)", line).group(1) for line in lines] == ["0", "2"]
    assert all(": complete" in line for line in lines)


# -- the real scorer: validation only ---------------------------------------------------------------------------
@pytest.mark.e2e
def test_trials_distil_and_score_on_validation_and_never_read_the_test_split(tmp_path, monkeypatch):
    def no_test(self):
        raise AssertionError("the test split was read")

    split = PreparedData.split
    monkeypatch.setattr(PreparedData, "test", property(no_test))
    monkeypatch.setattr(PreparedData, "split", lambda self, name: no_test(self) if name == "test" else
                        split(self, name))
    dm, out = preset(tmp_path, DM), tmp_path / "tune"
    config = TuneConfig(trials=2, seed=0, out=str(out), val_runs=2, val_epochs=2)
    rows = search(dm, ["lr_img=log:0.1..10", "eval_lr=0.01,0.03"], config)
    for row in rows:
        run_dir = Path(row["run_dir"])
        assert (run_dir / "synset_best").is_dir() and (run_dir / "checkpoint.safetensors").is_file()
        # (DM makes iterations + 1 updates, as its reference's range(Iteration + 1))
        assert row["state"] == "complete" and row["iterations"] == 5 and row["last_reported"] is not None
        records = read_json(run_dir / "val" / "results.json")["runs"]
        assert {r["split"] for r in records} == {"val"} and len(records) == 2
        assert {r["protocol"]["lr"] for r in records} == {row["params"]["eval_lr"]}
        assert row["val_mean"] == pytest.approx(sum(r["accuracy"] for r in records) / 2)
    with pytest.raises(AssertionError, match="test split was read"):  # the guard does catch a test read
        search(dm, ["lr_img=log:0.1..10", "eval_lr=0.01,0.03"], TuneConfig(**{**vars(config), "test_runs": 1}))


# -- optuna stays optional ------------------------------------------------------------------------------------
def test_without_optuna_the_search_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(DDError, match=re.escape("pip install 'dd[tune]'")):
        require_optuna()


def test_only_dd_tune_imports_optuna():
    root = Path(__file__).resolve().parent.parent / "dd"
    importers = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if re.search(r"^\s*(import|from)\s+optuna", p.read_text(), re.M)]
    assert importers and all(p.startswith("tune/") for p in importers)
