"""The differentiable inner loop: its values equal a hand-written training loop, and its gradient
with respect to the images and the lr matches central finite differences in float64."""

import copy

import torch

from dd.augment import DSA
from dd.device import make_generator
from dd.distill.methods.base import normalized_distance
from dd.distill.unroll import full_unroll, make_plan
from dd.functional import flatten_params, load_flat_
from dd.training import classification_loss
from tests.helpers import assert_matches_finite_differences, tiny_problem


def test_plan_covers_the_set_in_chunks():
    plan = make_plan(10, 4, 6, make_generator(0))
    assert [len(i) for i in plan.indices] == [4, 4, 2, 4, 4, 2]
    assert sorted(torch.cat(plan.indices[:3]).tolist()) == list(range(10))
    assert plan.seeds == make_plan(10, 4, 6, make_generator(0)).seeds


def test_full_unroll_equals_hand_written_loop():
    model, student, images, labels, w0, _, plan = tiny_problem(strategy="color_scale")
    lr = torch.tensor(0.05, dtype=torch.float64)
    (w_final,) = full_unroll(student, w0, images, labels, lr, plan, [5])

    net = copy.deepcopy(model)
    load_flat_(net, w0)
    augment = DSA("color_scale")
    for index, seed in zip(plan.indices, plan.seeds, strict=True):
        x = augment(images[index], make_generator(seed))
        net.zero_grad()
        classification_loss(net(x), labels[index]).backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= 0.05 * p.grad
    assert torch.allclose(w_final, flatten_params(net), atol=1e-12)


def test_gradient_matches_finite_differences():
    _, student, images, labels, w0, target, plan = tiny_problem()
    images = images.clone().requires_grad_(True)
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)

    def loss_of(imgs, rate):
        (w_final,) = full_unroll(student, w0, imgs, labels, rate, plan, [5])
        return normalized_distance(w_final, w0, target)

    assert_matches_finite_differences(loss_of, images, lr)


def test_normalized_distance_by_hand():
    start, target = torch.tensor([0.0, 0.0]), torch.tensor([3.0, 4.0])
    assert normalized_distance(torch.tensor([3.0, 0.0]), start, target) == 16 / 25
    assert normalized_distance(start, start, target) == 1.0
