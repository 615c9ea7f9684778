"""TESLA (Cui et al. 2023): the first-order unroll's gradient against a hand-written reference and the exact
gradient, its memory against syn_steps, and the method's fixed expert soft labels, end to end and resumed."""

import pytest
import torch

import dd
from dd.augment import DSA
from dd.buffer.store import TrajectoryStore
from dd.device import make_generator
from dd.distill.__main__ import main as distill_main
from dd.distill.config import TESLAConfig
from dd.distill.engine import Distiller
from dd.distill.methods.ast import MomentumStudent
from dd.distill.methods.base import normalized_distance
from dd.distill.methods.tesla import label_epoch
from dd.distill.unroll import first_order, full_unroll, make_plan, make_unroll, tesla_unroll
from dd.errors import DDError
from dd.functional import functional_forward, load_flat_
from dd.models import create_model
from dd.training import classification_loss
from tests.helpers import as_flags, flags, run_distill, tiny_mtt, tiny_problem

LR = 0.05


def image_and_lr_grads(unroll, student, w0, images, labels, plan, capture, loss_of):
    """d loss_of(captured) / d(images, lr) through ``unroll``, and the captured values."""
    x = images.clone().requires_grad_(True)
    lr = torch.tensor(LR, dtype=images.dtype, requires_grad=True)
    captured = unroll(student, w0, x, labels, lr, plan, capture)
    loss_of(captured).backward()
    return x.grad, lr.grad, [w.detach() for w in captured]


def first_order_reference(model, images, labels, w0, plan, capture, loss_of, strategy):
    """The first-order gradient by hand: plain SGD steps w_{i+1} = w_i - lr g_i, then with v_i = dL/dw at the
    captured steps c >= i (summed), dL/dx = sum_i d(-lr v_i . g_i(w_i fixed, x))/dx, dL/dlr = sum_i -v_i . g_i."""
    augment = DSA(strategy)
    x = images.clone().requires_grad_(True)
    ws = [w0.clone()]  # ws[c]: the parameters after c steps, no graph kept
    for index, seed in zip(plan.indices, plan.seeds, strict=True):
        wi = ws[-1].clone().requires_grad_(True)
        loss = classification_loss(functional_forward(model, wi, augment(images[index], make_generator(seed))),
                                   labels[index])
        ws.append(ws[-1] - LR * torch.autograd.grad(loss, wi)[0])
    captured = [ws[c].clone().requires_grad_(True) for c in capture]
    adjoints = torch.autograd.grad(loss_of(captured), captured)
    image_grad, lr_grad = torch.zeros_like(images), torch.zeros((), dtype=images.dtype)
    for step, (wi, index, seed) in enumerate(zip(ws[:-1], plan.indices, plan.seeds, strict=True), start=1):
        v = sum(a for c, a in zip(capture, adjoints, strict=True) if c >= step)
        wi = wi.clone().requires_grad_(True)
        loss = classification_loss(functional_forward(model, wi, augment(x[index], make_generator(seed))),
                                   labels[index])
        (g,) = torch.autograd.grad(loss, wi, create_graph=True)
        image_grad += torch.autograd.grad(-LR * (v * g).sum(), x)[0]
        lr_grad += -(v * g.detach()).sum()
    return image_grad, lr_grad


@pytest.mark.parametrize("capture", [[5], [2, 5]])
def test_tesla_gradient_equals_the_first_order_reference_by_hand(capture):
    model, student, images, labels, w0, target, plan = tiny_problem(strategy="color_scale")

    def loss_of(captured):  # one term per captured step, as AST's intermediate matching
        return sum(normalized_distance(w, w0, target * (1 + 0.1 * k)) for k, w in enumerate(captured))

    x_grad, lr_grad, _ = image_and_lr_grads(tesla_unroll, student, w0, images, labels, plan, capture, loss_of)
    ref_x, ref_lr = first_order_reference(model, images, labels, w0, plan, capture, loss_of, "color_scale")
    assert torch.allclose(x_grad, ref_x, rtol=1e-10, atol=1e-14)
    assert torch.allclose(lr_grad, ref_lr, rtol=1e-10)
    exact_x, _, _ = image_and_lr_grads(full_unroll, student, w0, images, labels, plan, capture, loss_of)
    assert not torch.allclose(x_grad, exact_x, rtol=1e-3), "over 5 steps the approximation differs from the exact"


def test_tesla_equals_the_exact_gradient_for_one_step():
    _, student, images, labels, w0, target, _ = tiny_problem(strategy="color_scale")
    plan = make_plan(6, 4, 1, make_generator(3))

    def loss_of(captured):
        return normalized_distance(captured[-1], w0, target)

    tesla = image_and_lr_grads(tesla_unroll, student, w0, images, labels, plan, [1], loss_of)
    exact = image_and_lr_grads(full_unroll, student, w0, images, labels, plan, [1], loss_of)
    assert torch.allclose(tesla[0], exact[0], rtol=1e-12, atol=1e-16) and tesla[0].abs().sum() > 0
    assert torch.allclose(tesla[1], exact[1], rtol=1e-12)
    assert torch.allclose(tesla[2][0], exact[2][0], rtol=0, atol=1e-14)


def test_tesla_values_equal_the_full_unroll():
    _, student, images, labels, w0, target, plan = tiny_problem(strategy="color_scale")
    lr = torch.tensor(LR, dtype=torch.float64)
    assert torch.allclose(tesla_unroll(student, w0, images, labels, lr, plan, [3, 5])[1],
                          full_unroll(student, w0, images, labels, lr, plan, [5])[0], rtol=0, atol=1e-14)


class Held:
    """A saved-for-backward tensor held by the autograd graph; counts how many are alive at once."""

    live = peak = 0

    def __init__(self, tensor):
        self.tensor = tensor
        Held.live += 1
        Held.peak = max(Held.peak, Held.live)

    def __del__(self):
        Held.live -= 1


def peak_saved_tensors(unroll, steps):
    """The most tensors saved for backward alive at once over the unroll and its backward pass, and the
    parameter-sized tensors the unroll's own graph node keeps besides them (per-step states)."""
    _, student, images, labels, w0, target, _ = tiny_problem(strategy="color_scale")
    plan = make_plan(6, 4, steps, make_generator(3))
    x = images.clone().requires_grad_(True)
    lr = torch.tensor(LR, dtype=torch.float64, requires_grad=True)
    Held.live = Held.peak = 0
    with torch.autograd.graph.saved_tensors_hooks(Held, lambda held: held.tensor):
        (w,) = unroll(student, w0, x, labels, lr, plan, [steps])
        kept = [t for value in getattr(w.grad_fn, "__dict__", {}).values()
                for t in (value.values() if isinstance(value, dict) else [value]) for t in
                (t if isinstance(t, tuple) else (t,)) if isinstance(t, torch.Tensor) and t.numel() == w0.numel()]
        normalized_distance(w, w0, target).backward()
    assert Held.live == 0
    return Held.peak, len(kept)


def test_tesla_memory_does_not_grow_with_syn_steps():
    assert peak_saved_tensors(tesla_unroll, 2) == peak_saved_tensors(tesla_unroll, 12)
    assert peak_saved_tensors(tesla_unroll, 12)[1] == 0, "no per-step state besides the saved inputs"
    short, long = peak_saved_tensors(full_unroll, 2)[0], peak_saved_tensors(full_unroll, 12)[0]
    assert long > 4 * short, "the count sees the full unroll's growth"
    checkpointed = make_unroll("checkpointed")
    assert peak_saved_tensors(checkpointed, 12)[1] > peak_saved_tensors(checkpointed, 2)[1], "it sees kept states"


def test_momentum_students_get_the_first_order_gradient_too():
    model, _, images, labels, w0, target, plan = tiny_problem(strategy="color_scale")
    student = MomentumStudent(model, DSA("color_scale"), classification_loss, 0.9)

    def loss_of(captured):
        return normalized_distance(captured[-1], w0, target)

    tesla = image_and_lr_grads(tesla_unroll, student, w0, images, labels, plan, [5], loss_of)
    reference = image_and_lr_grads(full_unroll, first_order(student), w0, images, labels, plan, [5], loss_of)
    exact = image_and_lr_grads(full_unroll, student, w0, images, labels, plan, [5], loss_of)
    assert torch.allclose(tesla[0], reference[0], rtol=1e-10, atol=1e-14)
    assert torch.allclose(tesla[1], reference[1], rtol=1e-10)
    assert not torch.allclose(tesla[0], exact[0], rtol=1e-3)


def test_make_unroll_offers_tesla_and_refuses_a_snapshot_stride():
    assert make_unroll("tesla") is tesla_unroll
    with pytest.raises(DDError, match="only applies to --unroll checkpointed, not 'tesla'"):
        make_unroll("tesla", 4)


# -- the method --------------------------------------------------------------------------------------------
TESLA_SETTINGS = {"method": "tesla", "unroll": "tesla"}


def tesla_config(buffer_root, run_dir, **extra) -> TESLAConfig:
    values = dict(method="tesla", unroll="tesla", buffer_dir=str(buffer_root), run_dir=str(run_dir), syn_steps=5,
                  expert_epochs=2, max_start_epoch=2, lr_img=100.0, device="cpu")
    return TESLAConfig(**{**values, **extra})


def expert_logits_at(buffer_root, epoch, images):
    (root,) = buffer_root.glob("digits/ConvNet/*")
    store = TrajectoryStore.open(root)
    net = create_model("ConvNet", 1, 10, (8, 8), seed=0).eval()
    load_flat_(net, store.read_expert(store.completed()[0])[epoch])
    with torch.no_grad():
        return net(images)


@pytest.mark.e2e
def test_soft_labels_come_from_the_expert_and_are_not_learned(tmp_path, digits_buffer):
    distiller = Distiller(tesla_config(digits_buffer, tmp_path / "r", label_temperature=2.0))
    assert label_epoch(2, 2) == 3
    expected = expert_logits_at(digits_buffer, 3, distiller.images.detach()) / 2.0
    assert torch.allclose(distiller.labels, expected, atol=1e-5) and distiller.labels.shape == (10, 10)
    assert not distiller.labels.requires_grad and "y" not in distiller.optimizers
    labels, images = distiller.labels.clone(), distiller.images.detach().clone()
    distiller.step()
    assert torch.equal(distiller.labels, labels), "the labels stay as assigned"
    assert not torch.equal(distiller.images.detach(), images), "while the images are learned"
    assert distiller.method.protocol == "mtt"


@pytest.mark.e2e
def test_a_bad_label_temperature_is_refused(tmp_path, digits_buffer):
    with pytest.raises(DDError, match="--label-temperature must be positive, got 0"):
        distill_main([*flags(digits_buffer, tmp_path / "r"), *as_flags(TESLA_SETTINGS), "--label-temperature", "0"])


@pytest.mark.e2e
def test_resumed_tesla_equals_uninterrupted(tmp_path, digits_buffer):
    full, split = tmp_path / "full", tmp_path / "split"
    run_distill(**tiny_mtt(digits_buffer, full, **TESLA_SETTINGS))
    run_distill(**tiny_mtt(digits_buffer, split, **TESLA_SETTINGS, iterations=2))
    run_distill(**tiny_mtt(digits_buffer, split, **TESLA_SETTINGS, resume=True))
    a, b = dd.load_synset(full / "synset"), dd.load_synset(split / "synset")
    assert a.meta["method"] == "tesla" and a.labels.shape == (10, 10) and a.labels.is_floating_point()
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.lr == b.lr
