"""Builders shared by the test modules (fixtures live in conftest.py): dd's commands as subprocesses, a distillation
through the library, the settings and flags of tiny stages, small sets, stores and problems built by hand,
hand-written references, and the assertions that several modules make."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import dd
from dd.augment import DSA
from dd.cli import run_cli
from dd.config import load_yaml, make_config
from dd.device import make_generator
from dd.distill import distill, get_method
from dd.distill.unroll import Student, make_plan
from dd.functional import ParamSpec, flatten_params
from dd.models import create_model
from dd.training import eval_generator

# dd's commands as real subprocesses: one CPU thread each, this checkout's code first on the path.

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]


def python_m(*args: object) -> list[str]:
    """``python -m <args>`` as an argument list."""
    return [sys.executable, "-m", *map(str, args)]


def run_ok(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run ``cmd`` to completion; fail the test with its stderr unless it exits 0."""
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


MLP_BUFFER = ["dd.buffer", "--model", "MLP", "--num-experts", "3", "--epochs", "2", "--batch-size", "64",
              "--test-every", "2", "--device", "cpu"]


# Tiny stages on digits: their config values, and the same as flags.


def as_flags(values: dict) -> list[str]:
    """The command-line flags that set config ``values`` (``{"num_experts": 2}`` -> ``--num-experts 2``)."""
    return [part for name, value in values.items() for part in ("--" + name.replace("_", "-"), str(value))]


TINY_BUFFER = {"num_experts": 2, "epochs": 4, "batch_size": 64, "test_every": 2, "device": "cpu"}
TINY_TEACHER = {"teacher": "barlow_twins", "dataset": "digits-0to4", "model": "ConvNetW32", "epochs": 2,
                "batch_size": 128, "lr": 0.05, "momentum": 0.9, "proj_dim": 32, "device": "cpu"}

TINY_BUFFER_FLAGS = as_flags(TINY_BUFFER)
TINY_TEACHER_FLAGS = as_flags(TINY_TEACHER)


def tiny_mtt(buffer_root, run_dir, **changes) -> dict:
    """The settings of a 4-iteration MTT distillation on the experts under ``buffer_root`` into ``run_dir``, with
    ``changes`` over them."""
    return {"buffer_dir": str(buffer_root), "run_dir": str(run_dir), "iterations": 4, "syn_steps": 5,
            "expert_epochs": 2, "max_start_epoch": 2, "lr_img": 100, "eval_every": 0, "eval_epochs": 20,
            "checkpoint_every": 2, "log_every": 1, "device": "cpu", **changes}


def flags(buffer_root, run_dir, *extra):
    """The flags of ``tiny_mtt``'s distillation, then ``extra``."""
    return [*as_flags(tiny_mtt(buffer_root, run_dir)), *extra]


def run_distill(preset: str | Path | None = None, **settings):
    """Distil through the library (``dd.distill.distill``) as ``python -m dd.distill [--config preset]`` with
    ``settings`` as its flags would (names with underscores): the method's config from the preset's values and
    ``settings`` over them (the method: ``settings``', else the preset's, else mtt). The finished run."""
    values = {**(load_yaml(preset) if preset else {}), **settings}
    return distill(make_config(get_method(values.get("method") or "mtt").config, values))


# Sets, records and run folders.


def make_set(folder, soft: bool, pick: int = 0, **extra):
    """One real digit per class (the ``pick``-th of each) as a set; ``soft``: [10, 10] logits whose argmax
    is the true class; ``extra`` adds metadata. The set records the fingerprint of digits, as dd.distill's do
    (``data=None``: a set made before fingerprints)."""
    from dd.data import Preprocessor, load_dataset
    from dd.identity import data_fingerprint
    raw = load_dataset("digits")
    extra.setdefault("data", data_fingerprint("digits", 1, (8, 8), 10, raw.train_images, raw.train_labels,
                                              raw.test_images, raw.test_labels))
    pre = Preprocessor.fit("standard", raw.spec, raw.train_images)
    tensors, meta = pre.state()
    idx = torch.cat([torch.nonzero(raw.train_labels == c)[pick : pick + 1, 0] for c in range(10)])
    labels = raw.train_labels[idx]
    if soft:
        noise = torch.rand(10, 10, generator=torch.Generator().manual_seed(0))
        labels = 3.0 * torch.nn.functional.one_hot(labels, 10).float() + noise
    synset = dd.SynSet(pre(raw.train_images[idx]), labels, 0.01,
                       {"dataset": "digits", "ipc": 1, "method": "datm" if soft else "mtt", "preprocess_meta": meta,
                        **extra},
                       tensors)
    return dd.save_synset(folder, synset)


def read_runs(folder):
    return json.loads((folder / "results.json").read_text())["runs"]


def logged_iterations(run_dir) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [record["iteration"] for record in map(json.loads, lines) if "loss" in record]


def assert_same_set(a, b) -> None:
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.lr == b.lr


# A toy trajectory store's layout and contents.

SPEC = ParamSpec(("conv.weight", "conv.bias", "fc.weight"), ((2, 1, 3, 3), (2,), (3, 4)))  # P = 32
EPOCHS = 3
RECIPE = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 256,
          "epochs": EPOCHS, "dsa_strategy": "color_crop_cutout_flip_scale_rotate", "preprocess": "standard"}


def header(**recipe_changes) -> dict:
    """The manifest header of a toy store of ``SPEC`` parameters, with ``recipe_changes`` to ``RECIPE``."""
    return {"dataset": {"name": "toy", "preprocess": {"kind": "standard"}}, "model": {"name": "Toy"},
            "param_spec": SPEC.to_json(), "recipe": {**RECIPE, **recipe_changes}, "num_epochs": EPOCHS}


def trajectory(seed: int) -> torch.Tensor:
    """A random toy trajectory [EPOCHS+1, P], the same for the same ``seed``."""
    return torch.randn(EPOCHS + 1, SPEC.numel, generator=torch.Generator().manual_seed(seed))


# The inner loop: a problem small enough for float64 finite differences.


def tiny_problem(dtype=torch.float64, strategy="none"):
    """(model, student, images [6,1,4,4], labels, start w0, target, plan) of a 3-class toy inner loop."""
    model = create_model("ConvNet", 1, 3, (4, 4), seed=0, width=2, depth=1).to(dtype)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(6, 1, 4, 4, generator=g, dtype=dtype)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    w0 = flatten_params(model)
    target = w0 + 0.1 * torch.randn(w0.shape, generator=g, dtype=dtype)
    plan = make_plan(6, 4, 5, make_generator(3))
    return model, Student(model, DSA(strategy)), images, labels, w0, target, plan


def assert_matches_finite_differences(loss_of, images: torch.Tensor, lr: torch.Tensor,
                                      indices=(0, 17, 40, 95), eps: float = 1e-6) -> None:
    """``loss_of(images, lr)``'s autograd gradient w.r.t. a few image entries and the lr equals
    central finite differences."""
    images = images.detach().clone().requires_grad_(True)
    lr = lr.detach().clone().requires_grad_(True)
    loss_of(images, lr).backward()
    x, rate = images.detach(), lr.detach()
    for flat_index in indices:
        bump = torch.zeros_like(x).view(-1)
        bump[flat_index] = eps
        bump = bump.view_as(x)
        numeric = (loss_of(x + bump, rate) - loss_of(x - bump, rate)) / (2 * eps)
        assert torch.allclose(images.grad.view(-1)[flat_index], numeric, rtol=1e-4, atol=1e-9), flat_index
    numeric_lr = (loss_of(x, rate + eps) - loss_of(x, rate - eps)) / (2 * eps)
    assert torch.allclose(lr.grad, numeric_lr, rtol=1e-4)
    assert images.grad.abs().sum() > 0


# Instance-norm networks that reach a 1x1 feature map before a norm at this input size (refused).
ONE_BY_ONE = {(1, (8, 8)): {"ConvNetD4", "ConvNetD5", "ConvNetD6", "ConvNetD7", "ConvNetD8", "ResNet18",
                            "ResNet18_AP", "VGG11"},
              (3, (32, 32)): {"ConvNetD6", "ConvNetD7", "ConvNetD8"}}


# ViTs whose patch does not divide the image (refused).
INDIVISIBLE = {(1, (8, 8)): {"ViTP16"}, (3, (32, 32)): set()}


# Evaluation protocols: the reference loop written out.

MLP = ("MLP", 1, 10, (8, 8))


def reference_evaluate_synset(images, labels, lr, epoch_eval_train, batch_train, seed):
    """MTT's evaluate_synset (GeorgeCazenavette/mtt-distillation at 50dccea, utils.py:352-389), without DSA: a fresh
    SGD(momentum 0.9, wd 5e-4), Epoch+1 epochs, and after epoch Epoch//2+1 a new SGD at lr * 0.1."""
    net = create_model(*MLP, seed=seed)
    generator = eval_generator(seed)  # dd's batch order, so only the schedule is compared
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    lr_schedule = [epoch_eval_train // 2 + 1]
    for ep in range(epoch_eval_train + 1):
        net.train()
        for idx in torch.randperm(images.shape[0], generator=generator).split(batch_train):
            optimizer.zero_grad()
            F.cross_entropy(net(images[idx]), labels[idx]).backward()
            optimizer.step()
        if ep in lr_schedule:
            lr *= 0.1
            optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    return net


# Bad input: the one error line, the artefacts a case damages, and which cases need trained experts.

def one_error_line(capsys, main, argv, code: int = 2) -> str:
    """Run ``main`` through run_cli; assert the exit status and a single ``error:`` line, last, with no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert sum(line.startswith("error: ") for line in lines) == 1 and lines[-1].startswith("error: "), err
    return lines[-1]


@dataclass
class Inputs:
    """Lazily built artefacts a case may need, in the test's own folder."""

    tmp: Path
    request: pytest.FixtureRequest

    @cached_property
    def buffer(self) -> Path:
        return self.request.getfixturevalue("digits_buffer")

    @cached_property
    def store(self) -> Path:
        (store,) = self.buffer.glob("digits/ConvNet/*")
        return store

    @cached_property
    def synset(self) -> Path:
        return make_set(self.tmp / "set", soft=False)

    def distill(self, *extra: str, buffer: str | None = None) -> list[str]:
        buffer_flags = ["--buffer", buffer] if buffer else ["--buffer-dir", str(self.buffer)]
        return [*buffer_flags, "--run-dir", str(self.tmp / "run"), "--iterations", "2", "--syn-steps", "2",
                "--expert-epochs", "2", "--max-start-epoch", "2", "--eval-every", "0", "--device", "cpu", *extra]

    def damaged_store(self, damage: str) -> str:
        """A copy of the digits store with both expert files truncated or with one bit flipped."""
        store = self.tmp / "store"
        shutil.copytree(self.store, store)
        for path in store.glob("expert_*.safetensors"):
            data = bytearray(path.read_bytes())
            if damage == "truncate":
                data = data[: len(data) // 2]
            else:
                data[-5] ^= 0x01
            path.write_bytes(bytes(data))
        return str(store)

    def damaged_synset(self, damage: str) -> str:
        path = self.synset / "synset.safetensors"
        data = bytearray(path.read_bytes())
        if damage == "truncate":
            data = data[:-40]
        else:
            data[-3] ^= 0x04  # a bit of the last tensor: the file still parses, only the checksum knows
        path.write_bytes(bytes(data))
        return str(self.synset)

    def folder_dataset(self, layout: str) -> list[str]:
        """Buffer flags on an ImageFolder tree with an empty class folder, with no images at all, or with
        one image in every class folder ("complete")."""
        root = self.tmp / "images"
        for split in ("train", "val"):
            for cls in ("a", "b"):
                (root / split / cls).mkdir(parents=True)
                if layout == "complete" or (layout == "empty class" and not (split == "train" and cls == "b")):
                    Image.new("RGB", (4, 4)).save(root / split / cls / "x.png")
                elif layout == "no images":
                    (root / split / cls / "notes.txt").write_text("not an image")
        return ["--dataset", "imagefolder", "--data-path", str(root), "--buffer-dir", str(self.tmp / "b"),
                "--device", "cpu"]

    def file(self, name: str, text: str | bytes) -> str:
        path = self.tmp / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    def foreign_manifest(self) -> str:
        """A copy of the digits store whose manifest claims one more epoch than its experts hold."""
        store = self.tmp / "store"
        shutil.copytree(self.store, store)
        manifest = json.loads((store / "manifest.json").read_text())
        manifest["num_epochs"] += 1
        (store / "manifest.json").write_text(json.dumps(manifest))
        return str(store)

    def foreign_results(self) -> str:
        """An eval folder whose results.json is valid JSON but not dd's."""
        (self.tmp / "ev").mkdir()
        (self.tmp / "ev" / "results.json").write_text('{"runs": [{"acc": 1}]}')
        return str(self.tmp / "ev")

    def bomb_folder(self, monkeypatch: pytest.MonkeyPatch) -> list[str]:
        """Buffer flags on an ImageFolder tree holding one image over PIL's decompression-bomb limit (the
        limit lowered to keep the file small; a 20000x20000 PNG trips the default one the same way)."""
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
        flags = self.folder_dataset("complete")
        Image.new("L", (100, 100)).save(self.tmp / "images" / "train" / "a" / "big.png")
        return flags


def cases_on_experts_as_e2e(cases: dict, readers: tuple[str, ...] = ()) -> list:
    """The names of ``cases`` ({name: (main, argv builder, words)}) as parameters, those whose argv builder reads the
    session's trained experts (``Inputs.buffer``/``store``/``distill``, or one of the module's ``readers``) marked
    e2e: such a case trains them when no test has yet."""
    names = {"buffer", "store", "distill", "damaged_store", "foreign_manifest", *readers}
    return [pytest.param(name, marks=pytest.mark.e2e) if names & set(build.__code__.co_names) else name
            for name, (_, build, _) in cases.items()]
