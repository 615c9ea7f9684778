"""dd.eval keeps records of different sets, data and protocols apart: the cache never reuses, and a
table cell never averages, records that differ in anything but the seed; sets are checked before training."""

import json
import os

import pytest
import torch

import dd
from dd.cli import run_cli
from dd.eval import EvalConfig, evaluate
from dd.eval.__main__ import main as eval_main
from dd.eval.report import by_context, context_key, markdown_table, source_key
from tests.helpers import as_flags, make_set, read_runs

SHORT = {"runs": 2, "epochs": 2, "device": "cpu"}
FLAGS = as_flags(SHORT)


def cells(md: str) -> list[str]:
    """Every table cell of a results.md that holds accuracies."""
    return [c.strip() for line in md.splitlines() if line.startswith("|") for c in line.split("|") if "±" in c]


def seeds_per_cell(runs: list[dict]) -> set[int]:
    counts: dict[tuple, int] = {}
    for run in runs:
        key = (context_key(run), source_key(run), run["model"])
        counts[key] = counts.get(key, 0) + 1
    return set(counts.values())


@pytest.mark.e2e
def test_two_sets_in_one_folder_never_share_a_cell(tmp_path):
    run = tmp_path / "run"
    make_set(run / "synset", soft=False, pick=0, iteration=500)
    make_set(run / "synset_best", soft=False, pick=1, iteration=300)
    evaluate(EvalConfig(synset=str(run / "synset"), **SHORT))
    evaluate(EvalConfig(synset=str(run / "synset_best"), **SHORT))
    runs = read_runs(run / "eval")
    assert len(runs) == 4 and len({r["set"]["sha256"] for r in runs}) == 2
    md = (run / "eval" / "results.md").read_text()
    assert all(c.endswith("(2)") for c in cells(md)) and len(cells(md)) == 2
    assert "mtt ipc1 [it500" in md and "mtt ipc1 [it300" in md  # told apart by iteration and checksum
    assert seeds_per_cell(runs) == {2}


@pytest.mark.e2e
def test_a_changed_set_at_the_same_path_is_evaluated_again(tmp_path, capsys):
    folder = tmp_path / "run" / "synset"
    make_set(folder, soft=False, pick=0, iteration=100)
    evaluate(EvalConfig(synset=str(folder), **SHORT))
    make_set(folder, soft=False, pick=2, iteration=200)  # resumed to more iterations: a new set, same path
    capsys.readouterr()
    runs = evaluate(EvalConfig(synset=str(folder), **SHORT)).runs
    assert "already in" not in capsys.readouterr().out  # nothing of the old set is reused
    assert [r["set"]["iteration"] for r in runs] == [200, 200]  # the runs asked for: the new set's
    runs = read_runs(tmp_path / "run" / "eval")
    assert [r["set"]["iteration"] for r in runs] == [100, 100, 200, 200]
    assert seeds_per_cell(runs) == {2}
    evaluate(EvalConfig(synset=str(folder), **SHORT))  # the same set again: all reused
    assert "4 of 2 runs" not in capsys.readouterr().out and len(read_runs(tmp_path / "run" / "eval")) == 4


@pytest.mark.e2e
def test_another_protocol_in_the_same_folder_is_a_section_of_its_own(tmp_path):
    folder = make_set(tmp_path / "set", soft=False)
    base = {"synset": str(folder), **SHORT, "out": str(tmp_path / "ev")}
    evaluate(EvalConfig(**base))
    evaluate(EvalConfig(**base, momentum=0.0, weight_decay=0.0, batch_size=8))
    runs = read_runs(tmp_path / "ev")
    assert len(runs) == 4 and len(by_context(runs)) == 2
    md = (tmp_path / "ev" / "results.md").read_text()
    assert md.count("# digits (test split") == 2 and "momentum 0.0" in md and "batch_size 8" in md
    assert all(c.endswith("(2)") for c in cells(md))  # no seed counted twice, no protocols merged


@pytest.mark.e2e
def test_several_sets_in_one_call_one_row_each_baselines_once(tmp_path):
    a = make_set(tmp_path / "a" / "synset", soft=False, pick=0)
    b = make_set(tmp_path / "b" / "synset", soft=True, pick=1)
    out = tmp_path / "ev"
    runs = evaluate(EvalConfig(synset=f"{a},{b}", baseline="random", **SHORT, out=str(out))).runs
    assert sorted((r["source"], r.get("method")) for r in runs) == sorted(
        [("distilled", "mtt")] * 2 + [("distilled", "datm")] * 2 + [("random", "random")] * 2)
    md = (out / "results.md").read_text()
    table = md.split("### improvement")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "±" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["mtt ipc1", "datm ipc1", "random ipc1"]
    assert f"`{a}`" in md and f"`{b}`" in md  # the legend names each set's path


@pytest.mark.e2e
def test_records_name_set_data_split_and_protocol(tmp_path):
    folder = make_set(tmp_path / "set", soft=False, iteration=7)
    run = evaluate(EvalConfig(synset=str(folder), **SHORT, out=str(tmp_path / "ev"))).runs[0]
    assert run["set"] == {"sha256": dd.load_synset(folder).checksum, "path": str(folder), "method": "mtt",
                          "iteration": 7, "verified": True}
    assert run["split"] == "test" and run["dataset"] == "digits"
    assert run["data"]["name"] == "digits" and len(run["data"]["sha256"]) == 64 and run["data"]["test"] == 360
    protocol = run["protocol"]
    for key in ("epochs", "lr", "momentum", "weight_decay", "batch_size", "augment"):
        assert key in protocol
    assert run["labels"] == "hard" and run["model"] == "ConvNet" and run["seed"] in (0, 1)


def test_a_table_cell_never_mixes_sets_even_from_hand_written_records():
    def run(sha, seed, acc, lr=0.01):
        return {"source": "distilled", "method": "mtt", "ipc": 1, "model": "ConvNet", "seed": seed, "accuracy": acc,
                "set": {"sha256": sha, "path": "x", "iteration": 1}, "protocol": {"epochs": 2, "lr": lr}}

    table = markdown_table([run("aa" * 32, 0, 0.5), run("bb" * 32, 0, 0.7), run("aa" * 32, 1, 0.6, lr=0.02)])
    assert len(cells(table)) == 3 and all(c.endswith("(1)") for c in cells(table))
    assert "Test accuracy in %" in table
    assert "Validation accuracy in %" in markdown_table([{**run("aa" * 32, 0, 0.5), "split": "val"}])


def error_line(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(eval_main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def rewrite_meta(folder, **changes):
    meta = json.loads((folder / "synset.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (folder / "synset.json").write_text(json.dumps(meta))


@pytest.mark.e2e
def test_edited_or_unchecksummed_sets_are_refused(tmp_path, capsys):
    folder = make_set(tmp_path / "set", soft=False)
    argv = ["--synset", str(folder), "--baseline", "random", *FLAGS, "--out", str(tmp_path / "ev")]
    rewrite_meta(folder, ipc=10)
    assert "synset.json says ipc 10 but the checksummed tensor file says 1" in error_line(argv, capsys)
    rewrite_meta(folder, ipc=1, sha256=None)
    assert "has no checksum" in error_line(argv, capsys) and "--no-verify" in error_line(argv, capsys)
    data = bytearray((folder / "synset.safetensors").read_bytes())
    data[-3] ^= 0x04
    (folder / "synset.safetensors").write_bytes(bytes(data))
    runs = evaluate(EvalConfig(synset=str(folder), baseline="random", **SHORT, out=str(tmp_path / "ev"),
                               verify=False)).runs  # a hand-made set: accepted, and its records say so
    assert {r.get("set", {}).get("verified") for r in runs if r["source"] == "distilled"} == {False}
    assert "NOT verified" in (tmp_path / "ev" / "results.md").read_text()
    assert not (tmp_path / "ev2").exists()


def hand_made(folder, images=None, labels=None, lr=0.01, ipc=1, **meta):
    base = dd.load_synset(make_set(folder.parent / f"{folder.name}-base", soft=False))
    synset = dd.SynSet(base.images if images is None else images, base.labels if labels is None else labels, lr,
                       {**base.meta, "ipc": ipc, **meta}, base.preprocess)
    return dd.save_synset(folder, synset)


BAD_SETS = {
    "labels out of range": (dict(labels=torch.arange(5, 15)), "labels 5..14 but digits has classes 0..9"),
    "soft labels of the wrong width": (dict(labels=torch.zeros(10, 7)), "soft labels over 7 classes"),
    "float64 images": (dict(images=torch.zeros(10, 1, 8, 8, dtype=torch.float64)), "float64 images"),
    "int64 images": (dict(images=torch.zeros(10, 1, 8, 8, dtype=torch.int64)), "int64 images"),
    "NaN images": (dict(images=torch.full((10, 1, 8, 8), float("nan"))), "NaN or infinite pixels"),
    "NaN learned lr": (dict(lr=float("nan")), "learned lr nan"),
    "negative learned lr": (dict(lr=-0.1), "learned lr -0.1"),
    "ipc that does not match the images": (dict(ipc=2), "holds 10 images for 10 classes but its metadata says ipc 2"),
    "an uneven class count": (dict(labels=torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 7, 8])), "does not hold 1 images"),
    "wrong image size": (dict(images=torch.zeros(10, 1, 6, 6)), "holds (1, 6, 6) images but digits gives (1, 8, 8)"),
}


@pytest.mark.e2e
@pytest.mark.parametrize("case", BAD_SETS)
def test_bad_sets_are_refused_before_training(tmp_path, capsys, case):
    changes, message = BAD_SETS[case]
    folder = hand_made(tmp_path / "set", **changes)
    assert message in error_line(["--synset", str(folder), *FLAGS, "--out", str(tmp_path / "ev")], capsys)
    assert not (tmp_path / "ev" / "results.json").exists()


BAD_FLAGS = {
    "negative ipc": (["--baseline", "random", "--ipc", "-3"], "--ipc must be positive, got -3"),
    "zero ipc": (["--baseline", "random", "--ipc", "0"], "--ipc must be positive, got 0"),
    "negative lr": (["--lr", "-1"], "--lr must be a positive finite learning rate"),
    "nan lr": (["--lr", "nan"], "--lr must be a positive finite learning rate"),
    "zero baseline lr": (["--baseline", "random", "--baseline-lr", "0"], "--baseline-lr must be a positive"),
    "momentum 1": (["--momentum", "1"], "--momentum must be in [0, 1)"),
    "negative weight decay": (["--weight-decay", "-1"], "--weight-decay must be 0 or"),
    "negative seed": (["--seed", "-1"], "--seed must be 0 or more"),
    "unknown dsa op": (["--dsa-strategy", "blur"], "unknown DSA op 'blur'"),
}


@pytest.mark.e2e
@pytest.mark.parametrize("case", BAD_FLAGS)
def test_bad_eval_flags_are_refused(tmp_path, capsys, case):
    extra, message = BAD_FLAGS[case]
    folder = make_set(tmp_path / "set", soft=False)
    assert message in error_line(["--synset", str(folder), *FLAGS, *extra, "--out", str(tmp_path / "ev")], capsys)


@pytest.mark.e2e
@pytest.mark.parametrize("split", ["val", "test"])
def test_accuracy_is_measured_on_the_split_the_record_names(tmp_path, split):
    """dd.eval's accuracy equals a direct train-and-test on that split (and differs from the other splits')."""
    from dd.realdata import prepare_data
    from dd.training import Protocol, train_and_test

    folder = make_set(tmp_path / "set", soft=False)
    (run,) = evaluate(EvalConfig(synset=str(folder), runs=1, epochs=3, device="cpu", split=split, val_fraction=0.2,
                                 out=str(tmp_path / "ev"))).runs
    assert run["split"] == split and run["data"]["val"] > 0 and run["data"]["val_fraction"] == 0.2
    synset = dd.load_synset(folder)
    data = prepare_data("digits", torch.device("cpu"), val_fraction=0.2, val_seed=0)
    protocol = Protocol(epochs=3)
    found = {name: train_and_test("ConvNet", 1, 10, (8, 8), (synset.images, synset.labels), tested, 0.01, protocol, 0)
             for name, tested in (("val", data.val), ("test", data.test), ("train", data.train))}
    assert run["accuracy"] == found[split]
    assert len(set(found.values())) == 3, "the three splits must score differently for this test to mean anything"


@pytest.mark.e2e
def test_each_set_is_evaluated_under_its_methods_protocol_and_baselines_under_each(tmp_path):
    mtt = make_set(tmp_path / "a", soft=False)
    datm = make_set(tmp_path / "b", soft=True, protocol="datm")
    out = tmp_path / "ev"
    one = {**SHORT, "runs": 1}
    runs = evaluate(EvalConfig(synset=f"{mtt},{datm}", baseline="random", **one, out=str(out))).runs
    found = sorted((r["source"], r.get("method"), r["protocol"]["name"], r["protocol"]["batch_size"]) for r in runs)
    assert found == [("distilled", "datm", "datm", 128), ("distilled", "mtt", "mtt", 256),
                     ("random", "random", "datm", 128), ("random", "random", "mtt", 256)]
    assert all(r["protocol"]["epochs"] == 2 and r["protocol"]["epochs_run"] == 3 for r in runs)
    assert len(by_context(runs)) == 2  # one section per protocol, each with its random baseline
    evaluate(EvalConfig(synset=str(datm), protocol="mtt", **one, out=str(out)))
    assert {r["protocol"]["name"] for r in read_runs(out) if r.get("method") == "datm"} == {"datm", "mtt"}


@pytest.mark.e2e
def test_a_set_naming_an_unknown_protocol_is_refused(tmp_path, capsys):
    folder = make_set(tmp_path / "set", soft=False, protocol="mystery")
    line = error_line(["--synset", str(folder), *FLAGS, "--out", str(tmp_path / "ev")], capsys)
    assert "evaluation protocol 'mystery'" in line and "--protocol" in line


@pytest.mark.e2e
def test_a_second_writer_of_an_eval_folder_is_refused(tmp_path, capsys):
    """While another process holds the eval output's lock (here: this one, through dd.lock), dd.eval refuses
    to write there, naming the holder; the finished records stay as they were."""
    from dd.lock import hold

    folder = make_set(tmp_path / "set", soft=False)
    argv = ["--synset", str(folder), *FLAGS, "--out", str(tmp_path / "ev")]
    evaluate(EvalConfig(synset=str(folder), **SHORT, out=str(tmp_path / "ev")))
    before = (tmp_path / "ev" / "results.json").read_text()
    with hold(tmp_path / "ev", "test"):
        line = error_line([*argv, "--runs", "3"], capsys)
    assert "in use by another dd process" in line and f"pid {os.getpid()}" in line
    assert (tmp_path / "ev" / "results.json").read_text() == before
    evaluate(EvalConfig(synset=str(folder), **{**SHORT, "runs": 3}, out=str(tmp_path / "ev")))  # released: it runs
