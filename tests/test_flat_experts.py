"""scripts/flat_experts.py: its sharpness measures against explicit computations, its drift and store gap on
hand-made trajectories."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dd.augment import DSA
from dd.buffer.store import TrajectoryStore
from dd.distill.synset import SynSet, save_synset
from dd.distill.unroll import Student
from dd.functional import ParamSpec, flatten_params

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import flat_experts  # noqa: E402


@pytest.fixture
def toy():
    """A softmax regression on 12 random 1x2x2 images of 3 classes, in float64, and its flat parameters."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()
    images, labels = torch.randn(12, 1, 2, 2, dtype=torch.float64), torch.arange(12) % 3
    return model, images, labels, flatten_params(model)


def test_the_top_eigenvalue_is_the_explicit_hessians(toy):
    model, images, labels, w = toy
    hessian = torch.autograd.functional.hessian(lambda v: flat_experts.training_loss(model, v, images, labels), w)
    expected = torch.linalg.eigvalsh(hessian).abs().max().item()
    found = flat_experts.top_eigenvalue(model, w, images, labels, 300, torch.Generator().manual_seed(1))
    assert found == pytest.approx(expected, rel=1e-4)


def test_the_ascent_rise_is_first_order_rho_times_the_scaled_gradient_norm(toy):
    model, images, labels, w = toy
    w = w.requires_grad_(True)
    (grad,) = torch.autograd.grad(flat_experts.training_loss(model, w, images, labels), w)
    rho = 1e-5  # L(w + e) - L(w) = g.e + O(rho^2), and g.e = rho ||w g||^2 / || |w| g || = rho || |w| g ||
    rise = flat_experts.ascent_sharpness(model, w, images, labels, rho)
    assert rise == pytest.approx(rho * (w.detach().abs() * grad).norm().item(), rel=1e-3)


def test_a_student_with_lr_zero_stays_put_so_its_drift_is_the_experts_own_path(toy):
    model, images, labels, w0 = toy
    step = torch.zeros_like(w0)
    step[0] = 1.0
    trajectory = torch.stack([w0 + i * step for i in range(5)])  # the expert walks one unit per epoch along w[0]
    student = Student(model, DSA("none"))
    scale = w0.norm().item()
    rows = flat_experts.drift(student, [trajectory], images, labels, 0.0, steps=3, expert_epochs=2, segments=2,
                              batch=4, seed=0, loss_fn=lambda w: float(w[0]))
    assert [r["accumulated"] for r in rows] == pytest.approx([2 / scale, 4 / scale])  # still at w*(0)
    assert [r["one_segment"] for r in rows] == pytest.approx([2 / scale, 2 / scale])  # from w*(0), w*(2)
    assert [r["loss"] for r in rows] == pytest.approx([float(w0[0])] * 2)
    assert [r["expert_loss"] for r in rows] == pytest.approx([float(w0[0]) + 2, float(w0[0]) + 4])
    with pytest.raises(SystemExit) as exit_info:
        flat_experts.drift(student, [trajectory], images, labels, 0.0, steps=3, expert_epochs=2, segments=3,
                           batch=4, seed=0, loss_fn=lambda w: 0.0)
    assert exit_info.value.code == 2


def test_a_student_that_learns_moves_and_its_loss_falls(toy):
    model, images, labels, w0 = toy
    trajectory = torch.stack([w0] * 3)
    rows = flat_experts.drift(Student(model, DSA("none")), [trajectory], images, labels, 0.5, steps=5,
                              expert_epochs=1, segments=2, batch=12, seed=0,
                              loss_fn=lambda w: flat_experts.training_loss(model, w, images, labels).item())
    assert 0 < rows[0]["accumulated"] < rows[1]["accumulated"]  # steady descent away from a standing expert
    assert rows[0]["one_segment"] == pytest.approx(rows[0]["accumulated"])  # both start at w*(0), full batch
    assert rows[1]["loss"] < rows[0]["loss"] < rows[0]["expert_loss"]


def test_the_store_gap_is_the_relative_distance_between_experts_of_one_seed(tmp_path):
    spec = ParamSpec(("w",), ((2,),))
    header = {"dataset": {"name": "toy"}, "model": {"name": "Toy"}, "param_spec": spec.to_json(), "num_epochs": 3}
    a = TrajectoryStore.create(tmp_path / "a", {**header, "recipe": {"optimizer": "sgd"}})
    b = TrajectoryStore.create(tmp_path / "b", {**header, "recipe": {"optimizer": "gsam"}})
    a.write_expert(0, torch.tensor([[3.0, 4.0], [3.0, 4.0], [6.0, 8.0], [6.0, 8.0]]), {})
    b.write_expert(0, torch.tensor([[3.0, 4.0], [3.0, 5.0], [6.0, 8.0], [9.0, 8.0]]), {})
    rows = flat_experts.store_gap(a, b, [0], [0, 1], expert_epochs=2)
    # |a(0)| = 5; gaps 0 and 1 (epoch 1); a's segments: |a(2) - a(0)| = 5, |a(3) - a(1)| = 5
    assert [(r["epoch"], r["gap"], r["segment"]) for r in rows] == [(0, 0.0, 1.0), (1, pytest.approx(0.2), 1.0)]


def run_main(monkeypatch, capsys, *argv: str) -> str:
    monkeypatch.setattr(sys, "argv", ["flat_experts.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        flat_experts.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1  # one line, no traceback
    return err


@pytest.mark.e2e
def test_bad_sets_stop_with_one_error_line(tmp_path, monkeypatch, capsys):
    assert "does not exist" in run_main(monkeypatch, capsys, "--synset", str(tmp_path / "nowhere"),
                                        "--out", str(tmp_path / "out"))
    images = torch.zeros(10, 1, 8, 8)
    save_synset(tmp_path / "dm", SynSet(images, torch.arange(10), 0.01, meta={"dataset": "digits", "ipc": 1,
                                                                             "method": "dm"}))
    assert "names no expert store" in run_main(monkeypatch, capsys, "--synset", str(tmp_path / "dm"),
                                               "--out", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
