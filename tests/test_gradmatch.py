"""DC and DSA (dd.distill.gradmatch), the siamese augmentation and the run loop of DC/DSA/DM: the DC code's
layer-wise distance on a hand case, one iteration against a hand-written reference (loss and updated images,
network update between rounds included), siamese DSA parameters, resume equal to an uninterrupted run, and
bad input as one error line."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from dd.augment import DSA
from dd.distill import condense, runloop
from dd.distill.__main__ import main as distill_main
from dd.distill.checkpoint import save_checkpoint
from dd.distill.condense import siamese
from dd.distill.gradmatch import LOOPS, DCConfig, GradMatch, layer_distance, loops
from dd.distill.registry import get_method
from dd.distill.synset import load_synset
from dd.models import create_model
from dd.training import train_epoch
from tests.helpers import as_flags, one_error_line, run_distill

TINY = {"model": "ConvNetW32", "eval_models": "ConvNetW32", "batch_real": 8, "eval_epochs": 2, "device": "cpu",
        "log_every": 1}
TINY_FLAGS = as_flags(TINY)


def test_layer_distance_is_the_sum_of_per_output_unit_cosine_distances():
    # conv gradient [out 2, in 1, 1, 2]: row 0 parallel (distance ~0), row 1 opposite (distance ~2)
    g_syn = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]])
    g_real = torch.tensor([[[[3.0, 0.0]]], [[[-2.0, -2.0]]]])
    expected = (1 - 3 / (3 + 1e-6)) + (1 + 4 / (2 ** 0.5 * 8 ** 0.5 + 1e-6))
    assert layer_distance(g_syn, g_real).item() == pytest.approx(expected, rel=1e-6)
    # linear [out 2, in 2]: rows as they are; orthogonal rows are 1 each
    assert layer_distance(torch.eye(2), torch.tensor([[0.0, 1.0], [1.0, 0.0]])).item() == pytest.approx(2.0)
    # a 3-d gradient [C, h, w] is one row per channel; a bias counts nothing
    assert layer_distance(torch.ones(3, 2, 2), -torch.ones(3, 2, 2)).item() == pytest.approx(6.0, rel=1e-5)
    assert layer_distance(torch.ones(4), -torch.ones(4)).item() == 0.0


def test_loop_counts_per_ipc_are_the_dc_codes():
    assert LOOPS == {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
    assert loops(DCConfig(ipc=10)) == (10, 50)
    assert loops(DCConfig(ipc=3, outer_loop=2, inner_loop=5)) == (2, 5)


def reference_distance(g_syn, g_real):
    """distance_wb written out row by row."""
    if g_real.dim() == 1:
        return 0.0
    total = 0.0
    for a, b in zip(g_syn.reshape(g_syn.shape[0], -1), g_real.reshape(g_real.shape[0], -1), strict=True):
        total = total + 1 - torch.dot(a, b) / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b) + 1e-6)
    return total


def test_one_dc_iteration_equals_a_hand_written_reference(tmp_path):
    """ipc 2, two rounds with one network epoch between them: the loss and the images after the iteration."""
    config = DCConfig(model="ConvNetW32", ipc=2, outer_loop=2, inner_loop=1, batch_real=8,
                             batch_train=8, lr_img=0.5, pix_init="real", device="cpu", run_dir=str(tmp_path))
    run = GradMatch(config)
    g = torch.Generator()
    g.set_state(run.generator.get_state())
    x = run.images.detach().clone()
    labels = run.labels
    seed = int(torch.randint(2**31 - 1, (1,), generator=g))
    model = create_model("ConvNetW32", 1, 10, (8, 8), seed=seed).train()

    def round_loss(images):
        params = dict(model.named_parameters())
        total = 0.0
        for c in range(10):
            pool = run.pools[c]
            real = run.data.train_images[pool[torch.randperm(len(pool), generator=g)[:8]]]
            syn = images[2 * c:2 * c + 2]

            def ce(p, batch, c=c):
                return F.cross_entropy(functional_call(model, p, (batch,)), torch.full((len(batch),), c))

            g_real = torch.autograd.grad(ce(params, real), list(params.values()))
            g_syn = torch.autograd.grad(ce(params, syn), list(params.values()), create_graph=True)
            total = total + sum(reference_distance(s, r) for s, r in zip(g_syn, g_real, strict=True))
        return total

    x1 = x.clone().requires_grad_(True)
    loss1 = round_loss(x1)
    (grad1,) = torch.autograd.grad(loss1, [x1])
    x1 = x - 0.5 * grad1  # SGD, momentum 0.5: the first step is plain
    train_epoch(model, x1, labels, torch.optim.SGD(model.parameters(), lr=0.01), 8, None, g)
    x2 = x1.clone().requires_grad_(True)
    loss2 = round_loss(x2)
    (grad2,) = torch.autograd.grad(loss2, [x2])
    x2 = x1 - 0.5 * (0.5 * grad1 + grad2)

    loss = run.step()
    assert loss.item() == pytest.approx((loss1.item() + loss2.item()) / 20, rel=1e-5)
    torch.testing.assert_close(run.images.detach(), x2, rtol=1e-5, atol=1e-6)
    assert not torch.equal(x2, x)


def test_siamese_dsa_draws_one_set_of_parameters_for_both_batches():
    dsa = DSA("color_crop_cutout_flip_scale_rotate")
    real, syn = torch.randn(5, 3, 8, 8), torch.randn(2, 3, 8, 8)
    syn[1] = real[3]  # the same image in both batches
    for seed in range(12):  # every op group comes up
        g = torch.Generator().manual_seed(seed)
        out_real, out_syn = siamese(dsa, [real, syn], g)

        def alone(image, seed=seed):  # one image augmented alone from the same generator state
            return dsa(image[None], torch.Generator().manual_seed(seed))[0]

        torch.testing.assert_close(out_real, torch.stack([alone(i) for i in real]))
        torch.testing.assert_close(out_syn, torch.stack([alone(i) for i in syn]))
        torch.testing.assert_close(out_syn[1], out_real[3])
        after = torch.Generator().manual_seed(seed)
        dsa(real[:1], after)  # the generator advanced by exactly one draw
        assert torch.equal(g.get_state(), after.get_state())
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    siamese(dsa, [x, x], torch.Generator().manual_seed(0))[1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["dsa", "dm"])
def test_resume_equals_an_uninterrupted_run(method, tmp_path, monkeypatch):
    common = ["--method", method, *TINY_FLAGS, "--iterations", "4", "--checkpoint-every", "2", "--eval-every", "0"]
    assert distill_main([*common, "--run-dir", str(tmp_path / "straight")]) == 0

    def save_then_die(*args):
        save_checkpoint(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(runloop, "save_checkpoint", save_then_die)  # killed after the checkpoint at iteration 2
    with pytest.raises(KeyboardInterrupt):
        distill_main([*common, "--run-dir", str(tmp_path / "resumed")])
    monkeypatch.setattr(runloop, "save_checkpoint", save_checkpoint)
    assert distill_main([*common, "--run-dir", str(tmp_path / "resumed"), "--resume"]) == 0
    straight, resumed = load_synset(tmp_path / "straight" / "synset"), load_synset(tmp_path / "resumed" / "synset")
    torch.testing.assert_close(resumed.images, straight.images, rtol=0, atol=0)
    assert straight.meta["iteration"] == 5 and straight.meta["method"] == method  # iterations + 1 updates
    assert straight.meta["protocol"] == method and straight.lr == pytest.approx(0.01)
    assert torch.equal(straight.labels, torch.arange(10))
    assert (tmp_path / "straight" / "synset_best").is_dir()


@pytest.mark.e2e
def test_bad_input_is_one_error_line(tmp_path, capsys):
    run = ["--run-dir", str(tmp_path / "r"), *TINY_FLAGS]
    cases = {
        ("--method", "dc", "--ipc", "3"): "--outer-loop and --inner-loop",
        ("--method", "dsa", "--outer-loop", "0"): "--outer-loop must be positive",
        ("--method", "dsa", "--dsa-strategy", "crop_blur"): "unknown DSA op 'blur'",
        ("--method", "dm", "--val-fraction", "0"): "--val-fraction must be in (0, 1)",
        ("--method", "dm", "--ipc", "500"): "lower --ipc",
        ("--method", "dm", "--pix-init", "kmeans"): "invalid choice",
        ("--method", "dm", "--outer-loop", "2"): "unrecognized arguments",
        ("--method", "dc", "--lr-img", "nan"): "--lr-img must be a finite number",
    }
    for extra, message in cases.items():
        line = one_error_line(capsys, distill_main, [*run, *extra])
        assert message in line, (extra, line)
    assert distill_main([*run, "--method", "dc", "--iterations", "1", "--eval-every", "0"]) == 0
    line = one_error_line(capsys, distill_main, [*run, "--method", "dc", "--iterations", "1", "--lr-img", "0.2",
                                                 "--resume"])
    assert "--lr-img 0.1 (checkpoint) vs 0.2 (now)" in line


@pytest.mark.e2e
def test_a_run_makes_iterations_plus_one_updates_and_evaluates_at_iterations(tmp_path, capsys):
    """The reference's range(Iteration + 1): updates 1..3 for --iterations 2; the evaluations at the multiples of
    eval_every and at iterations (the reference evaluates the set before that iteration's update), never after
    the extra one, whose set is the last one saved."""
    run = tmp_path / "run"
    run_distill(method="dc", **TINY, iterations=2, eval_every=1, run_dir=str(run))
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines if "loss" in r] == [1, 2, 3]
    assert [r["iteration"] for r in lines if "val/ConvNetW32" in r] == [1, 2]
    assert load_synset(run / "synset").meta["iteration"] == 3
    assert load_synset(run / "synset_best").meta["iteration"] in (1, 2)
    run_distill(method="dc", **TINY, iterations=2, eval_every=1, run_dir=str(run),
                resume=True)  # a finished run resumes to nothing more
    assert load_synset(run / "synset").meta["iteration"] == 3
    line = one_error_line(capsys, distill_main, ["--method", "dc", *TINY_FLAGS, "--iterations", "1", "--run-dir",
                                                 str(run), "--resume"])
    assert "holds iteration 3, past --iterations 1; pass --iterations 2 or more" in line


# method -> (protocol, epochs, augmentation) of the in-run evaluations by default (docs/reference-dc-dsa-dm.md)
IN_RUN = {"dc": ("dc", 300, "none"), "dsa": ("dsa", 1000, "crop_flip"), "dm": ("dm", 1000, "crop_flip")}


@pytest.mark.parametrize("method", sorted(IN_RUN))
def test_in_run_evaluations_train_under_the_methods_protocol(method, tmp_path, monkeypatch):
    name, epochs, augment = IN_RUN[method]
    spec = get_method(method)
    cls, config_cls = spec.run, spec.config
    config = config_cls(model="ConvNetW32", eval_models="ConvNetW32", dsa_strategy="crop_flip",
                        device="cpu", run_dir=str(tmp_path))
    run = cls(config)
    seen = []
    monkeypatch.setattr(condense, "train_and_test_seeds", lambda *a, **k: seen.append(a[7]) or [0.5])
    run.evaluate()
    (protocol,) = seen
    assert (protocol.name, protocol.epochs, protocol.dsa_strategy) == (name, epochs, augment)
    assert protocol.augmentation() is None or protocol.augmentation().params.align_corners is False
    assert run.synset().meta["protocol"] == name
    run.config.eval_epochs, run.config.eval_batch_size = 7, 16  # the run holds its config (device resolved)
    assert (run.protocol("ConvNetW32").epochs, run.protocol("ConvNetW32").batch_size) == (7, 16)
    run.config.eval_epochs = None  # the model ConvNetBN: the DC code's crop_noise for protocol dc only
    bn = run.protocol("ConvNetBN")
    assert (bn.dc_augment, bn.epochs) == (("crop_noise", 1000) if name == "dc" else ("", epochs))
