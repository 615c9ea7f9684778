"""KRR-ST: the closed form against least squares, the guarded solve, the pool's reset policy, gradients to
the targets, resume, and the stage end to end (teacher -> distill -> transfer evaluation)."""

import json

import pytest
import torch

from dd.distill import runloop
from dd.distill.__main__ import main as distill_main
from dd.distill.checkpoint import save_checkpoint
from dd.distill.krr_st import KRRConfig, KRRDistiller, ModelPool, krr_predict, solve_psd, with_bias
from dd.distill.synset import load_synset
from dd.errors import DDError
from dd.eval import EvalConfig, TransferConfig, evaluate, evaluate_transfer
from dd.models import create_model

TINY = ["--method", "krr_st", "--model", "ConvNetW32", "--num-images", "12", "--batch-real", "64",
        "--num-models", "2", "--online-iterations", "3", "--log-every", "1", "--checkpoint-every", "2",
        "--device", "cpu"]


def test_kernel_ridge_closed_form_equals_least_squares_ridge():
    g = torch.Generator().manual_seed(0)
    phi_s = with_bias(torch.randn(6, 4, generator=g, dtype=torch.float64))
    phi_t = with_bias(torch.randn(3, 4, generator=g, dtype=torch.float64))
    y_s = torch.randn(6, 2, generator=g, dtype=torch.float64)
    ridge = 1e-2
    lam = ridge * (phi_s @ phi_s.T).trace()
    # Primal ridge regression: W = argmin |Phi_s W - Y|^2 + lam |W|^2 = lstsq of [Phi_s; sqrt(lam) I] W = [Y; 0].
    a = torch.cat([phi_s, lam.sqrt() * torch.eye(5, dtype=torch.float64)])
    b = torch.cat([y_s, torch.zeros(5, 2, dtype=torch.float64)])
    w = torch.linalg.lstsq(a, b).solution
    torch.testing.assert_close(krr_predict(phi_s, phi_t, y_s, ridge), phi_t @ w)


def test_solve_adds_jitter_to_a_singular_kernel():
    phi = torch.ones(4, 1)  # rank one: K is singular, Cholesky of K + 0 I fails
    k, y = phi @ phi.T, torch.ones(4, 1)
    out = solve_psd(k, y, lam=0.0)
    torch.testing.assert_close(out, torch.full((4, 1), 0.25))  # the minimum-norm solution of K x = y
    with pytest.raises(DDError, match="raise --ridge"):
        solve_psd(torch.full((2, 2), float("nan")), y[:2], lam=0.0)


def test_pool_resets_a_model_and_its_counter_after_max_steps():
    built = []

    def build(seed):
        built.append(seed)
        return create_model("ConvNet", 1, 3, (8, 8), seed=seed, width=8, depth=1)

    pool = ModelPool(build, 2, 3, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), torch.Generator().manual_seed(0))
    x, y = torch.randn(5, 1, 8, 8), torch.randn(5, 3)
    pool.warm_up(x, y)
    assert all(1 <= s <= 2 for s in pool.steps)
    pool.steps[0] = 2
    first = pool.models[0]
    before = first.classifier.weight.clone()
    pool.update(0, x, y)  # 2 < 3: one more online step
    assert pool.steps[0] == 3 and pool.models[0] is first and not torch.equal(first.classifier.weight, before)
    pool.update(0, x, y)  # 3 reached: re-initialised, counter back to 0 (the reference forgets this)
    assert pool.steps[0] == 0 and pool.models[0] is not first and len(built) == 3
    assert torch.equal(pool.models[0].classifier.weight, build(built[-1]).classifier.weight)
    pool.update(0, x, y)  # and it trains again
    assert pool.steps[0] == 1


@pytest.mark.e2e
def test_one_step_moves_images_and_target_representations(digits_teacher, tmp_path):
    config = KRRConfig(buffer_dir=str(digits_teacher), model="ConvNetW32", num_images=12, batch_real=64,
                       num_models=2, online_iterations=3, device="cpu", run_dir=str(tmp_path))
    distiller = KRRDistiller(config)
    images, targets = distiller.images.detach().clone(), distiller.targets.detach().clone()
    torch.testing.assert_close(targets, distiller.teacher.represent(images))  # Y_s starts as the teacher's view
    loss = distiller.step()
    assert loss.item() > 0
    assert distiller.targets.grad.abs().sum() > 0 and distiller.images.grad.abs().sum() > 0
    assert not torch.equal(distiller.targets.detach(), targets) and not torch.equal(distiller.images.detach(), images)


@pytest.mark.e2e
def test_raw_targets_are_the_encoder_output_and_recorded(digits_teacher, tmp_path):
    config = KRRConfig(buffer_dir=str(digits_teacher), model="ConvNetW32", num_images=12, batch_real=64,
                       num_models=2, online_iterations=3, device="cpu", run_dir=str(tmp_path), targets="raw")
    distiller = KRRDistiller(config)
    torch.testing.assert_close(distiller.targets.detach(), distiller.teacher.encoder.embed(distiller.images.detach()))
    assert distiller.synset().meta["targets"] == "raw"


@pytest.mark.e2e
def test_distill_resumes_and_eval_transfer_runs_every_source(digits_teacher, tmp_path, monkeypatch):
    common = [*TINY, "--buffer-dir", str(digits_teacher)]
    assert distill_main([*common, "--iterations", "4", "--run-dir", str(tmp_path / "straight")]) == 0

    def save_then_die(*args):
        save_checkpoint(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(runloop, "save_checkpoint", save_then_die)  # killed after the checkpoint at iteration 2
    with pytest.raises(KeyboardInterrupt):
        distill_main([*common, "--iterations", "4", "--run-dir", str(tmp_path / "resumed")])
    monkeypatch.setattr(runloop, "save_checkpoint", save_checkpoint)
    with pytest.raises(DDError, match="--resume"):
        distill_main([*common, "--iterations", "4", "--run-dir", str(tmp_path / "resumed")])
    assert distill_main([*common, "--iterations", "4", "--run-dir", str(tmp_path / "resumed"), "--resume"]) == 0
    straight, resumed = load_synset(tmp_path / "straight" / "synset"), load_synset(tmp_path / "resumed" / "synset")
    torch.testing.assert_close(resumed.images, straight.images)
    torch.testing.assert_close(resumed.labels, straight.labels)
    assert straight.transfer and straight.labels.shape == (12, 32) and straight.meta["iteration"] == 4
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2, 3, 4]

    synset = str(tmp_path / "straight" / "synset")
    with pytest.raises(DDError, match="--protocol transfer"):
        evaluate(EvalConfig(synset=synset, device="cpu"))
    out = tmp_path / "eval"
    runs = evaluate_transfer(TransferConfig(synset=synset, buffer_dir=str(digits_teacher), runs=1, pretrain_epochs=2,
                                            finetune_epochs=1, linear_epochs=2, out=str(out), device="cpu")).runs
    assert runs == json.loads((out / "results.json").read_text())["runs"]
    assert {(r["source"], r["protocol"]) for r in runs} == {(s, p) for s in ("krr_st", "random", "none")
                                                            for p in ("linear", "finetune")}
    for r in runs:
        assert r["dataset"] == "digits-5to9" and r["model"] == "ConvNetW32" and r["seed"] == 0
        assert 0 <= r["accuracy"] <= 1 and (r["recipe"]["pretrain"] is None) == (r["source"] == "none")
        assert r["num_images"] == (None if r["source"] == "none" else 12)
        assert r.get("targets") == ("standardized" if r["source"] == "random" else None)  # as the set's targets
    assert "| digits-5to9 | linear | ConvNetW32 |" in (out / "results.md").read_text()


def test_transfer_table_keeps_two_sets_apart():
    """Records of two transfer sets (other checksums) under one source name never share a cell."""
    from dd.eval.transfer import markdown

    def run(sha, seed, accuracy):
        return {"source": "krr_st", "dataset": "digits-5to9", "protocol": "linear", "model": "ConvNetBN",
                "seed": seed, "accuracy": accuracy, "set": {"sha256": sha, "path": "x"}}

    table = markdown([run("aa" * 32, 0, 0.5), run("aa" * 32, 1, 0.7), run("bb" * 32, 0, 0.9)])
    assert "| target | protocol | model | krr_st [aaaaaaaa] | krr_st [bbbbbbbb] |" in table
    assert "| digits-5to9 | linear | ConvNetBN | 60.00 ± 10.00 (2) | 90.00 ± 0.00 (1) |" in table


def test_transfer_table_rows_are_transfer_recipes_and_columns_are_sources():
    """One source is one column across its linear and fine-tuning rows; two transfer recipes of one protocol
    are two rows (tagged), never one cell; two pre-training recipes of one baseline are two columns (tagged)."""
    from dd.eval.transfer import markdown

    def run(protocol, epochs, pre_epochs, accuracy, source="random"):
        return {"source": source, "dataset": "digits-5to9", "protocol": protocol, "model": "ConvNetBN", "seed": 0,
                "accuracy": accuracy, "recipe": {"pretrain": {"epochs": pre_epochs}, "transfer": {"epochs": epochs}}}

    table = markdown([run("linear", 100, 500, 0.5), run("finetune", 10, 500, 0.6), run("finetune", 20, 500, 0.7)])
    lines = table.splitlines()
    assert lines[0] == "| target | protocol | model | random |"
    assert lines[2] == "| digits-5to9 | linear | ConvNetBN | 50.00 ± 0.00 (1) |"
    assert lines[3].startswith("| digits-5to9 | finetune [") and lines[3].endswith("| 60.00 ± 0.00 (1) |")
    assert lines[4].startswith("| digits-5to9 | finetune [") and lines[4].endswith("| 70.00 ± 0.00 (1) |")
    assert lines[3].split("|")[2] != lines[4].split("|")[2]
    table = markdown([run("linear", 100, 500, 0.5), run("linear", 100, 50, 0.9)])
    header = table.splitlines()[0].split(" | ")[3:]
    assert len(header) == 2 and all(h.startswith("random [") and len(h.split("[")[1].strip(" |]")) == 8
                                    for h in header)


def copy_teacher(digits_teacher, tmp_path, edit) -> str:
    """A copy of the digits teacher's buffers whose teacher manifest ``edit`` changed (a dict -> dict function)."""
    import shutil

    root = tmp_path / "teachers"
    shutil.copytree(digits_teacher, root)
    manifest = next(root.glob("*/*/*/manifest.json"))
    manifest.write_text(json.dumps(edit(json.loads(manifest.read_text()))))
    return str(root)


@pytest.mark.e2e
def test_a_teacher_records_its_data_and_krr_st_refuses_a_teacher_of_other_data(digits_teacher, tmp_path):
    config = dict(model="ConvNetW32", num_images=12, batch_real=64, num_models=2, online_iterations=3, device="cpu")
    distiller = KRRDistiller(KRRConfig(buffer_dir=str(digits_teacher), run_dir=str(tmp_path / "a"), **config))
    assert distiller.teacher.manifest["data"] == distiller.data.fingerprint()  # recorded when it was trained
    assert distiller.synset().meta["teacher_data"] == "verified"

    def other_data(m: dict) -> dict:
        return {**m, "data": {**m["data"], "sha256": "0" * 64}}

    other = copy_teacher(digits_teacher, tmp_path / "other", other_data)
    with pytest.raises(DDError, match=r"the teacher at .* was trained on digits-0to4 1x8x8, 5 classes, sha256 "
                                      r"00000000, but --dataset digits-0to4 .* gives .*; pass the data the teacher"):
        KRRDistiller(KRRConfig(buffer_dir=other, run_dir=str(tmp_path / "b"), **config))
    older = copy_teacher(digits_teacher, tmp_path / "older", lambda m: {k: v for k, v in m.items() if k != "data"})
    assert KRRDistiller(KRRConfig(buffer_dir=older, run_dir=str(tmp_path / "c"), **config)).teacher_data == "unverified"


@pytest.mark.e2e
def test_a_malformed_teacher_manifest_is_one_error_naming_the_field(digits_teacher, tmp_path):
    bad = copy_teacher(digits_teacher, tmp_path, lambda m: {**m, "output_dim": "64"})
    with pytest.raises(DDError, match="teacher manifest .*manifest.json: field 'output_dim' should be a positive "
                                      "integer, got '64'"):
        KRRDistiller(KRRConfig(buffer_dir=bad, model="ConvNetW32", num_images=12, device="cpu",
                               run_dir=str(tmp_path / "r")))
