"""The checkpointed unroll: its values and its gradient w.r.t. images, labels and lr equal the full
unroll's in float64 for MTT (hard labels), DATM (learnable soft labels) and AST (momentum, a weighted
inner loss, several capture steps, a perturbed start), with any snapshot stride; BatchNorm statistics
end as the full unroll leaves them; a Distiller run gives the same images with either unroll."""

import pytest
import torch

from dd.augment import DSA
from dd.config import make_config
from dd.device import make_generator
from dd.distill.config import MTTConfig
from dd.distill.engine import Distiller, check_split
from dd.distill.methods.ast import MomentumStudent, middle_matching_loss, perturb_conv_weights
from dd.distill.methods.base import normalized_distance
from dd.distill.registry import get_method
from dd.distill.unroll import UNROLLS, Student, checkpointed_unroll, full_unroll, make_plan, make_unroll
from dd.errors import DDError
from dd.functional import flatten_params, param_spec
from dd.models import create_model
from dd.training import classification_loss
from tests.helpers import tiny_problem

STEPS = 5


def gradients(unroll, student, w0, images, labels, lr, plan, capture, loss_of):
    """(captured values, d loss / d (images, labels, lr)) of ``unroll``, labels' entry None when fixed."""
    images = images.detach().clone().requires_grad_(True)
    labels = labels.detach().clone().requires_grad_(labels.is_floating_point())
    lr = lr.detach().clone().requires_grad_(True)
    captured = unroll(student, w0, images, labels, lr, plan, capture)
    loss_of(captured).backward()
    return [w.detach() for w in captured], [images.grad, labels.grad, lr.grad]


def assert_same_as_full(student, w0, images, labels, plan, capture, loss_of, strides=(1, 2, 3, STEPS + 1), chunk=None):
    lr = torch.tensor(0.05, dtype=torch.float64)
    values, grads = gradients(full_unroll, student, w0, images, labels, lr, plan, capture, loss_of)
    assert grads[0].abs().sum() > 0 and grads[2] != 0
    for k in strides:
        unroll = make_unroll("checkpointed", k, chunk)
        got_values, got_grads = gradients(unroll, student, w0, images, labels, lr, plan, capture, loss_of)
        for want, got in zip(values, got_values, strict=True):
            assert torch.allclose(got, want, rtol=1e-12, atol=1e-15), k
        for want, got in zip(grads, got_grads, strict=True):
            if want is None:
                assert got is None
            else:
                assert torch.allclose(got, want, rtol=1e-10, atol=1e-14), k


def test_mtt_hard_labels():
    _, student, images, labels, w0, target, plan = tiny_problem(strategy="color_crop_flip_scale_rotate")
    assert_same_as_full(student, w0, images, labels, plan, [STEPS],
                        lambda captured: normalized_distance(captured[-1], w0, target))


def test_datm_soft_labels_get_their_gradient():
    _, student, images, _, w0, target, plan = tiny_problem(strategy="color_cutout")
    soft = torch.randn(6, 3, generator=make_generator(4), dtype=torch.float64)
    lr = torch.tensor(0.05, dtype=torch.float64)
    _, (_, label_grad, _) = gradients(full_unroll, student, w0, images, soft, lr, plan, [STEPS],
                                      lambda c: normalized_distance(c[-1], w0, target))
    assert label_grad.abs().sum() > 0
    assert_same_as_full(student, w0, images, soft, plan, [STEPS],
                        lambda captured: normalized_distance(captured[-1], w0, target))


def test_ast_momentum_weighted_loss_intermediate_matching_and_perturbed_start():
    model, _, images, labels, w0, _, plan = tiny_problem(strategy="color_scale")
    student = MomentumStudent(model, DSA("color_scale"), lambda logits, y: 1.3 * classification_loss(logits, y), 0.9)
    w_start = perturb_conv_weights(w0, param_spec(model), make_generator(7))
    g = make_generator(8)
    trajectory = torch.stack([w0 + 0.05 * s * torch.randn(w0.shape, generator=g, dtype=w0.dtype) for s in range(4)])

    def loss_of(captured):  # E = 3 expert epochs from s = 0, captured after steps 1, 2 and 5
        return middle_matching_loss(captured, w_start, trajectory, 0, 3, "adaptive")

    assert_same_as_full(student, w_start, images, labels, plan, [1, 2, STEPS], loss_of)


def test_capture_before_the_last_step_and_unused_outputs():
    _, student, images, labels, w0, target, plan = tiny_problem()
    assert_same_as_full(student, w0, images, labels, plan, [2, 4],
                        lambda captured: normalized_distance(captured[0], w0, target), strides=(1, 3))


@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("momentum, soft", [(None, False), (0.9, True)], ids=["mtt", "ast-soft-labels"])
def test_chunked_steps_hold_chunk_images_and_give_the_same_gradient(chunk, momentum, soft):
    """--unroll-chunk: the model never sees more than ``chunk`` images at once, in the forward replays as in the
    backward's graphs (minibatches of 4 and 2), and the values and gradients are the full unroll's."""
    model, _, images, labels, w0, target, plan = tiny_problem(strategy="color_crop_flip_scale_rotate")
    augment = DSA("color_crop_flip_scale_rotate")
    weighted = lambda logits, y: 1.3 * classification_loss(logits, y)  # noqa: E731
    student = Student(model, augment) if momentum is None else MomentumStudent(model, augment, weighted, momentum)
    if soft:
        labels = torch.randn(6, 3, generator=make_generator(4), dtype=torch.float64)
    sizes = []
    hook = model.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    lr = torch.tensor(0.05, dtype=torch.float64)
    gradients(make_unroll("checkpointed", 2, chunk), student, w0, images, labels, lr, plan, [STEPS],
              lambda c: normalized_distance(c[-1], w0, target))
    hook.remove()
    assert max(sizes) == chunk and sum(sizes) > 2 * sum(len(i) for i in plan.indices)
    assert_same_as_full(student, w0, images, labels, plan, [2, STEPS],
                        lambda c: normalized_distance(c[-1], w0, target) + normalized_distance(c[0], w0, target),
                        strides=(1, 2), chunk=chunk)


def test_batchnorm_statistics_end_as_after_the_full_unroll():
    model = create_model("ConvNetBN", 1, 3, (4, 4), seed=0, width=2, depth=1).to(torch.float64)
    _, _, images, labels, _, _, plan = tiny_problem()
    w0 = flatten_params(model)
    lr = torch.tensor(0.05, dtype=torch.float64)
    stats = []
    for unroll in (full_unroll, checkpointed_unroll):
        for buffer in model.buffers():
            buffer.zero_() if buffer.dtype == torch.long else buffer.fill_(0.5)
        x = images.clone().requires_grad_(True)
        (w,) = unroll(Student(model, DSA("none")), w0, x, labels, lr, plan, [STEPS])
        w.pow(2).sum().backward()
        stats.append([b.clone() for b in model.buffers()])
    assert stats[0][2] == STEPS  # num_batches_tracked: one update per forward step, none from the replays
    for full, checkpointed in zip(*stats, strict=True):
        assert torch.equal(full, checkpointed)


def test_make_unroll_rejects_bad_settings():
    assert make_unroll("full") is full_unroll
    with pytest.raises(DDError, match="unknown unroll 'nope'"):
        make_unroll("nope")
    with pytest.raises(DDError, match="must be positive"):
        make_unroll("checkpointed", 0)
    with pytest.raises(DDError, match="only applies to --unroll checkpointed"):
        make_unroll("full", 2)
    with pytest.raises(DDError, match="--unroll-chunk must be positive"):
        make_unroll("checkpointed", 1, 0)
    with pytest.raises(DDError, match="--unroll-chunk only applies to --unroll checkpointed"):
        make_unroll("full", 1, 2)
    assert MTTConfig.__dataclass_fields__["unroll"].metadata["choices"] == ("auto", *UNROLLS)


def test_split_minibatches_are_refused_where_they_would_change_the_gradient(monkeypatch):
    convnet = create_model("ConvNet", 1, 3, (4, 4), seed=0, width=2, depth=1)
    batchnorm = create_model("ConvNetBN", 1, 3, (4, 4), seed=0, width=2, depth=1)
    chunked = make_config(MTTConfig, {"unroll": "checkpointed", "unroll_chunk": 2, "batch_syn": 4})
    check_split(chunked, convnet, 10)
    check_split(make_config(MTTConfig, {}), batchnorm, 10)  # unsplit: BatchNorm is fine
    with pytest.raises(DDError, match="--unroll-chunk splits each inner minibatch, which changes the BatchNorm"):
        check_split(chunked, batchnorm, 10)
    monkeypatch.setattr("dd.distributed.world_size", lambda: 3)
    check_split(make_config(MTTConfig, {"batch_syn": 3}), convnet, 9)
    with pytest.raises(DDError, match="smallest inner minibatch has 2 synthetic images, fewer than the 3"):
        check_split(chunked, convnet, 10)  # minibatches of 4, 4 and 2
    with pytest.raises(DDError, match="a run across 3 processes splits"):
        check_split(make_config(MTTConfig, {}), batchnorm, 10)


def test_plan_indices_live_on_the_requested_device():
    plan = make_plan(10, 4, 6, make_generator(0), device="meta")
    assert all(i.device.type == "meta" for i in plan.indices)
    assert [len(i) for i in plan.indices] == [4, 4, 2, 4, 4, 2]


@pytest.mark.e2e
@pytest.mark.parametrize("method, extra", [("mtt", {}), ("datm", {"soft_labels": True}),
                                           ("ast", {"middle_loss": "agg", "weight_perturb": True,
                                                    "balance_loss": True})])
def test_distiller_images_agree_between_unrolls(digits_buffer, tmp_path, method, extra):
    images = {}
    for unroll in ("full", "checkpointed"):
        config = make_config(get_method(method).config, {
            "method": method, "unroll": unroll, "unroll_snapshot_every": 2 if unroll == "checkpointed" else 1,
            "syn_steps": 4, "expert_epochs": 2, "max_start_epoch": 2, "batch_syn": 5, "lr_img": 100.0,
            "device": "cpu", "buffer_dir": str(digits_buffer), "run_dir": str(tmp_path / unroll), **extra})
        distiller = Distiller(config)
        start = distiller.images.detach().clone()
        for _ in range(2):
            distiller.step()
        images[unroll] = distiller.images.detach()
        assert not torch.equal(images[unroll], start)
        if method == "datm":
            images[unroll + "/labels"] = distiller.labels.detach()
    for key in images:
        if "checkpointed" in key:
            assert torch.allclose(images[key], images[key.replace("checkpointed", "full")], rtol=1e-4, atol=1e-5)
