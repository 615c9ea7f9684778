"""FTD (Du et al. 2023): the EMA of the synthetic images by hand, its place in the engine's loop, the
saved and freshly evaluated EMA set, and exact resume with the EMA in the checkpoint."""

import json
from types import SimpleNamespace

import pytest
import torch

import dd
from dd.config import validate
from dd.distill.config import FTDConfig, MTTConfig
from dd.distill.engine import Distiller
from dd.distill.methods.ftd import FTD, ema_update_
from dd.errors import DDError
from dd.realdata import prepare_data
from tests.helpers import run_distill, tiny_mtt

FTD_SETTINGS = {"method": "ftd", "ema_decay": 0.5, "eval_epochs": 5}


def test_ema_update_by_hand():
    ema = torch.tensor([0.0, 4.0])
    ema_update_(ema, torch.tensor([2.0, 0.0]), 0.5)
    assert ema.tolist() == [1.0, 2.0]
    ema_update_(ema, torch.tensor([3.0, 2.0]), 0.5)
    assert ema.tolist() == [2.0, 2.0]
    ema_update_(ema, torch.tensor([10.0, 0.0]), 0.9)
    assert ema.tolist() == pytest.approx([2.8, 1.8])


@pytest.mark.parametrize("decay", [-0.1, 1.5])
def test_bad_ema_decay(decay):
    with pytest.raises(DDError, match=r"--ema-decay must be in \[0, 1\]"):
        validate(FTDConfig(ema_decay=decay))


@pytest.mark.e2e
def test_ema_follows_the_accepted_outer_steps(tmp_path, digits_buffer):
    config = FTDConfig(ema_decay=0.5, buffer_dir=str(digits_buffer), run_dir=str(tmp_path / "r"),
                           syn_steps=5, expert_epochs=2, max_start_epoch=2, lr_img=100.0, device="cpu")
    distiller = Distiller(config)
    x0 = distiller.images.detach().clone()
    assert torch.equal(distiller.method.ema, x0)
    distiller.step()
    x1 = distiller.images.detach().clone()
    distiller.step()
    x2 = distiller.images.detach().clone()
    assert not torch.equal(x1, x0) and not torch.equal(x2, x1)
    # ema_2 = 0.5 * (0.5 * x0 + 0.5 * x1) + 0.5 * x2
    assert torch.allclose(distiller.method.ema, 0.25 * x0 + 0.25 * x1 + 0.5 * x2, atol=1e-6)
    assert set(distiller.sets()) == {"", "ema"}


@pytest.fixture(scope="module")
def ftd_runs(digits_buffer, tmp_path_factory):
    """A 4-iteration FTD run, and the same run stopped after 2 iterations and resumed."""
    root = tmp_path_factory.mktemp("ftd")
    full, split = root / "full", root / "split"
    run_distill(**tiny_mtt(digits_buffer, full, **FTD_SETTINGS))
    run_distill(**tiny_mtt(digits_buffer, split, **FTD_SETTINGS, iterations=2))
    run_distill(**tiny_mtt(digits_buffer, split, **FTD_SETTINGS, resume=True))
    return full, split


@pytest.mark.e2e
def test_ema_set_is_saved_and_evaluated_on_fresh_networks(ftd_runs):
    from dd.training import Protocol, train_and_test

    full, _ = ftd_runs
    raw, ema = dd.load_synset(full / "synset"), dd.load_synset(full / "synset_ema")
    assert ema.meta["method"] == "ftd-ema" and raw.meta["method"] == "ftd"
    assert ema.images.shape == raw.images.shape and not torch.equal(ema.images, raw.images)
    assert torch.equal(ema.labels, raw.labels) and ema.lr == raw.lr
    metrics = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    (final,) = [m for m in metrics if "val/ema/ConvNet" in m]
    assert "val/ConvNet" in final
    # the same accuracy as a fresh network trained on the saved EMA set alone (the reference would have
    # trained the network on the raw set first)
    cfg = MTTConfig(eval_epochs=5)
    data = prepare_data("digits", torch.device("cpu"), val_fraction=cfg.val_fraction, val_seed=cfg.val_seed)
    protocol = Protocol(epochs=cfg.eval_epochs, dsa_strategy=cfg.dsa_strategy)
    alone = train_and_test("ConvNet", 1, 10, (8, 8), (ema.images, ema.labels), data.val, ema.lr, protocol, seed=0)
    assert final["val/ema/ConvNet"] == pytest.approx(alone)


@pytest.mark.e2e
def test_resumed_ftd_equals_uninterrupted_ema_included(ftd_runs):
    full, split = ftd_runs
    for folder in ("synset", "synset_ema"):
        a, b = dd.load_synset(full / folder), dd.load_synset(split / folder)
        assert torch.equal(a.images, b.images) and a.lr == b.lr


def test_presets_load_and_follow_table_7():
    from pathlib import Path

    from dd.config import load_yaml, make_config

    folder = Path(__file__).parents[1] / "experiments" / "ftd"
    presets = {p.stem: make_config(FTDConfig, load_yaml(p), str(p)) for p in folder.glob("*.yaml")}
    assert set(presets) >= {"cifar10_ipc1", "cifar10_ipc10", "cifar10_ipc50", "cifar100_ipc1", "cifar100_ipc10",
                            "cifar100_ipc50", "tiny_ipc1", "tiny_ipc10", "digits_ipc1", "digits_ipc10"}
    for config in presets.values():
        validate(config)
        FTD(SimpleNamespace(config=config))
        assert config.method == "ftd"
    assert [presets[f"cifar10_ipc{k}"].ema_decay for k in (1, 10, 50)] == [0.9999, 0.9995, 0.999]
    assert (presets["cifar10_ipc10"].syn_steps, presets["cifar10_ipc10"].lr_teacher) == (30, 0.001)
    assert (presets["tiny_ipc10"].batch_syn, presets["tiny_ipc10"].model) == (500, "ConvNetD4")
