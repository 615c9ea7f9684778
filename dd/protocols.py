"""Named evaluation protocols: how a fresh network is trained on a set, and when it is tested.

Each protocol is a frozen value with the reference code it reproduces (``source``), in one registry like
the models and the methods: ``get_protocol("mtt")``, ``get_protocol("mtt", epochs=300)``,
``list_protocols()``. ``Protocol.describe(lr)`` holds every value that changes a result; evaluation
records carry it and the results cache keys on it.

Epochs count as in the references' ``evaluate_synset``: the user gives ``epochs`` (their
``epoch_eval_train``), the loop runs ``range(Epoch + 1)``, i.e. ``epochs + 1`` epochs, and after the
training of 0-based epoch ``Epoch // 2 + 1`` the lr is multiplied by the decay factor and the optimiser is
re-created (its momentum buffer starts from zero). For Epoch = 1000: 502 epochs at lr, 499 at lr / 10.
The test accuracy is the one after the last epoch.

Every protocol trains hard labels [N] with cross-entropy and soft labels [N, K] (logits) with DATM's
SoftCrossEntropy, -sum_k softmax(y)_k log softmax(f(x))_k with temperature 1 (``dd.training.soft_cross_entropy``;
NUS-HPC-AI-Lab/DATM at 97ae510, distill/DATM.py l.255-262); MTT, AST and DC have hard labels only.

Line numbers in ``source`` refer to these upstream commits: MTT GeorgeCazenavette/mtt-distillation 50dccea, FTD
AngusDujw/FTD-distillation 711532a, DATM NUS-HPC-AI-Lab/DATM 97ae510, AST
shenjiyuan123/AST-Alignment-with-Smooth-Expert 8030869.

Each method names its protocol (a set's metadata ``protocol``): mtt, ftd and tesla ``mtt``; datm ``datm``; ast
``ast``; dc ``dc`` (300 epochs, no augmentation; on MNIST and for the model ConvNetBN 1000 epochs with DC's own
augmentation, ``for_data``); dsa ``dsa`` and dm ``dm`` (1000 epochs with DSA). Sets written before dsa and dm had
protocols of their own name ``dc`` for all three (``legacy_name``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dd.augment import DEFAULT_STRATEGY, DSA, DSAParams
from dd.dcaugment import DCAugment
from dd.errors import DDError
from dd.schedule import SGDSchedule

SOFT_LABEL_LOSS = "soft_ce"  # DATM's SoftCrossEntropy against softmax(labels), T = 1, in every protocol

MTT_SOURCE = ("MTT utils.py:352-389 evaluate_synset (unchanged in FTD utils/utils_baseline.py:352-389): "
              "SGD(lr = the learned syn_lr, momentum 0.9, "
              "wd 5e-4), epoch_eval_train 1000 run as range(Epoch+1), lr x0.1 by a re-created optimiser after "
              "epoch Epoch//2+1, DSA on every training batch, batch_train 256, test after the last epoch")


Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""What augments a training batch: ``augmentation(x, generator)`` (DSA or DC's own)."""

AMP_MODES = ("none", "bf16")  # bf16: forward and backward under bfloat16 autocast, fp32 weights and optimiser


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol; the defaults are ``mtt`` (the reference ``evaluate_synset``).

    ``epochs`` is the number the user gives (the reference's ``epoch_eval_train``); ``epochs_run`` =
    ``epochs + extra_epochs`` are trained. The lr is multiplied by ``decay_factor`` after 0-based epoch
    ``decay_epoch`` (``decay_after``, or ``epochs // 2 + decay_offset`` when None); ``reset_at_decay`` re-creates the
    optimiser there (momentum buffer reset), with momentum ``momentum_after`` (``momentum_after_decay``, or
    ``momentum`` when None). ``dsa_strategy`` "none" (or "") trains without DSA. ``dsa_align_corners`` is how
    DSA's scale and rotate resample (``dd.augment.DSAParams``). ``dc_augment``, a strategy of DC's own
    augmentation (``dd.dcaugment``), replaces DSA, which must then be "none".
    ``max_over_test_every`` = k > 0 also tests after the 0-based epochs 0, k, 2k, ... (``epoch % k == 0``, as AST's
    ``ep % 20 == 0``) and records the maximum over those tests and the final one beside the final accuracy
    (AST's model selection on the test split: never the headline).
    """

    name: str = "mtt"
    epochs: int = 1000
    extra_epochs: int = 1
    decay_after: int | None = None
    decay_offset: int = 1
    decay_factor: float = 0.1
    reset_at_decay: bool = True
    momentum: float = 0.9
    momentum_after_decay: float | None = None
    weight_decay: float = 5e-4
    batch_size: int = 256
    dsa_strategy: str = DEFAULT_STRATEGY
    dsa_align_corners: bool = True
    dc_augment: str = ""
    max_over_test_every: int = 0
    amp: str = "none"
    source: str = MTT_SOURCE

    def __post_init__(self) -> None:
        for field in ("epochs", "batch_size"):
            if getattr(self, field) <= 0:
                raise DDError(f"protocol {self.name}: {field} must be positive, got {getattr(self, field)}")
        if self.dc_augment:
            if self.uses_dsa:
                raise DDError(f"protocol {self.name}: DC's augmentation ({self.dc_augment}) replaces DSA; "
                              f"set dsa_strategy none, not {self.dsa_strategy}")
            DCAugment(self.dc_augment)  # names an unknown op
        if self.amp not in AMP_MODES:
            raise DDError(f"protocol {self.name}: amp must be one of {', '.join(AMP_MODES)}, got '{self.amp}'")
        for field in ("extra_epochs", "max_over_test_every"):
            if getattr(self, field) < 0:
                raise DDError(f"protocol {self.name}: {field} must be >= 0, got {getattr(self, field)}")
        if self.decay_epoch < 0:  # every epoch would train at the decayed lr while the record names the given one
            fix = "set decay_after >= 0" if self.decay_after is not None else \
                f"pass --epochs {-2 * self.decay_offset} or more"
            raise DDError(f"protocol {self.name} with epochs {self.epochs} would decay the lr after epoch "
                          f"{self.decay_epoch}, before the first one (every epoch at lr x {self.decay_factor}); {fix}")

    @property
    def epochs_run(self) -> int:
        """The number of epochs trained (``mtt``: ``epochs + 1``, as ``range(Epoch + 1)``)."""
        return self.epochs + self.extra_epochs

    @property
    def decay_epoch(self) -> int:
        """The 0-based epoch after which the lr decays (``mtt``: ``epochs // 2 + 1``)."""
        return self.epochs // 2 + self.decay_offset if self.decay_after is None else self.decay_after

    @property
    def momentum_after(self) -> float:
        """The momentum of the epochs after the decay."""
        return self.momentum if self.momentum_after_decay is None else self.momentum_after_decay

    @property
    def uses_dsa(self) -> bool:
        """Whether training batches go through DSA (a strategy other than "none" or "")."""
        return self.dsa_strategy not in ("", "none")

    @property
    def augmentation_name(self) -> str:
        """``dsa``, ``dc`` (DC's own augmentation) or ``none``: what the training batches go through."""
        return "dc" if self.dc_augment else "dsa" if self.uses_dsa else "none"

    def augmentation(self) -> Augmentation | None:
        """What augments the training batches, or None when the protocol trains without augmentation."""
        if self.dc_augment:
            return DCAugment(self.dc_augment)
        return DSA(self.dsa_strategy, DSAParams(align_corners=self.dsa_align_corners)) if self.uses_dsa else None

    def tested_after(self, epoch: int) -> bool:
        """Whether a run is tested after 0-based ``epoch`` for ``max_over_test_every``."""
        return self.max_over_test_every > 0 and epoch % self.max_over_test_every == 0

    def schedule(self, lr: float) -> SGDSchedule:
        """The protocol's SGD, epoch by epoch, from the initial ``lr``."""
        return SGDSchedule(lr=lr, epochs=self.epochs_run, momentum=self.momentum, weight_decay=self.weight_decay,
                           decay_after=self.decay_epoch, decay_factor=self.decay_factor,
                           momentum_after=self.momentum_after, reset_at_decay=self.reset_at_decay)

    def describe(self, lr: float) -> dict[str, Any]:
        """JSON-able description recorded with every result: every value that changes it."""
        return {"name": self.name, "epochs": self.epochs, "epochs_run": self.epochs_run, "optimizer": "sgd",
                "lr": lr, "lr_decay_after_epoch": self.decay_epoch, "lr_decay_factor": self.decay_factor,
                "reset_at_decay": self.reset_at_decay, "momentum": self.momentum,
                "momentum_after_decay": self.momentum_after, "weight_decay": self.weight_decay,
                "batch_size": self.batch_size, "augment": self.dsa_strategy or "none",
                "soft_label_loss": SOFT_LABEL_LOSS, "max_over_test_every": self.max_over_test_every,
                # keys only where a value differs from what every record before them had, so those keep their identity
                **({"max_over_test_epochs": f"0,{k},{2 * k},..."} if (k := self.max_over_test_every) else {}),
                **({"dsa_align_corners": False} if self.uses_dsa and not self.dsa_align_corners else {}),
                **({"dc_augment": self.dc_augment} if self.dc_augment else {}),
                **({"amp": self.amp} if self.amp != "none" else {})}


PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(protocol: Protocol) -> Protocol:
    """Add ``protocol`` to the registry under its name."""
    PROTOCOLS[protocol.name] = protocol
    return protocol


def get_protocol(name: str, **overrides: Any) -> Protocol:
    """The protocol ``name`` with ``overrides`` (field values, e.g. ``epochs=300``) applied."""
    if name not in PROTOCOLS:
        raise DDError(f"unknown evaluation protocol '{name}'; choose from {', '.join(list_protocols())}")
    fields = {f.name for f in dataclasses.fields(Protocol)} - {"name", "source"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise DDError(f"protocol {name}: unknown setting(s) {', '.join(unknown)}; "
                      f"choose from {', '.join(sorted(fields))}")
    return dataclasses.replace(PROTOCOLS[name], **overrides)


def list_protocols() -> list[str]:
    """The registered protocol names, sorted."""
    return sorted(PROTOCOLS)


MTT = register_protocol(Protocol())

DATM = register_protocol(Protocol(
    name="datm", batch_size=128,
    source="DATM utils/utils_baseline.py:472-534 evaluate_synset: MTT's schedule and SGD, batch_train 128 in every "
           "configs/<DS>/ConvIN/*.yaml, train_criterion=SoftCrossEntropy on the soft-logit labels (distill/DATM.py "
           "l.255-262, l.370)"))

AST = register_protocol(Protocol(
    name="ast", weight_decay=1e-3, decay_factor=0.5, momentum_after_decay=0.8, max_over_test_every=20,
    source="AST utils.py:493-534 evaluate_synset: SGD(lr = syn_lr, momentum 0.9, wd 1e-3); "
           "at epoch E//2+1 lr x0.5 with momentum 0.8 and wd 1e-3; tested after the epochs ep of range(E+1) with "
           "ep % 20 == 0 (0, 20, ..., E when 20 divides it) and returns the maximum (model selection on the test "
           "split, recorded here only beside the final accuracy); a re-created SGD at the decay (utils.py at "
           "8030869). The epoch count is MTT's default (1000), unconfirmed for AST's runs. "
           "AST's test.py (1500 epochs, batch 512, decays at E/3+1 and 2E/3+1) is a different protocol"))

DC_CODE = ("VICO-UoE/DatasetCondensation utils.py evaluate_synset (docs/reference-dc-dsa-dm.md §4): SGD(lr_net "
           "0.01, momentum 0.9, wd 5e-4), range(Epoch+1), lr x0.1 by a re-created optimiser after epoch Epoch//2+1 "
           "(the function MTT copied), batch_train 256, test after the last epoch; DiffAugment's affine_grid and "
           "grid_sample without align_corners (False). The caller passes lr = 0.01: these sets carry no learned lr")

DC = register_protocol(Protocol(
    name="dc", epochs=300, dsa_strategy="none", dsa_align_corners=False,
    source=DC_CODE + ". main.py --method DC: epoch_eval_train 300 and no augmentation when get_daparam's strategy is "
                     "'none', which it is for every dataset but MNIST (crop_scale_rotate, 1000 epochs) and for every "
                     "model but ConvNetBN (crop_noise, 1000 epochs): for_data gives those DC's augmentation "
                     "(dd/dcaugment.py) and 1000 epochs"))

DSA_PROTOCOL = register_protocol(Protocol(
    name="dsa", epochs=1000, dsa_align_corners=False,
    source=DC_CODE + ". main.py --method DSA: epoch_eval_train 1000 with DiffAugment(dsa_strategy) on every "
                     "training batch, per-sample parameters; README strategy color_crop_cutout_flip_scale_rotate"))

DM = register_protocol(Protocol(
    name="dm", epochs=1000, dsa_align_corners=False,
    source=DC_CODE + ". main_DM.py: epoch_eval_train 1000 with DiffAugment(dsa_strategy) on every training batch "
                     "(default strategy color_crop_cutout_flip_scale_rotate); the values of dsa"))

LEGACY_NAMES = {("dc", "dsa"): "dsa", ("dc", "dm"): "dm"}
"""(name a set recorded, its method) -> the protocol it means: before dsa and dm had their own, every DC, DSA and
DM set named ``dc``, then 300 (dm: 1000) epochs with DSA; its method's protocol is the one its paper used."""


def legacy_name(name: str, method: str | None) -> str:
    """The protocol a set's recorded ``name`` means for its ``method`` (``LEGACY_NAMES``, else ``name``)."""
    return LEGACY_NAMES.get((name, method or ""), name)


DD0 = register_protocol(Protocol(
    name="dd0", extra_epochs=0, decay_offset=-1, reset_at_decay=False,
    source="dd's own protocol before the named protocols (commit a6fb579, dd.training.Protocol), kept to compare "
           "records made then: mtt's SGD and augmentation, but epochs epochs (not epochs + 1) and lr x0.1 from "
           "0-based epoch epochs//2 on with the optimiser and its momentum kept; the reference codes never ran it"))


DC_AUGMENT_BY_MODEL = {"ConvNetBN": "crop_noise"}
DC_AUGMENT_BY_DATASET = {"mnist": "crop_scale_rotate"}
DC_AUGMENTED_EPOCHS = 1000


def for_data(protocol: Protocol, dataset: str, model: str, epochs_given: bool = False) -> Protocol:
    """``protocol`` as the DC code's ``get_daparam`` adapts it to the data and the evaluation model: protocol dc
    (without DSA) trains MNIST with DC's ``crop_scale_rotate`` and the model ConvNetBN with ``crop_noise`` (the
    model wins), 1000 epochs instead of 300 unless ``epochs_given`` (the user's count stays). Others unchanged."""
    if protocol.name != "dc" or protocol.uses_dsa or protocol.dc_augment:
        return protocol
    strategy = DC_AUGMENT_BY_MODEL.get(model) or DC_AUGMENT_BY_DATASET.get(dataset)
    if strategy is None:
        return protocol
    return dataclasses.replace(protocol, dc_augment=strategy,
                               **({} if epochs_given else {"epochs": DC_AUGMENTED_EPOCHS}))
