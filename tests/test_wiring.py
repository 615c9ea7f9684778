"""Wiring, end to end: the pieces are pinned by formula elsewhere; these tests pin how they are connected. One
engine iteration of each method against its reference iteration (``dd.distill.reference``, the iteration written
out top-down from the papers) on a hand-made expert trajectory, with the same random draws; a whole run against a
resumed one (every piece of state); one dd.eval run against the protocol loop written out; and the sizes of the
baselines' training sets.

The reference has its own flat-parameter view, inner loop, losses and optimiser steps, and runs in float32 as the
engine does, so values agree to rounding, not bitwise.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import dd
import dd.eval.jobs as eval_jobs
from dd.buffer import ImportConfig, import_buffers
from dd.data import Preprocessor, load_dataset
from dd.distill.config import MTTConfig
from dd.distill.engine import Distiller
from dd.distill.reference import ITERATIONS, Synthetic
from dd.distill.registry import get_method
from dd.eval import EvalConfig, evaluate
from dd.functional import flatten_params
from dd.models import create_model
from dd.realdata import prepare_data
from dd.training import PeriodicTests
from tests.helpers import reference_evaluate_synset

pytestmark = pytest.mark.e2e  # every test here runs a stage end to end

MODEL = "ConvNetD1"  # one conv block (a 4-D weight for AST's perturbation, norm parameters, no buffers) and an FC
EPOCHS = 6  # the hand-made expert holds w*_0 .. w*_6


# -- a hand-made expert ------------------------------------------------------------------------------
def hand_made_snapshots() -> list[list[torch.Tensor]]:
    """w*_0 = a ConvNetD1 init; w*_{e+1} = w*_e + a random step of 20% of each parameter's spread (so that
    every epoch is far from its neighbours and an off-by-one target moves the loss by O(1))."""
    params = [p.detach().clone() for p in create_model(MODEL, 1, 10, (8, 8), seed=0).parameters()]
    generator = torch.Generator().manual_seed(7)
    snapshots = []
    for _ in range(EPOCHS + 1):
        snapshots.append([p.clone() for p in params])
        params = [p + 0.2 * (p.std() if p.numel() > 1 else 1.0) * torch.randn(p.shape, generator=generator)
                  for p in params]
    return snapshots


@pytest.fixture(scope="module")
def expert(tmp_path_factory):
    """(store folder, trajectory [EPOCHS+1, P]) of one hand-made expert imported into a store."""
    root = tmp_path_factory.mktemp("wiring")
    snapshots = hand_made_snapshots()
    torch.save([snapshots], root / "replay_buffer_0.pt")
    store, _ = import_buffers(ImportConfig(dataset="digits", model=MODEL, epochs=EPOCHS,
                                           buffer_dir=str(root / "buffers")), [root / "replay_buffer_0.pt"])
    trajectory = torch.stack([torch.cat([p.reshape(-1) for p in snapshot]) for snapshot in snapshots])
    return store, trajectory


# method -> its settings; every one starts at epoch 1 on iteration 0 (the window [1, 2)) and matches M = 2
METHODS = {
    "mtt": {},
    "mtt-dsa": {"method": "mtt", "dsa_strategy": "color_crop_flip"},
    "ftd": {"ema_decay": 0.5},
    "datm": {"soft_labels": True, "lr_y": 2.0, "threshold": 1e9, "current_max_start_epoch": 2, "max_start_epoch": 4,
             "expansion_end": 1},
    "ast": {"inner_momentum": 0.9, "balance_loss": True, "middle_loss": "adaptive", "weight_perturb": True},
    "tesla": {"label_temperature": 2.0},  # fixed soft labels from w*_3 (the last target), the first-order unroll
}


def make_config(store, run_dir, case: str, **extra) -> MTTConfig:
    values = dict(method=case, model=MODEL, buffer=str(store), run_dir=str(run_dir), ipc=1, syn_steps=4,
                  expert_epochs=2, min_start_epoch=1, max_start_epoch=2, batch_syn=4, lr_img=100.0, lr_lr=1e-3,
                  lr_teacher=0.02, dsa_strategy="none", pix_init="real", eval_every=0, eval_epochs=1,
                  eval_models=MODEL, eval_batch_size=64, log_every=1, checkpoint_every=2, device="cpu", seed=3,
                  lr_step_limit=0.0)  # the hand-written iteration is the reference's unguarded lr update
    settings = {**values, **METHODS[case], **extra}
    return get_method(settings["method"]).config(**settings)


def record_unrolls(distiller: Distiller) -> list[SimpleNamespace]:
    """Every call of the distiller's unroll from now on: its start parameters, inner plan and capture steps."""
    calls: list[SimpleNamespace] = []
    inner = distiller.unroll

    def unroll(student, w0, images, labels, lr, plan, capture):
        calls.append(SimpleNamespace(w0=w0.detach().clone(), plan=plan, capture=list(capture)))
        return inner(student, w0, images, labels, lr, plan, capture)

    distiller.unroll = unroll
    return calls


def check_plan_is_shuffled(plan, num_images: int, batch: int) -> None:
    """MTT's plan: consecutive ``batch``-chunks of fresh random permutations of the set, one DSA seed per step."""
    flat = torch.cat(plan.indices).tolist()
    sizes = [len(i) for i in plan.indices]
    for start in range(0, len(flat) - num_images + 1, num_images):
        assert sorted(flat[start:start + num_images]) == list(range(num_images)), "each pass is a permutation"
    assert sizes[:3] == [batch, batch, num_images - 2 * batch]
    assert flat[:num_images] != list(range(num_images)), "the minibatches must be shuffled"
    assert flat[:num_images] != flat[num_images:2 * num_images], "each pass draws a fresh permutation"
    assert len(set(plan.seeds)) == len(plan.seeds), "every inner step has its own DSA seed"


# -- the engine against the reference iteration -------------------------------------------------------------
def close(found: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> bool:
    """Equal up to float32 rounding, relative to the largest entry."""
    return found.shape == expected.shape and float((found - expected).abs().max()) <= rtol * float(
        expected.abs().max().clamp(min=1e-12))


@pytest.mark.parametrize("case", list(METHODS))
def test_one_iteration_equals_the_reference_iteration(expert, tmp_path, case):
    store, trajectory = expert
    distiller = Distiller(make_config(store, tmp_path / "run", case))
    cfg = distiller.config
    rows = distiller.experts.get(0)
    stored = torch.stack([rows[epoch] for epoch in range(len(rows))]).cpu()
    assert torch.equal(stored, trajectory), "the store holds the hand-made expert"
    calls = record_unrolls(distiller)
    before = Synthetic(*(t.detach().clone() for t in (distiller.images, distiller.labels, distiller.syn_lr)))
    draws = torch.Generator()
    draws.set_state(distiller.generator.get_state())
    loss = distiller.step()

    (call,) = calls
    start = 1  # the window [1, 2) at iteration 0
    check_plan_is_shuffled(call.plan, 10, 4)
    assert len(call.plan.indices) == cfg.syn_steps
    if cfg.method == "ast":
        assert call.capture == [2, 4], "intermediate student after N // M steps, then the end point"
        check_perturbed(distiller.ctx.model, call.w0, trajectory[start])
    else:
        assert call.capture == [cfg.syn_steps]
        assert torch.equal(call.w0, trajectory[start]), "the student starts at w*_t"
    expected_loss, after = ITERATIONS[cfg.method](cfg, distiller.ctx.model, [trajectory], before, draws, iteration=0)
    assert close(loss, expected_loss, 1e-5), (float(loss), float(expected_loss))
    assert close(distiller.images.detach() - before.images, after.images - before.images), "the images' update"
    if distiller.method.learn_labels():
        assert distiller.labels.requires_grad
        assert close(distiller.labels.detach() - before.labels, after.labels - before.labels), "the labels' update"
    else:
        assert torch.equal(distiller.labels, before.labels) and not distiller.labels.requires_grad
    if before.labels.dim() == 1:
        assert before.labels.tolist() == list(range(10)), "one class id per image, in class order"
    assert close(distiller.syn_lr.detach() - before.lr, after.lr - before.lr), "the learned lr's update"
    assert float((distiller.syn_lr.detach() - before.lr).abs()) > 0
    if cfg.method == "ftd":  # ema_1 = d * x_0 + (1 - d) * x_1
        assert close(distiller.sets()["ema"] - before.images, after.ema - before.images), "the EMA follows the update"


def check_perturbed(model, w_tilde: torch.Tensor, w: torch.Tensor) -> None:
    """AST's start: every 4-D weight W becomes W + (d / ||d||) * W elementwise, so that (W~ - W) / W has norm 1;
    the rest is unchanged."""
    offset = 0
    for p in model.parameters():
        a, b = w_tilde[offset:offset + p.numel()], w[offset:offset + p.numel()]
        offset += p.numel()
        if p.dim() == 4:
            assert float(((a - b) / b).norm()) == pytest.approx(1.0, rel=1e-4), "the conv weights are perturbed"
        else:
            assert torch.equal(a, b), "only the conv weights are perturbed"


def starts_used(distiller: Distiller, trajectory: torch.Tensor, iteration: int, steps: int) -> set[int]:
    """The start epochs of ``steps`` iterations run at engine iteration ``iteration``."""
    calls = record_unrolls(distiller)
    for _ in range(steps):
        distiller.iteration = iteration
        distiller.step()
    return {next(e for e in range(len(trajectory)) if torch.equal(c.w0, trajectory[e])) for c in calls}


def test_datm_window_follows_the_engine_iteration(expert, tmp_path):
    """Window [1, 2) at iteration 0 and [1, 4) from iteration 1 (expansion_end 1): the engine's iteration reaches
    the start-epoch draw, and neither bound is crossed."""
    store, trajectory = expert
    distiller = Distiller(make_config(store, tmp_path / "run", "datm", threshold=1e-12))  # every update skipped
    assert starts_used(distiller, trajectory, 0, 8) == {1}
    assert starts_used(distiller, trajectory, 1, 24) == {1, 2, 3}


def test_mtt_starts_cover_the_window_and_never_its_end(expert, tmp_path):
    store, trajectory = expert
    distiller = Distiller(make_config(store, tmp_path / "run", "mtt", min_start_epoch=0, max_start_epoch=3,
                                      lr_img=1e-12, lr_lr=0.0))  # the set barely moves: 24 steps stay finite
    assert starts_used(distiller, trajectory, 0, 24) == {0, 1, 2}


# -- resume ---------------------------------------------------------------------------------------------
RESUMED = {"mtt": {}, "ftd": {}, "datm": {"threshold": 1.00065}, "ast": {}}  # DATM: the 1st of 4 updates skipped


@pytest.mark.parametrize("case", list(RESUMED))
def test_a_resumed_run_ends_in_the_uninterrupted_state(expert, tmp_path, case):
    """4 iterations straight, or 2 then a resume for 2 more: every state tensor (images, labels, lr, the outer
    optimisers' momentum buffers, the generator, the method's own: FTD's EMA, DATM's skip count) is equal."""
    store, _ = expert
    extra = {"iterations": 4, "lr_img": 10.0, "lr_lr": 1e-5, **RESUMED[case]}
    straight = Distiller(make_config(store, tmp_path / "a", case, **extra))
    straight.run()
    Distiller(make_config(store, tmp_path / "b", case, **{**extra, "iterations": 2})).run()
    resumed = Distiller(make_config(store, tmp_path / "b", case, **extra, resume=True))
    resumed.run()
    a, b = straight.state()[0], resumed.state()[0]
    for run, tensors in ((straight, a), (resumed, b)):  # the outer optimisers' momentum buffers, by name
        tensors.update({f"{name}.momentum.{i}": s["momentum_buffer"]
                        for name, opt in run.optimizers.items() for i, s in enumerate(opt.state.values())})
    assert sorted(a) == sorted(b)
    assert "img.momentum.0" in a, "the images' momentum buffer is part of the state"
    if case == "ftd":
        assert "method.ema" in a
    if case == "datm":
        assert "y.momentum.0" in a and straight.method.skipped == 1, "the first update skipped, the others not"
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert straight.method.metrics() == resumed.method.metrics() and resumed.iteration == 4
    for folder in ("synset", *(["synset_ema"] if case == "ftd" else [])):
        x, y = dd.load_synset(tmp_path / "a" / folder), dd.load_synset(tmp_path / "b" / folder)
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels) and x.lr == y.lr


# -- dd.eval --------------------------------------------------------------------------------------------
def write_set(folder, lr: float):
    """Two real digits per class (the 3rd and 4th) as an MTT set with learned lr ``lr``."""
    raw = load_dataset("digits")
    pre = Preprocessor.fit("standard", raw.spec, raw.train_images)
    tensors, meta = pre.state()
    idx = torch.cat([torch.nonzero(raw.train_labels == c)[2:4, 0] for c in range(10)])
    synset = dd.SynSet(pre(raw.train_images[idx]), raw.train_labels[idx], lr,
                       {"dataset": "digits", "ipc": 2, "method": "mtt", "preprocess_meta": meta}, tensors)
    return dd.save_synset(folder, synset)


def test_eval_trains_the_protocol_written_out_on_the_set_and_scores_the_test_split(tmp_path, monkeypatch):
    """dd.eval's networks end with the weights of MTT's evaluate_synset written out (the set's learned lr, seed
    seed + r, --epochs E run as E + 1 with the decay after E // 2 + 1), and each record's accuracy is theirs on
    the test split."""
    folder = write_set(tmp_path / "set", lr=0.037)
    trained: list[torch.Tensor] = []
    score = PeriodicTests.score

    def recording(self, model):
        trained.append(flatten_params(model).detach().clone())
        return score(self, model)

    monkeypatch.setattr(PeriodicTests, "score", recording)
    evaluate(EvalConfig(synset=str(folder), models="MLP", runs=2, seed=4, epochs=4, batch_size=8, dsa_strategy="none",
                        device="cpu", out=str(tmp_path / "ev")))
    synset = dd.load_synset(folder)
    test = prepare_data("digits", torch.device("cpu"), val_fraction=0.1, val_seed=0).test
    runs = eval_cli_runs(tmp_path / "ev")
    assert [r["seed"] for r in runs] == [4, 5] and len(trained) == 2
    for run, weights in zip(runs, trained, strict=True):
        net = reference_evaluate_synset(synset.images, synset.labels, 0.037, 4, 8, seed=run["seed"])
        assert torch.equal(weights, flatten_params(net)), f"seed {run['seed']}"
        net.eval()
        with torch.no_grad():
            accuracy = int((net(test[0]).argmax(1) == test[1]).sum()) / len(test[1])
        assert run["split"] == "test" and run["accuracy"] == pytest.approx(accuracy, abs=1e-9)


def eval_cli_runs(folder):
    return json.loads((folder / "results.json").read_text())["runs"]


@pytest.mark.parametrize("split", ["test", "val"])
def test_baselines_train_on_sets_of_their_size(tmp_path, monkeypatch, split):
    """random: ipc real training images of every class (never validation or test images), a new draw per seed;
    full: the whole training split, less the validation images when those are the ones scored."""
    seen: list[SimpleNamespace] = []
    train_and_score = eval_jobs.train_and_score_seeds

    def recording(model, channels, classes, size, train, tested, lr, protocol, seeds, **options):
        seen.append(SimpleNamespace(train=train, tested=tested, lr=lr, seeds=list(seeds)))
        return train_and_score(model, channels, classes, size, train, tested, lr, protocol, seeds, **options)

    monkeypatch.setattr(eval_jobs, "train_and_score_seeds", recording)
    evaluate(EvalConfig(baseline="random,full", ipc=3, models="MLP", runs=2, epochs=1, split=split, baseline_lr=0.02,
                        dsa_strategy="none", device="cpu", out=str(tmp_path / "ev")))
    data = prepare_data("digits", torch.device("cpu"), val_fraction=0.1, val_seed=0)
    records = eval_cli_runs(tmp_path / "ev")
    assert sorted((r["source"], r["seed"], r["ipc"]) for r in records) == [
        ("full", 0, None), ("full", 1, None), ("random", 0, 3), ("random", 1, 3)]
    random = [s for s in seen if s.train[0].shape[0] < 100]
    full = [s for s in seen if s.train[0].shape[0] >= 100]
    assert len(random) == 2 and len(full) == 2 and all(s.lr == 0.02 for s in seen)
    for s in random:
        images, labels = s.train
        assert torch.bincount(labels, minlength=10).tolist() == [3] * 10
        rows = (images.flatten(1)[:, None] == data.train_images.flatten(1)[None]).all(2)
        assert (rows.sum(1) == 1).all(), "each image is one image of the training part"
        assert torch.equal(data.train_labels[rows.float().argmax(1)], labels), "with its own label"
    assert not torch.equal(random[0].train[0], random[1].train[0]), "each seed draws its own images"
    expected = data.train if split == "val" else data.train_and_val
    for s in full:
        assert s.train[0].shape[0] == expected[0].shape[0] and torch.equal(s.train[1], expected[1])
    assert all(torch.equal(s.tested[1], data.split(split)[1]) for s in seen)
