"""``python -m tests.rank_unroll OUT`` (one process) or under torchrun (several): a few outer SGD iterations
of the images, soft labels and lr through each unroll, in float64, for MTT's, DATM's and AST's students;
rank 0 writes the final tensors to OUT (safetensors). tests/test_torchrun.py compares 1 and 2 processes."""

import sys

import torch
from safetensors.torch import save_file

from dd import distributed
from dd.augment import DSA
from dd.device import make_generator
from dd.distill.methods.ast import MomentumStudent
from dd.distill.methods.base import normalized_distance
from dd.distill.unroll import Student, make_plan, make_unroll
from dd.training import classification_loss
from tests.helpers import tiny_problem

UNROLLS = {"full": ("full", 1, None), "checkpointed": ("checkpointed", 2, None), "chunked": ("checkpointed", 1, 1)}


def run(method: str, unroll_name: str) -> dict[str, torch.Tensor]:
    model, _, images, labels, w0, target, _ = tiny_problem()
    augment = DSA("color_crop_flip_scale_rotate")
    if method == "ast":
        student = MomentumStudent(model, augment, lambda logits, y: 1.3 * classification_loss(logits, y), 0.9)
    else:
        student = Student(model, augment)
    if method == "datm":
        labels = torch.randn(6, 3, generator=make_generator(4), dtype=torch.float64).requires_grad_(True)
    capture = [2, 5] if method == "ast" else [5]
    images.requires_grad_(True)
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    unroll = make_unroll(*UNROLLS[unroll_name])
    generator = make_generator(5)
    learned = [t for t in (images, labels, lr) if t.requires_grad]
    for _ in range(3):
        plan = make_plan(6, 4, 5, generator)
        captured = unroll(student, w0, images, labels, lr, plan, capture)
        loss = sum(normalized_distance(w, w0, target) for w in captured)
        loss.backward()
        distributed.average_gradients(learned)
        with torch.no_grad():
            for t, step in zip(learned, (0.01, 0.01, 1e-5)[:len(learned)], strict=True):
                t -= step * t.grad
                t.grad = None
    return {f"{method}/{unroll_name}/{name}": t.detach().contiguous()
            for name, t in (("images", images), ("labels", labels), ("lr", lr)) if t.is_floating_point()}


if __name__ == "__main__":
    distributed.setup("cpu")
    out = {k: v for method in ("mtt", "datm", "ast") for name in UNROLLS for k, v in run(method, name).items()}
    if distributed.is_main():
        save_file(out, sys.argv[1])
