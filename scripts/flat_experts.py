"""Whether flat experts give FTD something to act on (docs/results-ftd-digits.md reads this).

FTD trains its experts with GSAM so that their trajectories lie in flatter regions of the loss, arguing that
a student trained on the synthetic set drifts from the expert's trajectory segment after segment (the
accumulated trajectory error) and that this drift costs less loss where the landscape is flat. This script
measures both halves on the experts' own training data (the whole training split, no augmentation):

- sharpness, per store and expert epoch: the largest Hessian eigenvalue of the training loss (power
  iteration on Hessian-vector products) and the loss rise under the adaptive ascent step that GSAM
  takes at radius rho (``dd.buffer.gsam.perturbation``), on a seeded subset of the training images
  (each Hessian-vector product costs about 2 s per 1,000 digits images on one core);
- the gap between stores, per pair: ||a(t) - b(t)|| / ||a(0)|| for the experts both hold, beside the
  length of a's segment from t, ||a(t + M) - a(t)|| / ||a(0)|| (experts of one seed share their start);
- drift, per distilled set against the store it matched: a student starts at expert epoch 0 and takes
  ``syn_steps`` inner steps on the set (its learned lr, DSA, ``batch_syn``) per segment of
  ``expert_epochs`` epochs, K segments in a row. After segment k it is compared with the expert at epoch
  kM: the distance ||w_k - w*(kM)|| / ||w*(0)|| (accumulated), the same for one segment started on the
  expert at epoch (k-1)M (not accumulated), and the training loss at w_k against the expert's.

    python scripts/flat_experts.py --synset runs/a/synset --synset runs/b/synset --segments 5 --out runs/flat
"""

from __future__ import annotations

import argparse
import functools
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from _results import fail, int_list
from expert_segments import segment_lengths
from torch import nn

from dd.augment import DSA
from dd.buffer.gsam import perturbation
from dd.buffer.store import TrajectoryStore
from dd.data import Preprocessor
from dd.device import make_generator, resolve_device
from dd.distill.synset import load_synset
from dd.distill.unroll import Student, make_plan
from dd.errors import DDError
from dd.functional import functional_forward
from dd.io import atomic_write_json
from dd.models import create_model
from dd.realdata import prepare_data


def training_loss(model: nn.Module, w: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the model at flat parameters ``w`` on (images, labels), differentiable in ``w``."""
    return F.cross_entropy(functional_forward(model, w, images), labels)


def top_eigenvalue(model: nn.Module, w: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                   iterations: int, generator: torch.Generator) -> float:
    """The Hessian's eigenvalue of largest magnitude at ``w``, by ``iterations`` steps of power iteration."""
    w = w.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(training_loss(model, w, images, labels), w, create_graph=True)
    v = torch.randn(w.shape, generator=generator).to(w)
    v = v / v.norm()
    eigenvalue = 0.0
    for _ in range(iterations):
        (hv,) = torch.autograd.grad(grad, w, v, retain_graph=True)
        eigenvalue = torch.dot(hv, v).item()
        v = hv / hv.norm()
    return eigenvalue


def ascent_sharpness(model: nn.Module, w: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                     rho: float) -> float:
    """L(w + e) - L(w) for GSAM's adaptive ascent step e at radius ``rho``."""
    w = w.detach().requires_grad_(True)
    loss = training_loss(model, w, images, labels)
    (grad,) = torch.autograd.grad(loss, w)
    with torch.no_grad():
        return (training_loss(model, w + perturbation(w, grad, rho, adaptive=True), images, labels) - loss).item()


def sharpness(store: TrajectoryStore, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], experts: list[int],
              epochs: list[int], rho: float, iterations: int, device: torch.device) -> list[dict]:
    """Per epoch: mean over ``experts`` of the training loss, the top Hessian eigenvalue and the ascent rise."""
    images, labels = data
    rows = []
    per_expert = {index: store.read_expert(index).to(device) for index in experts}
    for epoch in epochs:
        cells = []
        for index, trajectory in per_expert.items():
            w = trajectory[epoch]
            with torch.no_grad():
                loss = training_loss(model, w, images, labels).item()
            cells.append((loss, top_eigenvalue(model, w, images, labels, iterations, make_generator(index)),
                          ascent_sharpness(model, w, images, labels, rho)))
        loss, eig, rise = (statistics.fmean(column) for column in zip(*cells, strict=True))
        rows.append({"epoch": epoch, "loss": loss, "top_eigenvalue": eig, "ascent_rise": rise})
    return rows


def store_gap(a: TrajectoryStore, b: TrajectoryStore, experts: list[int], epochs: list[int],
              expert_epochs: int) -> list[dict]:
    """Per epoch t: mean over ``experts`` (held by both) of ||a(t) - b(t)|| / ||a(0)||, beside a's segment
    length ||a(t + M) - a(t)|| / ||a(0)|| (``expert_segments.segment_lengths``)."""
    gaps = []
    for index in experts:
        ta, tb = a.read_expert(index), b.read_expert(index)
        scale = ta[0].norm().item()
        gaps.append([(ta[t] - tb[t]).norm().item() / scale for t in epochs])
    segments = segment_lengths(a, expert_epochs, epochs, experts)
    return [{"epoch": t, "gap": statistics.fmean(column), "segment": length}
            for t, column, length in zip(epochs, zip(*gaps, strict=True), segments, strict=True)]


def student_segment(student: Student, w: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor,
                    steps: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """The student's parameters after ``steps`` inner steps from ``w`` on the synthetic set, without a graph."""
    plan = make_plan(images.shape[0], batch, steps, generator, images.device)
    state = student.init_state(w.detach().requires_grad_(True))
    for index, seed in zip(plan.indices, plan.seeds, strict=True):
        state = student.step(state, images, labels, lr, index, seed, create_graph=False)
        state = tuple(s.detach().requires_grad_(True) for s in state)
    return state[0].detach()


def drift(student: Student, trajectories: list[torch.Tensor], images: torch.Tensor, labels: torch.Tensor,
          lr: float, steps: int, expert_epochs: int, segments: int, batch: int, seed: int,
          loss_fn) -> list[dict]:
    """Per segment k = 1..K: mean over the experts of the accumulated distance ||w_k - w*(kM)|| / ||w*(0)||,
    the one-segment distance from w*((k-1)M), and the training loss ``loss_fn`` at w_k and at w*(kM)."""
    lr_t = torch.tensor(lr, device=images.device)
    generator = make_generator(seed)
    cells: list[list[tuple[float, float, float, float]]] = [[] for _ in range(segments)]
    for trajectory in trajectories:
        if segments * expert_epochs >= trajectory.shape[0]:
            fail(f"{segments} segments of {expert_epochs} epochs run past the experts' {trajectory.shape[0] - 1} "
                 "epochs; pass fewer --segments")
        scale = trajectory[0].norm().item()
        w = trajectory[0]
        for k in range(1, segments + 1):
            target = trajectory[k * expert_epochs]
            w = student_segment(student, w, images, labels, lr_t, steps, batch, generator)
            one = student_segment(student, trajectory[(k - 1) * expert_epochs], images, labels, lr_t, steps, batch,
                                  generator)
            with torch.no_grad():
                cells[k - 1].append(((w - target).norm().item() / scale, (one - target).norm().item() / scale,
                                     loss_fn(w), loss_fn(target)))
    rows = []
    for k, column in enumerate(cells, start=1):
        acc, one, loss, expert_loss = (statistics.fmean(c) for c in zip(*column, strict=True))
        rows.append({"segment": k, "expert_epoch": k * expert_epochs, "accumulated": acc, "one_segment": one,
                     "loss": loss, "expert_loss": expert_loss})
    return rows


def open_pair(path: str, device: torch.device):
    """The set at ``path``, the store it matched, its data (preprocessed as the store's experts saw it) and
    a model of the store's architecture."""
    synset = load_synset(path, device)
    if not synset.meta.get("buffer"):
        fail(f"{path} names no expert store in its metadata (it was not distilled by trajectory matching); "
             "pass a set of mtt, ftd, datm, ast or tesla")
    store = TrajectoryStore.open(synset.meta["buffer"])
    stored = store.load_preprocess()
    preprocess = (Preprocessor.from_state(*stored) if stored is not None
                  else store.header["recipe"].get("preprocess", "standard"))
    config = synset.meta["config"]
    data = prepare_data(config["dataset"], device, config.get("data_path"), False, preprocess, config.get("image_size"),
                        config.get("val_fraction", 0.0), config.get("val_seed", 0), config.get("channels"))
    spec = data.spec
    model = create_model(config["model"], spec.channels, spec.num_classes, spec.size, seed=0).to(device)
    return synset, store, data, model


def measure(args: argparse.Namespace, device: torch.device) -> dict:
    """The sharpness of every store the sets matched (once per store), the gap between every two of those
    stores, and each set's drift from its own store."""
    report: dict = {"sharpness": {}, "gap": {}, "drift": {}}
    epochs = int_list(args.epochs, "--epochs")
    stores: dict[str, TrajectoryStore] = {}
    for path in args.synset:
        synset, store, data, model = open_pair(path, device)
        config, real, name = synset.meta["config"], data.train_and_val, store.root.name
        matched, experts = config["expert_epochs"], store.completed()[:args.experts]
        if name not in stores:
            if max(epochs) > store.num_epochs:
                fail(f"--epochs {args.epochs} runs past the {store.num_epochs} epochs of {store.root}")
            for other_name, other in stores.items():
                last = min(store.num_epochs, other.num_epochs)
                report["gap"][f"{name} vs {other_name}"] = store_gap(
                    store, other, sorted(set(experts) & set(other.completed())),
                    [t for t in epochs if t + matched <= last], matched)
            stores[name] = store
            subset = torch.randperm(real[1].shape[0], generator=make_generator(args.seed))[:args.sharpness_images]
            report["sharpness"][name] = sharpness(store, model, (real[0][subset], real[1][subset]),
                                                  experts[:args.sharpness_experts], epochs, args.rho,
                                                  args.power_iterations, device)
        images, labels = synset.images.to(device), synset.labels.to(device)
        trajectories = [store.read_expert(index).to(device) for index in experts]
        report["drift"][path] = {"store": name, "sha256": synset.checksum, "experts_sha256": store.fingerprint(experts),
                                 "data_sha256": data.identity()["sha256"], "lr": synset.lr, "rows": drift(
            Student(model, DSA(config["dsa_strategy"])), trajectories, images, labels, synset.lr, config["syn_steps"],
            matched, args.segments, config["batch_syn"] or images.shape[0], args.seed,
            functools.partial(loss_value, model, real))}
    return report


def loss_value(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], w: torch.Tensor) -> float:
    """The training loss at ``w`` on ``data``, as a number."""
    with torch.no_grad():
        return training_loss(model, w, *data).item()


def print_report(report: dict, rho: float) -> None:
    """The report's tables in Markdown."""
    for name, rows in report["sharpness"].items():
        print(f"\n{name}\n| epoch | loss | top eigenvalue | ascent rise (rho {rho}) |\n|---|---|---|---|")
        print("\n".join(f"| {r['epoch']} | {r['loss']:.4f} | {r['top_eigenvalue']:.2f} | {r['ascent_rise']:.5f} |"
                        for r in rows))
    for pair, rows in report["gap"].items():
        print(f"\n{pair}\n| epoch | gap between the stores | segment length |\n|---|---|---|")
        print("\n".join(f"| {r['epoch']} | {r['gap']:.4f} | {r['segment']:.4f} |" for r in rows))
    for path, entry in report["drift"].items():
        print(f"\n{path} (lr {entry['lr']:.4f}, experts {entry['store']})\n"
              "| segment | expert epoch | accumulated | one segment | loss | expert's loss |\n"
              "|---|---|---|---|---|---|")
        print("\n".join(f"| {r['segment']} | {r['expert_epoch']} | {r['accumulated']:.4f} | {r['one_segment']:.4f} | "
                        f"{r['loss']:.4f} | {r['expert_loss']:.4f} |" for r in entry["rows"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synset", action="append", required=True,
                        help="a distilled set (repeat); each is compared with the store it matched")
    parser.add_argument("--segments", type=int, default=5, help="K, matched segments in a row")
    parser.add_argument("--experts", type=int, default=10, help="experts of each store to use (the first N)")
    parser.add_argument("--sharpness-experts", type=int, default=5, help="experts whose sharpness is measured")
    parser.add_argument("--sharpness-images", type=int, default=512,
                        help="training images (a seeded subset) the sharpness is measured on")
    parser.add_argument("--epochs", default="2,6,10,14", help="expert epochs whose sharpness is measured")
    parser.add_argument("--rho", type=float, default=0.01, help="radius of GSAM's adaptive ascent step")
    parser.add_argument("--power-iterations", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--out", required=True, help="folder for flat-experts.json")
    args = parser.parse_args()
    command = "python scripts/flat_experts.py " + " ".join(
        [f"--synset {s}" for s in args.synset] + [
            f"--segments {args.segments}", f"--experts {args.experts}", f"--sharpness-experts {args.sharpness_experts}",
            f"--sharpness-images {args.sharpness_images}", f"--epochs {args.epochs}", f"--rho {args.rho}",
            f"--power-iterations {args.power_iterations}", f"--out {args.out}"])
    try:
        report = {"command": command, **measure(args, resolve_device(args.device))}
    except DDError as exc:  # a missing or damaged set or store, an unknown device
        fail(str(exc))
    atomic_write_json(Path(args.out) / "flat-experts.json", report)
    print_report(report, args.rho)


if __name__ == "__main__":
    main()
