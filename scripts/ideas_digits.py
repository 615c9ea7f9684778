"""What DATM's soft labels and its difficulty-aligned windows have to work with on digits:
docs/results-ideas-digits.{md,json}.

    python scripts/ideas_digits.py                       # the digits GSAM experts (DATM's and FTD's buffer)
    python scripts/ideas_digits.py --buffer PATH --out /tmp/ideas

Two measurements on an expert store, without labels of the validation or test split:
- soft labels: DATM initialises a set's labels from the experts' logits on real images (the masked mean over the
  experts that classify the image correctly). How far from one-hot are they? The mean probability of the true
  class and the mean entropy over the training images, for each expert's final logits and for the masked mean.
- trajectory shape: DATM matches late trajectory segments at larger IPC because early and late segments teach
  different things. How much of the experts' whole movement happens in each epoch? The mean over experts of
  ||theta_{e+1} - theta_e|| / sum_e ||theta_{e+1} - theta_e||, and of the distance left to the final weights.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

from dd.buffer.store import TrajectoryStore
from dd.device import describe_machine
from dd.distill.expert_labels import logits_of
from dd.distill.experts import find_store
from dd.distill.methods.datm import masked_mean_logits
from dd.functional import load_flat_
from dd.models import create_model
from dd.realdata import prepare_data


def soft_label_stats(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Mean probability of the true class and mean entropy (nats) of softmax(``logits`` [N, K])."""
    probs = logits.softmax(dim=1)
    entropy = -(probs * probs.clamp(min=1e-12).log()).sum(dim=1)
    return {"p_true": probs.gather(1, labels[:, None]).mean().item(), "entropy": entropy.mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--buffer", default="", help="an expert store (default: experiments/buffer/digits_gsam's)")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    store: TrajectoryStore = find_store(args.buffer or None, "buffers", "digits", "ConvNet",
                                        None if args.buffer else "experiments/buffer/digits_gsam.yaml")
    data = prepare_data("digits", torch.device("cpu"), val_fraction=0.1, val_seed=0)
    images, labels = data.train
    spec = data.spec
    per_expert, all_logits, steps = [], [], []
    for index in store.completed():
        trajectory = store.read_expert(index)  # [epochs + 1, P]
        net = create_model(store.header["model"]["name"], spec.channels, spec.num_classes, spec.size).eval()
        load_flat_(net, trajectory[-1])
        logits = logits_of(net, images)
        all_logits.append(logits)
        correct = logits.argmax(dim=1) == labels
        per_expert.append({**soft_label_stats(logits[correct], labels[correct]), "train_accuracy":
                           correct.float().mean().item()})
        moves = (trajectory[1:] - trajectory[:-1]).norm(dim=1)
        steps.append({"share": (moves / moves.sum()).tolist(),
                      "left": ((trajectory - trajectory[-1]).norm(dim=1) / (trajectory[0] - trajectory[-1]).norm()
                               ).tolist()})
    mean_logits = masked_mean_logits(torch.stack(all_logits), labels)
    masked = soft_label_stats(mean_logits, labels)
    report = {"machine": describe_machine(), "store": str(store.root), "images": len(labels),
              "classes": spec.num_classes, "per_expert": per_expert, "masked_mean": masked, "trajectories": steps}
    write_report(report, Path(args.out))


def write_report(report: dict, out: Path) -> None:
    experts = report["per_expert"]
    epochs = len(report["trajectories"][0]["share"])

    def mean_over(key: str, i: int) -> float:
        return statistics.fmean(t[key][i] for t in report["trajectories"])

    k = report["classes"]
    lines = ["# What DATM's ideas have to work with on digits", "",
             f"Produced by `python scripts/ideas_digits.py` on {report['machine']}, from the store "
             f"`{report['store']}` ({len(experts)} experts) and the {report['images']} digits training images "
             "(validation carved out; no validation or test labels read).", "",
             "## Soft labels", "",
             f"Uniform over {k} classes: p(true) {1 / k:.2f}, entropy {math.log(k):.2f} nats; "
             "one-hot: 1.00 and 0.00.", "",
             "| logits | training accuracy | p(true class) | entropy (nats) |", "|---|---|---|---|"]
    lines += [f"| expert {i} (images it classifies correctly) | {100 * e['train_accuracy']:.2f} % | "
              f"{e['p_true']:.3f} | {e['entropy']:.3f} |" for i, e in enumerate(experts)]
    lines += [f"| masked mean over experts (DATM's init), all images | – | {report['masked_mean']['p_true']:.3f} | "
              f"{report['masked_mean']['entropy']:.3f} |", "",
              "## Trajectory shape", "",
              "Mean over experts: the share of an expert's whole path length walked in each epoch, and the distance "
              "left to its final weights at the start of the epoch (1 = all of it).", "",
              "| epoch | share of the path | distance left |", "|---|---|---|"]
    lines += [f"| {e} | {mean_over('share', e):.3f} | {mean_over('left', e):.3f} |" for e in range(epochs)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results-ideas-digits.md").write_text("\n".join(lines) + "\n")
    (out / "results-ideas-digits.json").write_text(json.dumps(report, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
