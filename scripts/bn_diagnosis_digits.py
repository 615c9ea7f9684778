"""Why a distilled digits set loses to random real images on BatchNorm networks: docs/results-bn-digits.{md,json}.

    python scripts/bn_diagnosis_digits.py --synset runs/results-digits/mtt-ipc1/synset
    python scripts/bn_diagnosis_digits.py --synset S --models ConvNetBN --seeds 1 --epochs 20 --out /tmp/smoke

A network trained under protocol mtt on N images keeps BatchNorm running statistics of those N images, and
scores real images normalised by them. The hypothesis: a distilled set's statistics are not real images'
statistics, so its networks are fed shifted activations at test time, while random real images' are not. The
test: train each network on the distilled set and on random real images (same seeds), then score it on the
validation split twice, with its own running statistics and with them re-estimated (weights fixed, no labels)
from --calibration random real training images. If re-estimating closes the distilled set's gap, the loss is
the statistics, not what the weights learned. The test split is not read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from _results import cell
from torch import nn

from dd.data import Preprocessor
from dd.device import describe_machine, make_generator
from dd.distill.synset import load_synset
from dd.protocols import get_protocol
from dd.realdata import prepare_data, random_subset
from dd.training import accuracy, train_model


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, images: torch.Tensor) -> None:
    """Replace every BatchNorm layer's running statistics by the moments of its input over ``images`` (one
    batch; weights unchanged), and leave ``model`` in eval mode."""
    for norm in (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: after one batch, that batch's moments
    model.train()
    model(images)
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synset", required=True, help="a digits set folder (dd.distill's synset)")
    parser.add_argument("--models", default="ConvNetBN,ResNet18BN,VGG11BN,ConvNet",
                        help="comma-separated architectures (one without BatchNorm as the control)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=200, help="protocol mtt epochs (it runs epochs + 1)")
    parser.add_argument("--calibration", type=int, default=500, help="real training images that re-estimate BN")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    synset = load_synset(args.synset)
    preprocess = Preprocessor.from_state(synset.preprocess, synset.meta.get("preprocess_meta", {}))
    data = prepare_data("digits", torch.device("cpu"), preprocess=preprocess, val_fraction=0.1, val_seed=0)
    ipc, (channels, *size) = synset.meta["ipc"], synset.images.shape[1:]
    k = data.spec.num_classes
    protocol = get_protocol("mtt", epochs=args.epochs)
    generator = make_generator(12345)
    calibration = data.train_images[torch.randperm(data.train_images.shape[0], generator=generator)[:args.calibration]]
    sources = {"distilled": ((synset.images, synset.hard_labels()), synset.lr)}
    records = []
    for model_name in args.models.split(","):
        for seed in range(args.seeds):
            sources["random real"] = (random_subset(data, ipc, seed), 0.01)
            for source, (train, lr) in sources.items():
                model = train_model(model_name, channels, k, tuple(size), train, lr, protocol, seed)
                own = accuracy(model, *data.val)
                reestimate_batchnorm(model, calibration)
                records.append({"model": model_name, "source": source, "seed": seed, "own_stats": own,
                                "real_stats": accuracy(model, *data.val)})
                print(records[-1], flush=True)
    write_report(records, synset, data.train_images, Path(args.out), args)


def write_report(records: list[dict], synset, real: torch.Tensor, out: Path, args: argparse.Namespace) -> None:
    def scores(model: str, source: str, key: str) -> str:
        return cell([{"accuracy": r[key]} for r in records if r["model"] == model and r["source"] == source])

    command = (f"python scripts/bn_diagnosis_digits.py --synset {args.synset} --models {args.models} --seeds "
               f"{args.seeds} --epochs {args.epochs} --calibration {args.calibration}")
    spread = {"distilled": synset.images.std(dim=(0, 2, 3)).mean().item(),
              "real": real.std(dim=(0, 2, 3)).mean().item()}
    lines = ["# BatchNorm networks on a distilled digits set", "",
             f"Produced by `{command}` on {describe_machine()}. Validation accuracy in % (mean ± std over "
             f"{args.seeds} seeds), protocol mtt ({args.epochs}+1 epochs), the set's learned lr ({synset.lr:.4f}) "
             f"for the distilled set, 0.01 for random real ({synset.meta['ipc']} per class, seed = network seed). "
             f"'own statistics': BatchNorm running statistics of the training images, as dd.eval scores; 're-"
             f"estimated': the same weights with running statistics averaged over {args.calibration} random real "
             "training images (no labels). Set: "
             f"{synset.meta.get('method')} sha256 {str(synset.checksum)[:12]}. Pixel std per channel (model input "
             f"space): distilled {spread['distilled']:.2f}, real {spread['real']:.2f}.", "",
             "| model | distilled, own statistics | distilled, re-estimated | random real, own statistics | "
             "random real, re-estimated |", "|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in records):
        lines.append(f"| {model} | {scores(model, 'distilled', 'own_stats')} | "
                     f"{scores(model, 'distilled', 'real_stats')} | {scores(model, 'random real', 'own_stats')} | "
                     f"{scores(model, 'random real', 'real_stats')} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results-bn-digits.md").write_text("\n".join(lines) + "\n")
    report = {"machine": describe_machine(), "command": command, "split": "val",
              "set": {"sha256": synset.checksum, "path": args.synset, "method": synset.meta.get("method")},
              "protocol": get_protocol("mtt", epochs=args.epochs).describe(synset.lr), "pixel_std": spread,
              "runs": records}
    (out / "results-bn-digits.json").write_text(json.dumps(report, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
