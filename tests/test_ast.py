"""AST (Shen et al. 2023): the balanced weight table, the intermediate-matching steps and loss, the conv
weight perturbation, the heavy-ball student (values and gradients), the k-means initialisation, and a
run end to end on digits with every option on."""

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import dd
from dd.augment import DSA
from dd.config import load_yaml, make_config
from dd.device import make_generator
from dd.distill.__main__ import main as distill_main
from dd.distill.config import ASTConfig
from dd.distill.engine import Distiller
from dd.distill.methods.ast import (
    AST,
    MomentumStudent,
    balanced_weight,
    middle_matching_loss,
    middle_steps,
    nearest_unique,
    perturb_conv_weights,
)
from dd.distill.methods.base import normalized_distance
from dd.distill.unroll import full_unroll
from dd.errors import DDError
from dd.functional import flatten_params, load_flat_, param_spec
from dd.models import create_model
from dd.training import classification_loss
from tests.helpers import assert_matches_finite_differences, flags, run_distill, tiny_mtt, tiny_problem

ALL_OPTIONS = {"method": "ast", "pix_init": "kmeans", "middle_loss": "adaptive", "balance_loss": True,
               "weight_perturb": True, "inner_momentum": 0.9, "lr_teacher": 0.003}


# -- balanced inner-loss weight w(s) ------------------------------------------------------------------
@pytest.mark.parametrize("start, expected", [(0, 0.557), (9, 0.732), (10, 1.292), (19, 1.760)])
def test_balanced_weight_table(start, expected):
    assert round(balanced_weight(start, 20), 3) == expected


def test_balanced_weight_by_hand():
    # M = 5, h = 2: s = 2 -> log_5(8); s = 1 -> 1 / log_5(9); s = 4 -> log_5(10)
    assert balanced_weight(2, 5) == pytest.approx(math.log(8) / math.log(5))
    assert balanced_weight(1, 5) == pytest.approx(math.log(5) / math.log(9))
    assert balanced_weight(4, 5) == pytest.approx(math.log(10) / math.log(5))


def ast_method(**config) -> AST:
    model = create_model("ConvNet", 1, 10, (8, 8), seed=0, width=8, depth=1)
    return AST(SimpleNamespace(config=ASTConfig(**config), model=model))


def test_balanced_loss_scales_the_inner_loss_of_the_iteration():
    method = ast_method(balance_loss=True, max_start_epoch=20)
    logits, labels = torch.randn(4, 10, generator=make_generator(0)), torch.tensor([0, 1, 2, 3])
    for seed in range(3):
        start = method.start_epoch(0, make_generator(seed))
        expected = balanced_weight(start, 20) * classification_loss(logits, labels)
        assert torch.allclose(method.inner_loss(logits, labels, start), expected)
        student = method.make_student(method.ctx.model, DSA("none"), start)
        assert torch.allclose(student.loss_fn(logits, labels), expected), "the iteration's student uses w(s)"
    plain = ast_method(balance_loss=False, max_start_epoch=20)
    start = plain.start_epoch(0, make_generator(0))
    assert torch.equal(plain.inner_loss(logits, labels, start), classification_loss(logits, labels))


# -- intermediate matching -----------------------------------------------------------------------------
def test_middle_steps():
    assert middle_steps(20, 2) == [10]
    assert middle_steps(20, 3) == [6, 12]
    assert middle_steps(20, 1) == []
    assert ast_method(middle_loss="agg", syn_steps=20, expert_epochs=3).capture_steps() == [6, 12, 20]
    assert ast_method(middle_loss="none", syn_steps=20, expert_epochs=3).capture_steps() == [20]


def test_middle_matching_loss_by_hand():
    # E = 3, s = 1, perturbed start w~ = (0, 1); targets w*_2 = (1, 0), w*_3 = (2, 0), w*_4 = (3, 0).
    trajectory = torch.tensor([[9.0, 9.0], [0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    w_start = torch.tensor([0.0, 1.0])
    captured = [torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0]), torch.tensor([3.0, 3.0])]
    # L_1 = 1 / 2, L_2 = 4 / 5, L_0 = 9 / 10
    agg = middle_matching_loss(captured, w_start, trajectory, 1, 3, "agg")
    adaptive = middle_matching_loss(captured, w_start, trajectory, 1, 3, "adaptive")
    none = middle_matching_loss(captured[-1:], w_start, trajectory, 1, 3, "none")
    assert agg.item() == pytest.approx(0.9 + 0.5 + 0.8)
    assert adaptive.item() == pytest.approx(0.9 + 0.5 / 3 + 0.8 * 2 / 3)
    assert none.item() == pytest.approx(0.9)


# -- weight perturbation -------------------------------------------------------------------------------
def test_weight_perturbation_changes_only_conv_weights_by_a_unit_relative_direction():
    model = create_model("ConvNet", 1, 10, (8, 8), seed=0, width=8, depth=1)
    spec = param_spec(model)
    w = flatten_params(model)
    perturbed = perturb_conv_weights(w, spec, make_generator(5))
    assert not torch.equal(perturbed, w) and torch.equal(w, flatten_params(model)), "input must not change"
    replay = make_generator(5)
    offset, conv_seen = 0, 0
    for name, shape in zip(spec.names, spec.shapes, strict=True):
        n = torch.Size(shape).numel()
        old, new = w[offset:offset + n], perturbed[offset:offset + n]
        if len(shape) == 4:
            conv_seen += 1
            d = torch.randn(n, generator=replay)
            relative = (new - old) / old
            assert torch.allclose(relative, d / d.norm(), atol=1e-5), name
            assert relative.norm().item() == pytest.approx(1.0, abs=1e-4), name
        else:
            assert torch.equal(new, old), f"{name} ({shape}) must be untouched"
        offset += n
    assert conv_seen == 1


def test_ast_start_params_perturb_only_with_the_flag():
    trajectory = torch.stack([flatten_params(create_model("ConvNet", 1, 10, (8, 8), seed=s, width=8, depth=1))
                              for s in range(2)])
    on = ast_method(weight_perturb=True).start_params(trajectory, 1, make_generator(0))
    off = ast_method(weight_perturb=False).start_params(trajectory, 1, make_generator(0))
    assert torch.equal(off, trajectory[1]) and not torch.equal(on, trajectory[1])


# -- heavy-ball student --------------------------------------------------------------------------------
def test_momentum_student_equals_hand_written_heavy_ball():
    model, _, images, labels, w0, _, plan = tiny_problem(strategy="color_scale")
    student = MomentumStudent(model, DSA("color_scale"), classification_loss, momentum=0.9)
    lr = torch.tensor(0.05, dtype=torch.float64)
    w3, w5 = full_unroll(student, w0, images, labels, lr, plan, [3, 5])

    net = copy.deepcopy(model)
    load_flat_(net, w0)
    augment = DSA("color_scale")
    buffers = [torch.zeros_like(p) for p in net.parameters()]
    snapshots = []
    for index, seed in zip(plan.indices, plan.seeds, strict=True):
        x = augment(images[index], make_generator(seed))
        net.zero_grad()
        classification_loss(net(x), labels[index]).backward()
        with torch.no_grad():
            for p, b in zip(net.parameters(), buffers, strict=True):
                b.mul_(0.9).add_(p.grad)  # b_0 = g_0, b_t = 0.9 b_{t-1} + g_t
                p -= 0.05 * b
        snapshots.append(flatten_params(net))
    assert torch.allclose(w3, snapshots[2], atol=1e-12)
    assert torch.allclose(w5, snapshots[4], atol=1e-12)
    (plain,) = full_unroll(MomentumStudent(model, DSA("color_scale"), classification_loss, 0.0), w0, images,
                           labels, lr, plan, [5])
    assert not torch.allclose(plain, w5), "momentum must change the trajectory"


def test_momentum_student_gradient_matches_finite_differences():
    model, _, images, labels, w0, target, plan = tiny_problem()
    student = MomentumStudent(model, DSA("none"), classification_loss, momentum=0.9)
    images = images.clone().requires_grad_(True)
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)

    def loss_of(imgs, rate):
        w_mid, w_final = full_unroll(student, w0, imgs, labels, rate, plan, [2, 5])
        return normalized_distance(w_final, w0, target) + 0.5 * normalized_distance(w_mid, w0, target)

    assert_matches_finite_differences(loss_of, images, lr)


# -- k-means initialisation ----------------------------------------------------------------------------
def test_nearest_unique_takes_the_next_nearest_when_centres_share_one():
    features = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    centers = torch.tensor([[0.9], [1.2], [9.0]])
    assert nearest_unique(centers, features).tolist() == [1, 0, 3]
    assert nearest_unique(torch.tensor([[1.0], [1.0], [1.0]]), features).tolist() == [1, 0, 2]


@pytest.mark.e2e
@pytest.mark.parametrize("ipc", [1, 10])
def test_kmeans_init_picks_distinct_real_images_of_each_class(digits_buffer, tmp_path, ipc):
    config = make_config(ASTConfig, { "pix_init": "kmeans", "ipc": ipc, "device": "cpu",
                                         "buffer_dir": str(digits_buffer), "run_dir": str(tmp_path / "r"),
                                         "expert_epochs": 2, "max_start_epoch": 2})
    distiller = Distiller(config)
    data = distiller.ctx.data
    images, labels = distiller.images.detach(), distiller.labels
    assert images.shape == (10 * ipc, 1, 8, 8)
    matches = (images.flatten(1)[:, None, :] == data.train_images.flatten(1)[None]).all(-1)  # [K*ipc, n_train]
    picked = matches.float().argmax(1)
    assert matches.any(1).all(), "every image must be a real training image"
    assert len(set(picked.tolist())) == 10 * ipc, "no duplicates"
    assert torch.equal(data.train_labels[picked], labels), "each image must come from its own class"
    if ipc == 1:  # k-means with one cluster: the centroid is the class mean of the expert logits
        from dd.distill.expert_labels import complete_experts, expert_logits

        first = complete_experts(distiller.ctx)[0]
        logits = expert_logits(distiller.ctx, data.train_images, first).cpu().double()
        for c in range(10):
            members = (data.train_labels == c).nonzero().flatten()
            nearest = members[(logits[members] - logits[members].mean(0)).norm(dim=1).argmin()]
            assert picked[c] == nearest, c


# -- end to end ----------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_ast_runs_end_to_end_with_every_option(tmp_path, digits_buffer):
    run = tmp_path / "run"
    run_distill(**tiny_mtt(digits_buffer, run, **ALL_OPTIONS, ipc=2))
    synset = dd.load_synset(run / "synset")
    assert synset.images.shape == (20, 1, 8, 8)
    assert synset.meta["method"] == "ast" and synset.meta["iteration"] == 4
    assert synset.lr != 0.003, "the learnable lr must move"
    losses = [json.loads(line).get("loss") for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [v for v in losses if v is not None]
    assert len(losses) == 4 and all(v > 0 for v in losses)


@pytest.mark.e2e
def test_ast_resume_equals_uninterrupted(tmp_path, digits_buffer):
    full, split = tmp_path / "full", tmp_path / "split"
    run_distill(**tiny_mtt(digits_buffer, full, **ALL_OPTIONS))
    run_distill(**tiny_mtt(digits_buffer, split, **ALL_OPTIONS, iterations=2))
    run_distill(**tiny_mtt(digits_buffer, split, **ALL_OPTIONS, resume=True))
    a, b = dd.load_synset(full / "synset"), dd.load_synset(split / "synset")
    assert torch.equal(a.images, b.images) and a.lr == b.lr


@pytest.mark.e2e
@pytest.mark.parametrize("extra, message", [
    (["--middle-loss", "agg", "--syn-steps", "1"], "--middle-loss needs --syn-steps >= --expert-epochs"),
    (["--inner-momentum", "1.0"], "--inner-momentum must be in"),
])
def test_bad_ast_inputs(tmp_path, digits_buffer, extra, message):
    with pytest.raises(DDError, match=message):
        distill_main([*flags(digits_buffer, tmp_path / "r"), "--method", "ast", *extra])


def test_presets_are_valid_ast_configs():
    presets = sorted(Path(__file__).parents[1].joinpath("experiments", "ast").glob("*.yaml"))
    assert {p.stem for p in presets} >= {"cifar100_ipc1", "cifar100_ipc10", "cifar10_ipc10", "cifar100_ipc50",
                                         "tiny_ipc1", "digits_ipc1", "digits_ipc10"}
    for path in presets:
        config = make_config(ASTConfig, load_yaml(path), str(path))
        assert config.method == "ast" and config.buffer_config and "_ast" in config.buffer_config, path
