"""dd.eval: records, table, resume and the error paths; the protocol's pieces by hand."""

import json

import pytest
import torch

import dd.multiseed as multiseed
from dd.errors import DDError
from dd.eval import EvalConfig, evaluate
from dd.eval.report import augment_of, format_cell, improvement_table, improvements, markdown_table
from dd.training import soft_cross_entropy
from tests.helpers import make_set


@pytest.fixture
def synset_dir(tmp_path):
    return make_set(tmp_path / "set", soft=False)


@pytest.fixture
def soft_dir(tmp_path):
    return make_set(tmp_path / "soft", soft=True)


@pytest.mark.e2e
def test_eval_records_and_resume(tmp_path, synset_dir):
    config = EvalConfig(synset=str(synset_dir), runs=2, epochs=30, baseline="random", out=str(tmp_path / "ev"),
                        device="cpu")
    runs = evaluate(config).runs
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["runs"] == runs
    assert len(runs) == 4
    assert {r["source"] for r in runs} == {"distilled", "random"}
    for r in runs:
        assert {"source", "method", "model", "ipc", "seed", "accuracy", "protocol", "labels"} <= r.keys()
        assert 0.0 <= r["accuracy"] <= 1.0 and r["ipc"] == 1 and r["protocol"]["epochs"] == 30
    assert "| mtt ipc1 | " in (tmp_path / "ev" / "results.md").read_text()
    assert evaluate(config).runs == runs  # everything recorded: nothing retrained, same records
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["runs"] == runs


@pytest.mark.e2e
def test_same_seed_same_accuracy(tmp_path, synset_dir):
    acc = [evaluate(EvalConfig(synset=str(synset_dir), runs=1, epochs=10, device="cpu", out=str(tmp_path / d)))
           .runs[0]["accuracy"] for d in "ab"]
    assert acc[0] == acc[1]


@pytest.mark.e2e
def test_eval_errors(tmp_path, synset_dir):
    with pytest.raises(DDError, match="distilled on digits, not mnist"):
        evaluate(EvalConfig(synset=str(synset_dir), dataset="mnist", out=str(tmp_path)))
    with pytest.raises(DDError, match="nothing to evaluate"):
        evaluate(EvalConfig(out=str(tmp_path)))
    with pytest.raises(DDError, match="unknown baseline 'best'"):
        evaluate(EvalConfig(synset=str(synset_dir), baseline="best", out=str(tmp_path)))
    with pytest.raises(DDError, match="needs --ipc"):
        evaluate(EvalConfig(baseline="random", out=str(tmp_path)))


def test_table_by_hand():
    assert format_cell([0.9, 0.8]) == "85.00 ± 5.00 (2)"
    runs = [{"source": "distilled", "method": "mtt", "ipc": 1, "model": "ConvNet", "accuracy": 0.5},
            {"source": "full", "method": "full", "ipc": None, "model": "ConvNet", "accuracy": 1.0}]
    table = markdown_table(runs)
    assert "| source | ConvNet |" in table
    assert "| mtt ipc1 | 50.00 ± 0.00 (1) |" in table and "| full | 100.00 ± 0.00 (1) |" in table


def test_soft_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0]])
    target = torch.tensor([[0.0, 100.0]])  # softmax ~ [0, 1]
    assert torch.allclose(soft_cross_entropy(logits, target), torch.log(torch.tensor(2.0)))
    hard = torch.tensor([[2.0, -1.0, 0.5]])
    assert torch.allclose(soft_cross_entropy(hard, torch.tensor([[50.0, 0.0, 0.0]])),
                          torch.nn.functional.cross_entropy(hard, torch.tensor([0])))


@pytest.mark.e2e
def test_soft_set_under_hard_and_soft_labels(tmp_path, soft_dir, synset_dir):
    short = {"runs": 1, "epochs": 10, "device": "cpu"}
    runs = evaluate(EvalConfig(synset=str(soft_dir), labels="auto,hard,soft", **short, out=str(tmp_path / "s"))).runs
    assert [r["labels"] for r in runs] == ["soft", "hard"]  # auto on a soft set is soft: evaluated once
    assert all(r["augment"] == "dsa" and r["protocol"]["augment"] != "none" for r in runs)
    # --labels hard trains on the argmax: exactly the run of the hard set with those labels
    hard_runs = evaluate(EvalConfig(synset=str(synset_dir), labels="hard,auto", **short, out=str(tmp_path / "h"))).runs
    assert [r["labels"] for r in hard_runs] == ["hard"]
    assert runs[1]["accuracy"] == hard_runs[0]["accuracy"]


@pytest.mark.e2e
def test_label_and_augment_errors(tmp_path, synset_dir):
    with pytest.raises(DDError, match="--labels soft needs a set with soft labels"):
        evaluate(EvalConfig(synset=str(synset_dir), labels="soft", out=str(tmp_path)))
    with pytest.raises(DDError, match="unknown --labels setting 'fuzzy'"):
        evaluate(EvalConfig(synset=str(synset_dir), labels="hard,fuzzy", out=str(tmp_path)))
    with pytest.raises(DDError, match="unknown --augment setting 'zca'"):
        evaluate(EvalConfig(synset=str(synset_dir), augment="zca", out=str(tmp_path)))


@pytest.mark.e2e
def test_augment_none_and_random_under_each_setting(tmp_path, soft_dir):
    runs = evaluate(EvalConfig(synset=str(soft_dir), labels="hard,auto", augment="dsa,none", baseline="random", runs=1,
                               epochs=10, device="cpu", out=str(tmp_path / "ev"))).runs
    settings = sorted((r["source"], r["labels"], r["augment"]) for r in runs)
    assert settings == [("distilled", "hard", "dsa"), ("distilled", "hard", "none"), ("distilled", "soft", "dsa"),
                        ("distilled", "soft", "none"), ("random", "hard", "dsa"), ("random", "hard", "none")]
    for r in runs:
        assert (r["protocol"]["augment"] == "none") == (r["augment"] == "none")
    md = (tmp_path / "ev" / "results.md").read_text()
    assert "augment none," in md and "### improvement over random real" in md
    # one section per augmentation (the protocols differ), each comparing both label settings with random
    assert md.count("# digits (test split") == 2
    assert md.count("| datm ipc1 [labels hard] | ") == 4 and md.count("| datm ipc1 [labels soft] | ") == 4


@pytest.mark.e2e
def test_resume_distinguishes_settings(tmp_path, soft_dir, capsys):
    base = {"synset": str(soft_dir), "baseline": "random", "runs": 1, "epochs": 10, "device": "cpu",
            "out": str(tmp_path / "ev")}
    first = evaluate(EvalConfig(**base, labels="hard", augment="none")).runs
    assert len(first) == 2
    capsys.readouterr()
    runs = evaluate(EvalConfig(**base, labels="hard,soft", augment="dsa,none")).runs
    assert "eval: 2 of 6 runs already in" in capsys.readouterr().out
    assert runs[:2] == first and len(runs) == 6
    assert len({(r["source"], r["labels"], r["augment"]) for r in runs}) == 6


def test_improvement_table_by_hand():
    def run(source, model, labels, augment, accuracy, ipc=1):
        return {"source": source, "method": "datm" if source == "distilled" else source, "model": model,
                "ipc": ipc, "labels": labels, "augment": augment, "accuracy": accuracy}

    runs = [run("distilled", "ConvNet", "soft", "dsa", 0.60), run("distilled", "ConvNet", "soft", "dsa", 0.70),
            run("distilled", "ConvNet", "hard", "none", 0.40), run("random", "ConvNet", "hard", "dsa", 0.30),
            run("random", "ConvNet", "hard", "dsa", 0.50), run("random", "ConvNet", "hard", "none", 0.35),
            run("random", "ConvNet", "hard", "none", 0.99, ipc=10),  # other ipc: never compared
            run("distilled", "VGG11", "soft", "dsa", 0.80),  # no random run for VGG11: no cell
            run("full", "ConvNet", "hard", "dsa", 0.95)]
    found = improvements(runs)
    soft, hard = "datm ipc1 [labels soft]", "datm ipc1 [labels hard]"
    assert found.keys() == {("ConvNet", soft), ("ConvNet", hard)}
    assert found[("ConvNet", soft)] == pytest.approx((0.65, 0.40))
    assert found[("ConvNet", hard)] == pytest.approx((0.40, 0.35))
    table = improvement_table(runs)
    assert "| source | ConvNet |" in table
    assert f"| {soft} | +25.00 (65.00 vs 40.00) |" in table and f"| {hard} | +5.00 (40.00 vs 35.00) |" in table
    assert "VGG11" not in table
    assert improvement_table([run("distilled", "ConvNet", "soft", "dsa", 0.6)]) == ""
    assert augment_of({"protocol": {"augment": "none"}}) == "none"  # records without the field
    assert augment_of({"protocol": {"augment": "flip"}}) == "dsa"


@pytest.mark.e2e
def test_baseline_from_a_separate_call_joins_the_report(tmp_path, synset_dir):
    base = {"synset": str(synset_dir), "epochs": 2, "out": str(tmp_path / "ev"), "device": "cpu"}
    evaluate(EvalConfig(**base, runs=2, baseline="random"))
    evaluate(EvalConfig(**base, runs=1, baseline="full"))
    table = (tmp_path / "ev" / "results.md").read_text()
    assert "(2) |" in table and "(1) |" in table and "full" in table and "random" in table
    evaluate(EvalConfig(**{**base, "epochs": 3}, runs=1))  # another protocol: a section of its own
    two, three = (tmp_path / "ev" / "results.md").read_text().split("# digits (test split")[1:]
    assert "epochs 2," in two and "full" in two and "(2) |" in two
    assert "epochs 3," in three and "full" not in three and "(1) |" in three


@pytest.mark.e2e
def test_batched_seeds_give_the_sequential_records(tmp_path, synset_dir, monkeypatch):
    """--batch-seeds on trains the set's 3 seeds (and the full data's) as one vmapped group each, random
    real images per seed; the records equal a sequential evaluation's."""
    import dd.eval.jobs as eval_jobs
    calls = []
    real = eval_jobs.train_and_score_seeds
    monkeypatch.setattr(eval_jobs, "train_and_score_seeds", lambda *a, **k: calls.append(a[8]) or real(*a, **k))
    base = {"synset": str(synset_dir), "runs": 3, "epochs": 4, "baseline": "random", "device": "cpu"}
    on = evaluate(EvalConfig(**base, batch_seeds="on", out=str(tmp_path / "on"))).runs
    assert sorted(map(len, calls)) == [1, 1, 1, 3]
    off = evaluate(EvalConfig(**base, batch_seeds="off", out=str(tmp_path / "off"))).runs
    key = lambda r: (r["source"], r["seed"])  # noqa: E731
    on, off = sorted(on, key=key), sorted(off, key=key)
    assert [key(r) for r in on] == [key(r) for r in off] and len(on) == 6
    assert [r["accuracy"] for r in on] == pytest.approx([r["accuracy"] for r in off], abs=2 / 360)


@pytest.mark.e2e
def test_a_set_trains_under_its_methods_protocol_and_random_real_images_beside_it_too(tmp_path):
    """A DC set: protocol dc, no augmentation, for it and for the random baseline (the DC paper's random rows);
    a DSA set written before dsa had a protocol of its own (it says dc): protocol dsa; --protocol overrides."""
    dc = make_set(tmp_path / "dc", soft=False, method="dc", protocol="dc")
    old_dsa = make_set(tmp_path / "dsa", soft=False, pick=1, method="dsa", protocol="dc")
    short = {"runs": 1, "epochs": 2, "device": "cpu", "baseline": "random"}
    runs = evaluate(EvalConfig(synset=str(dc), **short, out=str(tmp_path / "a"))).runs
    assert sorted(r["source"] for r in runs) == ["distilled", "random"]
    assert all(r["protocol"]["name"] == "dc" and r["protocol"]["augment"] == "none" for r in runs)
    runs = evaluate(EvalConfig(synset=str(old_dsa), **short, out=str(tmp_path / "b"))).runs
    assert all(r["protocol"]["name"] == "dsa" and r["protocol"]["augment"] != "none" for r in runs)
    assert all(r["protocol"]["dsa_align_corners"] is False for r in runs)
    runs = evaluate(EvalConfig(synset=str(old_dsa), **short, protocol="mtt", out=str(tmp_path / "c"))).runs
    assert {r["protocol"]["name"] for r in runs} == {"mtt"}


def test_protocol_dc_evaluates_with_the_dc_codes_augmentation_per_model():
    """dd.eval's settings per model: on MNIST protocol dc trains with DC's crop_scale_rotate for 1000 epochs, the
    model ConvNetBN with crop_noise; --augment none trains the plain protocol (300 epochs) instead."""
    from dd.eval.jobs import augment_protocols
    from dd.protocols import get_protocol

    dc = get_protocol("dc")
    found = augment_protocols(dc, ["dsa", "none"], "mnist", "ConvNet", epochs_given=False)
    assert {k: (p.epochs, p.dc_augment) for k, p in found.items()} == {"dc": (1000, "crop_scale_rotate"),
                                                                         "none": (300, "")}
    assert augment_protocols(dc, ["dsa"], "mnist", "ConvNetBN", epochs_given=True)["dc"].epochs == 300
    assert augment_protocols(dc, ["dsa"], "mnist", "ConvNetBN", epochs_given=False)["dc"].dc_augment == "crop_noise"
    assert set(augment_protocols(dc, ["dsa", "none"], "fashionmnist", "ConvNet", epochs_given=False)) == {"none"}
    assert set(augment_protocols(get_protocol("dsa"), ["dsa", "none"], "mnist", "ConvNetBN", False)) == {"dsa", "none"}


@pytest.mark.e2e
def test_the_maximum_over_periodic_tests_is_a_test_split_figure(tmp_path, monkeypatch):
    """AST's protocol also tests every 20 epochs for a maximum reported beside the final accuracy; on the
    validation split (choices, tuning) and with --no-max-over-epochs those tests are skipped, the final accuracy
    unchanged."""
    base = {"dataset": "digits", "ipc": 1, "baseline": "random", "protocol": "ast", "epochs": 4, "runs": 1,
            "models": "ConvNetW32", "device": "cpu"}
    (tested,) = evaluate(EvalConfig(**base, split="test", out=str(tmp_path / "test"))).runs
    assert tested["max_accuracy"] >= tested["accuracy"]
    monkeypatch.setattr(multiseed.PeriodicTests, "record", lambda self, model: pytest.fail("a periodic test ran"))
    (validated,) = evaluate(EvalConfig(**base, split="val", out=str(tmp_path / "val"))).runs
    assert "max_accuracy" not in validated and 0.0 <= validated["accuracy"] <= 1.0
    (final_only,) = evaluate(EvalConfig(**base, split="test", max_over_epochs=False, out=str(tmp_path / "no"))).runs
    assert "max_accuracy" not in final_only and final_only["accuracy"] == tested["accuracy"]
    assert final_only["protocol"] == tested["protocol"]  # the same training: the same protocol's record
