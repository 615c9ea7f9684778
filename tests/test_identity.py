"""Every artefact knows the data (and settings) it came from, and every consumer refuses a mismatch in one line;
malformed artefacts, out-of-range seeds and sizes are one line too (dd/identity.py, dd/schema.py)."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch

import dd
from dd import cli
from dd.buffer.__main__ import main as buffer_main
from dd.buffer.store import TrajectoryStore
from dd.cli import Interrupted, run_cli, uninterruptible
from dd.distill.__main__ import main as distill_main
from dd.distill.unroll import make_plan
from dd.errors import DDError
from dd.eval import EvalConfig, evaluate
from dd.eval.__main__ import main as eval_main
from dd.eval.inputs import check_set, check_set_data
from dd.eval.report import context_title, improvement_table, improvements
from dd.identity import OTHER, UNVERIFIED, check_data
from dd.realdata import PreparedData, prepare_data
from dd.report.__main__ import main as report_main
from dd.report.artefacts import Run
from dd.report.build import label_apart
from tests.helpers import TINY_BUFFER_FLAGS, Inputs, cases_on_experts_as_e2e, make_set

REPO = Path(__file__).resolve().parents[1]
EVAL = ["--runs", "1", "--epochs", "1", "--device", "cpu"]


def digits_fingerprint() -> dict:
    return prepare_data("digits", torch.device("cpu")).fingerprint()


def edited(path: Path, change) -> str:
    """``path`` (a JSON file) rewritten by ``change(obj)``; returns its folder."""
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))
    return str(path.parent)


def store_copy(i: Inputs, change=None) -> str:
    store = i.tmp / "store"
    shutil.copytree(i.store, store)
    if change is not None:
        edited(store / "manifest.json", change)
    return str(store)


def other_sha(obj: dict, key: str = "data") -> None:
    obj[key]["sha256"] = "0" * 64


def own_set(i: Inputs, **extra) -> Path:
    """A digits set that records the fingerprint of digits."""
    return make_set(i.tmp / "own", soft=False, **extra)


def results_with(i: Inputs, **fields) -> str:
    record = {"source": "random", "method": "random", "model": "ConvNet", "seed": 0, "accuracy": 0.5,
              "protocol": {"name": "mtt", "lr": 0.01}, **fields}
    (i.tmp / "ev").mkdir()
    (i.tmp / "ev" / "results.json").write_text(json.dumps({"runs": [record]}))
    return str(i.tmp / "ev")


def run_folder(i: Inputs, config_text: str) -> str:
    """A run folder holding only ``config.json`` with ``config_text``."""
    (i.tmp / "r").mkdir()
    (i.tmp / "r" / "config.json").write_text(config_text)
    return str(i.tmp / "r")


def buffer_flags(i: Inputs, *extra: str, change=None) -> list[str]:
    """dd.buffer flags that reopen a copy of the digits store, its manifest first rewritten by ``change``."""
    root = i.tmp / "buffers"
    shutil.copytree(i.buffer, root)
    for manifest in root.glob("*/*/*/manifest.json") if change else []:
        edited(manifest, change)
    return [*TINY_BUFFER_FLAGS, "--buffer-dir", str(root), *extra]


# case: (command, argv from the inputs, words the one error line must hold)
CASES = {
    # data and settings that differ from what an artefact was made from
    "distill on other data than the store's": (
        distill_main, lambda i: i.distill(buffer=store_copy(i, other_sha)),
        ["experts in", "were trained on digits 1x8x8, 10 classes, sha256 00000000", "--allow-other-data"]),
    "distill on data of another class count": (
        distill_main, lambda i: i.distill(buffer=store_copy(i, lambda m: m["dataset"].update(num_classes=4))),
        ["has 10 classes, but the experts", "were trained on 4", "--data-path"]),
    "--buffer-config of another recipe than --buffer": (
        distill_main, lambda i: i.distill("--buffer-config", str(REPO / "experiments/buffer/digits_gsam.yaml"),
                                          buffer=str(i.store)),
        ["holds experts of recipe", "--buffer-config none", "drop --buffer"]),
    "buffer --seed 1 into a store of --seed 0": (
        buffer_main, lambda i: buffer_flags(i, "--seed", "1"), ["holds experts of --seed 0, not --seed 1"]),
    "buffer --seed 1 into an old store without a recorded seed": (
        buffer_main, lambda i: buffer_flags(i, "--seed", "1", change=lambda m: m.pop("seed")),
        ["holds experts of --seed 0, not --seed 1"]),
    "buffer on other data into an existing store": (
        buffer_main, lambda i: buffer_flags(i, change=other_sha), ["was trained on", "use another --buffer-dir"]),
    "eval a set on other data": (
        eval_main, lambda i: ["--synset", edited(own_set(i) / "synset.json", other_sha), *EVAL],
        ["was distilled on digits 1x8x8, 10 classes, sha256 00000000", "--allow-other-data"]),
    "eval --zca on a set distilled without ZCA": (
        eval_main, lambda i: ["--synset", str(i.synset), "--zca", *EVAL], ["--zca", "drop --zca"]),
    # malformed artefacts (valid JSON, wrong shape)
    "manifest dataset a string": (
        distill_main, lambda i: i.distill(buffer=store_copy(i, lambda m: m.update(dataset="digits"))),
        ["manifest.json: field 'dataset' should be an object, got 'digits'"]),
    "manifest dataset.size of one entry": (
        distill_main, lambda i: i.distill(buffer=store_copy(i, lambda m: m["dataset"].update(size=[8]))),
        ["field 'dataset.size' should be a list of two positive integers"]),
    "manifest model null": (
        distill_main, lambda i: i.distill(buffer=store_copy(i, lambda m: m.update(model=None))),
        ["field 'model' should be an object, got None"]),
    "synset.json config a list": (
        eval_main, lambda i: ["--synset", edited(i.synset / "synset.json", lambda m: m.update(config=[])), *EVAL],
        ["synset.json: field 'config' should be an object, got []"]),
    "results.json accuracy a string": (
        eval_main, lambda i: ["--synset", str(i.synset), *EVAL, "--out", results_with(i, accuracy="high")],
        ["(record 0): field 'accuracy' should be a number, got 'high'"]),
    "results.json protocol a string": (
        eval_main, lambda i: ["--synset", str(i.synset), *EVAL, "--out", results_with(i, protocol="mtt")],
        ["(record 0): field 'protocol' should be an object, got 'mtt'"]),
    "report on an expert record with a string accuracy": (
        report_main, lambda i: [edited(Path(store_copy(i)) / "expert_00000.json", lambda r: r.update(test_acc=["x"]))],
        ["expert_00000.json: field 'test_acc' should be a list of numbers"]),
    "report on a run whose config.json is a list": (
        report_main, lambda i: [run_folder(i, "[]")], ["run config", "is not a JSON object"]),
    # numbers past what the machine or a generator takes
    "buffer seed past the per-expert seed's range": (
        buffer_main, lambda i: ["--seed", "99999999999999", "--num-experts", "1"], ["--seed must be in 0..", "got 99"]),
    "distill 23-digit seed": (
        distill_main, lambda i: i.distill("--seed", "12345678901234567890123"), ["--seed must be in 0.."]),
    "distill seed 1e20": (distill_main, lambda i: i.distill("--seed", "1e20"), ["--seed must be in 0..", "got 1000"]),
    "distill 23-digit YAML seed": (
        distill_main, lambda i: [*i.distill(), "--config", i.file("p.yaml", "seed: 12345678901234567890123\n")],
        ["--seed must be in 0.."]),
    "eval seed past a generator's range": (
        eval_main, lambda i: ["--synset", str(i.synset), "--seed", str(2**63), *EVAL], ["--seed must be in 0.."]),
    "buffer epochs past the machine's memory": (
        buffer_main, lambda i: ["--epochs", "99999999999999", "--buffer-dir", str(i.tmp / "b"), "--device", "cpu"],
        ["--epochs 99999999999999 makes each expert's trajectory", "lower --epochs"]),
    "buffer image size past the machine's memory": (
        buffer_main, lambda i: ["--image-size", "99999999999999", "--buffer-dir", str(i.tmp / "b")],
        ["--image-size 99999999999999", "pass a smaller size"]),
    "distill image size past the machine's memory": (
        distill_main, lambda i: i.distill("--image-size", "99999999999999"), ["--image-size 99999999999999"]),
    "distill syn-steps past the machine's memory": (
        distill_main, lambda i: i.distill("--syn-steps", "99999999999999"), ["--syn-steps 99999999999999",
                                                                             "lower --syn-steps"]),
    "distill eval-runs past the machine's memory": (
        distill_main, lambda i: i.distill("--eval-runs", "99999999999999"), ["lower --eval-runs"]),
    "distill label temperature 0": (
        distill_main, lambda i: i.distill("--method", "tesla", "--label-temperature", "0"),
        ["--label-temperature must be positive"]),
    "distill EMA decay above 1": (
        distill_main, lambda i: i.distill("--method", "ftd", "--ema-decay", "5"), ["--ema-decay must be in"]),
    "distill inner momentum 1": (
        distill_main, lambda i: i.distill("--method", "ast", "--inner-momentum", "1"),
        ["--inner-momentum must be in [0, 1)"]),
    "eval runs past the machine's memory": (
        eval_main, lambda i: ["--synset", str(i.synset), *EVAL, "--runs", "99999999999999"], ["lower --runs"]),
    "buffer experts past the machine's memory": (
        buffer_main, lambda i: ["--num-experts", "99999999999999"], ["lower --num-experts"]),
    # traps
    "run dir under a file": (
        distill_main, lambda i: i.distill("--run-dir", str(Path(i.file("f", "x")) / "r")),
        ["lies under", "which is a file"]),
}


@pytest.mark.parametrize("case", cases_on_experts_as_e2e(CASES, readers=("store_copy", "buffer_flags")))
def test_mismatch_and_malformed_input_is_one_line(case, tmp_path, request, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main, make_argv, words = CASES[case]
    argv = make_argv(Inputs(tmp_path, request))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err and "resolved in" not in out
    lines = [line for line in err.splitlines() if line.strip()]
    assert sum(line.startswith("error: ") for line in lines) == 1 and lines[-1].startswith("error: "), err
    for word in words:
        assert word in lines[-1], f"{word!r} not in {lines[-1]!r}"


def test_the_fingerprint_is_the_data_whatever_the_split_and_differs_for_other_data():
    cpu = torch.device("cpu")
    whole, carved = prepare_data("digits", cpu), prepare_data("digits", cpu, val_fraction=0.2, val_seed=3)
    zca = prepare_data("digits", cpu, preprocess="zca")
    assert whole.fingerprint() == carved.fingerprint() == zca.fingerprint()
    assert whole.identity()["sha256"] != carved.identity()["sha256"]  # the eval records' split identity differs
    smaller = prepare_data("digits", cpu, image_size=6).fingerprint()
    assert smaller["sha256"] != whole.fingerprint()["sha256"] and smaller["shape"] == [1, 6, 6]
    assert prepare_data("digits-0to4", cpu).fingerprint()["num_classes"] == 5


def test_check_data_passes_the_same_warns_on_none_and_lets_other_data_through_only_when_allowed(capsys):
    mine = digits_fingerprint()
    other = {**mine, "sha256": "f" * 64}
    assert check_data(mine, mine, "the set", "was distilled on", "--dataset digits", allow=False) == "verified"
    assert check_data(None, mine, "the set", "was distilled on", "--dataset digits", allow=False) == UNVERIFIED
    assert "records no data fingerprint" in capsys.readouterr().err
    assert check_data(other, mine, "the set", "was distilled on", "--dataset digits", allow=True) == OTHER
    with pytest.raises(DDError, match="sha256 ffffffff, but --dataset digits gives digits 1x8x8"):
        check_data(other, mine, "the set", "was distilled on", "--dataset digits", allow=False)
    with pytest.raises(DDError, match="malformed data fingerprint"):
        check_data({"sha256": 3}, mine, "the set", "was distilled on", "--dataset digits", allow=False)


def test_a_set_on_data_of_another_class_count_blames_the_data(tmp_path):
    synset = dd.load_synset(make_set(tmp_path / "s", soft=False, data=digits_fingerprint()))
    four = prepare_data("digits-0to4", torch.device("cpu"))
    four.spec = four.spec.__class__(**{**four.spec.__dict__, "num_classes": 4})
    with pytest.raises(DDError, match="gives data of 4 classes, but the set at s was distilled on digits"):
        check_set_data("s", synset, four, "--data-path four", allow=True)
    with pytest.raises(DDError, match="holds 10 classes of 1 images, but the data .* has 4 classes; evaluate it on "
                                      "the data"):
        check_set("s", synset, four.spec, False)


@pytest.mark.e2e
def test_eval_with_allow_other_data_records_it_and_a_set_without_fingerprint_as_unverified(tmp_path, capsys):
    other = edited(make_set(tmp_path / "o", soft=False, data=digits_fingerprint()) / "synset.json", other_sha)
    old = make_set(tmp_path / "old", soft=False, pick=1, data=None)
    runs = evaluate(EvalConfig(synset=f"{other},{old}", runs=1, epochs=1, device="cpu", allow_other_data=True,
                               out=str(tmp_path / "ev"))).runs
    checks = {r["set"]["path"]: r["set"].get("data_check") for r in runs}
    assert checks == {other: OTHER, str(old): UNVERIFIED}


@pytest.mark.e2e
def test_a_distilled_set_records_its_data_and_its_store_and_resume_needs_the_checkpoint(tmp_path, request, capsys):
    inputs = Inputs(tmp_path, request)
    assert distill_main(inputs.distill()) == 0
    meta = json.loads((tmp_path / "run" / "synset" / "synset.json").read_text())
    assert meta["data"] == meta["store_data"] == digits_fingerprint() and meta["data_check"] == "verified"
    (tmp_path / "run" / "checkpoint.safetensors").unlink()
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(SystemExit):
        run_cli(distill_main, [*inputs.distill(), "--resume", "--iterations", "4"])
    assert "holds a set but no checkpoint.safetensors" in capsys.readouterr().err
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics  # the history is kept


@pytest.mark.e2e
def test_buffer_discards_a_truncated_expert_before_it_resumes(tmp_path, digits_buffer):
    (store,) = digits_buffer.glob("digits/ConvNet/*")
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    path = copy / "expert_00001.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    opened = TrajectoryStore.open(copy)
    assert opened.discard_damaged() == ["expert 1's file expert_00001.safetensors failed its checksum"]
    assert opened.completed() == [0] and opened.missing(2) == [1]


def test_a_held_interrupt_abandons_a_long_inner_plan():
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(Interrupted), uninterruptible():
        cli._on_signal(signal.SIGTERM, None)  # held: the block has begun
        make_plan(10, 5, 10**12, generator)
    assert cli._held == {"depth": 0, "pending": 0}


def random_run(lr: float, accuracy: float, **extra) -> dict:
    return {"source": "random", "method": "random", "ipc": 1, "labels": "hard", "dataset": "digits", "model": "M",
            "seed": 0, "augment": "dsa", "protocol": {"name": "mtt", "lr": lr}, "accuracy": accuracy, **extra}


def test_the_gain_compares_with_one_random_source_never_a_mean_over_baseline_lrs():
    distilled = {**random_run(0.05, 0.60), "source": "distilled", "method": "mtt", "set": {"sha256": "a"}}
    one = [distilled, random_run(0.01, 0.30)]
    assert improvements(one) == {("M", "mtt ipc1"): (0.60, 0.30)}
    two = [*one, random_run(0.1, 0.40)]
    assert improvements(two) == {("M", "mtt ipc1 vs random ipc1 [lr 0.01]"): (0.60, 0.30),
                                 ("M", "mtt ipc1 vs random ipc1 [lr 0.1]"): (0.60, 0.40)}
    assert "+30.00 (60.00 vs 30.00)" in improvement_table(two) and "35.00" not in improvement_table(two)


def test_sections_that_differ_in_zca_only_say_so():
    title = context_title(random_run(0.01, 0.3, data={"sha256": "ab" * 32, "preprocess": {"kind": "zca"}}))
    assert ", zca, data abababab" in title


def test_report_rows_of_same_named_folders_are_told_apart_and_cells_keep_to_the_runs_data(tmp_path):
    runs = [Run(tmp_path / "a" / "r1", {}, [], [], None, []), Run(tmp_path / "b" / "r1", {}, [], [], None, []),
            Run(tmp_path / "r2", {}, [], [], None, [])]
    label_apart(runs)
    assert [run.name for run in runs] == ["a/r1", "b/r1", "r2"]
    record = {"source": "distilled", "set": {"sha256": "s"}}
    run = Run(tmp_path / "r", {}, [], [], {"sha256": "s", "data": digits_fingerprint()}, [],
              {tmp_path: [record, {**record, "set": {"sha256": "s", "data_check": OTHER}}]})
    assert run.test_records() == [record] and len(run.set_records()) == 2
    old = Run(tmp_path / "r", {}, [], [], {"sha256": "s"}, [], run.results)
    assert len(old.test_records()) == 2  # a set without a fingerprint: matched by checksum (and recorded unverified)


def test_prepared_data_built_by_hand_has_a_fingerprint():
    data = prepare_data("digits", torch.device("cpu"))
    manual = PreparedData(data.spec, data.preprocessor, *data.train, *data.test)
    assert manual.fingerprint()["sha256"] and manual.fingerprint()["num_classes"] == 10


def test_a_full_disk_reported_by_a_library_is_one_line_and_other_errors_pass(tmp_path):
    from dd.io import atomic_write

    def full(path):
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(DDError, match="no space left on the device while writing"):
        atomic_write(tmp_path / "x", full)

    def broken(path):
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else"):
        atomic_write(tmp_path / "x", broken)
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


@pytest.mark.e2e
def test_an_abandoned_iteration_leaves_the_generator_as_it_was(tmp_path, digits_buffer):
    from dd.distill.config import MTTConfig
    from dd.distill.engine import Distiller

    config = MTTConfig(buffer_dir=str(digits_buffer), run_dir=str(tmp_path / "run"), iterations=2, syn_steps=4,
                           expert_epochs=2, max_start_epoch=2, eval_every=0, device="cpu")
    distiller = Distiller(config)
    before = distiller.generator.get_state()
    with pytest.raises(Interrupted), uninterruptible():
        cli._on_signal(signal.SIGTERM, None)
        distiller.step()
    assert torch.equal(distiller.generator.get_state(), before) and cli._held["pending"] == 0
