"""The evaluation stage's config (``python -m dd.eval`` and ``dd.eval.evaluate``): the data, validation-split and
device blocks of ``dd.settings``, redeclared where a set supplies the default, and the retraining knobs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dd.augment import DSA
from dd.config import opt, parse_list
from dd.device import check_fits, check_seed
from dd.errors import DDError
from dd.eval import pools
from dd.protocols import list_protocols
from dd.realdata import SPLITS
from dd.settings import DataSettings, DeviceSettings, ValidationSplit

BASELINES = ("random", "full")
LABELS = ("auto", "hard", "soft")
AUGMENTS = ("dsa", "none")


@dataclass
class EvalConfig(DataSettings, ValidationSplit, DeviceSettings):
    dataset: str | None = opt(None, "dataset to test on (default: the set's; must match it)")
    data_path: str | None = opt(None, "folder holding the dataset (default: the set's, else data)")
    image_size: int | None = opt(None, "side length of the images (default: the set's, else the dataset's own; "
                                       "imagefolder: the images' side when they share one, else 32)",
                                 bounds="positive")
    channels: int | None = opt(None, "1 (grey) or 3 (colour): convert the images to that many channels (default: "
                               "the set's, else the dataset's own; imagefolder: 1 when every image is grey, else 3)")
    val_fraction: float | None = opt(None, "fraction of every class held out of the training split as validation "
                                     "(default: the set's, else 0.1)")
    val_seed: int | None = opt(None, "seed of the validation split's draw (default: the set's, else 0)")
    synset: str | None = opt(None, "synthetic-set folder written by dd.distill; repeat the flag (or give a comma "
                             "list) to evaluate several sets side by side (omit to run baselines only)", repeat=True)
    verify: bool = opt(True, "refuse a set without a recorded checksum (--no-verify accepts a hand-made set; its "
                       "records say so)")
    split: str = opt("test", "split to report accuracy on: test (the final report) or val (for choices: tuning, "
                     "selection)", choices=SPLITS)
    zca: bool = opt(False, "ZCA-whiten (baselines-only runs; a set carries its own preprocessing: refused with a set "
                    "that is not ZCA-whitened)")
    allow_other_data: bool = opt(False, "evaluate sets on other data than they were distilled on (refused by default: "
                                 "the data fingerprints differ); the records say so")
    ipc: int | None = opt(None, "images per class of the random baseline (default: each set's)", bounds="positive")
    protocol: str | None = opt(None, "evaluation protocol: " + ", ".join(list_protocols()) + " (see dd/protocols.py), "
                               "or transfer for a KRR-ST set (its own flags: --protocol transfer --help); default: "
                               "the one each set's method names, else mtt", choices=(*list_protocols(), "transfer"))
    models: str = opt("ConvNet", "comma-separated architectures to train, or named pools adapted to the image "
                      "size (dd/eval/pools.py): " + ", ".join(pools.PREFIX + p for p in pools.POOLS))
    runs: int = opt(5, "seeds per architecture and source", bounds="positive")
    epochs: int | None = opt(None, "training epochs of each network (default: the protocol's; mtt runs epochs+1 "
                             "and decays the lr after epoch epochs//2+1)", bounds="positive")
    lr: float | None = opt(None, "learning rate on the synthetic set (default: the set's learned lr)")
    baseline_lr: float = opt(0.01, "learning rate of the random and full baselines")
    batch_size: int | None = opt(None, "training batch size (default: the protocol's)", bounds="positive")
    momentum: float | None = opt(None, "SGD momentum (default: the protocol's)", bounds="below_one")
    weight_decay: float | None = opt(None, "SGD weight decay (default: the protocol's)")
    dsa_strategy: str = opt("protocol", "DSA ops on training batches, 'none' for none, 'protocol' for the protocol's")
    labels: str = opt("auto", "comma-separated label settings of the set: auto (its own), hard (argmax), soft")
    augment: str = opt("dsa", "comma-separated augmentation settings: dsa, the protocol's (DSA with --dsa-strategy; "
                              "DC's own where protocol dc gives the data or model one), or none")
    baseline: str = opt("", "comma-separated baselines to run beside the set: random, full")
    out: str | None = opt(None, "output folder (default: eval/ beside the sets when they share a folder, else "
                          "runs/eval-<dataset>)")
    seed: int = opt(0, "first seed; run r uses seed + r")
    batch_seeds: str = opt("auto", "train the seeds of a set and architecture together with torch.func.vmap: on, off, "
                           "or auto (on for CUDA; on a CPU batching is no faster)", choices=("auto", "on", "off"))
    amp: str = opt("none", "mixed precision of the training: bf16 runs forward and backward under bfloat16 autocast "
                   "with fp32 master weights (recorded in the protocol, so bf16 and fp32 results never share a cell)",
                   choices=("none", "bf16"))
    max_over_epochs: bool = opt(True, "on the test split, also record the maximum over the protocol's periodic tests "
                                "(AST: every 20 epochs), a test-split selection reported beside the final accuracy; "
                                "--no-max-over-epochs skips those tests, which can cost more than the training "
                                "(the final accuracy is the same)")
    deterministic: bool = opt(False, "deterministic kernels and cuDNN settings (dd.device.use_deterministic): what "
                              "makes CUDA runs and their resumes bitwise repeatable; slower")

    def baselines(self) -> list[str]:
        """The ``--baseline`` entries, each checked."""
        found = [b for b in self.baseline.split(",") if b]
        for b in found:
            if b not in BASELINES:
                raise DDError(f"unknown baseline '{b}'; choose from {', '.join(BASELINES)}")
        return found

    def synset_paths(self) -> list[str]:
        """The ``--synset`` folders, in order, each once."""
        return list(dict.fromkeys(p.strip() for p in (self.synset or "").split(",") if p.strip()))

    def check(self) -> None:
        pools.check_models(self.models)
        baselines = self.baselines()
        if self.seed < 0:
            raise DDError(f"--seed must be 0 or more, got {self.seed}")
        check_seed("--seed", self.seed, offsets=self.runs)
        check_fits("--runs", self.runs, 256, "the list of runs")
        if self.lr is not None:
            check_lr("--lr", self.lr)
        check_lr("--baseline-lr", self.baseline_lr)
        if self.weight_decay is not None and not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise DDError(f"--weight-decay must be 0 or a positive finite number, got {self.weight_decay}")
        if self.dsa_strategy != "protocol":
            DSA(self.dsa_strategy)  # raises on an unknown op
        if not self.synset_paths() and not baselines:
            raise DDError("nothing to evaluate; pass --synset PATH and/or --baseline random,full")
        parse_list(self.labels, LABELS, "--labels")
        parse_list(self.augment, AUGMENTS, "--augment")


def check_lr(flag: str, lr: float) -> None:
    """A learning rate must be a positive finite number."""
    if not math.isfinite(lr) or lr <= 0:
        raise DDError(f"{flag} must be a positive finite learning rate, got {lr}")
