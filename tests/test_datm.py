"""DATM (Guo et al. 2024): the start-epoch window, the correct-expert initialisation, the masked-mean soft
labels, the threshold skip, and a run end to end on digits."""

import json
from types import SimpleNamespace

import pytest
import torch

import dd
from dd.buffer.store import TrajectoryStore
from dd.config import validate
from dd.device import make_generator
from dd.distill.config import DATMConfig
from dd.distill.engine import Distiller
from dd.distill.methods.datm import DATM, correct_init, masked_mean_logits, select_correct, window_upper
from dd.errors import DDError
from dd.functional import load_flat_
from dd.models import create_model
from dd.realdata import prepare_data
from tests.helpers import run_distill, tiny_mtt

DATM_SETTINGS = {"method": "datm", "pix_init": "correct", "soft_labels": True, "current_max_start_epoch": 1,
                 "expansion_end": 2}


# -- difficulty alignment -----------------------------------------------------------------------------
@pytest.mark.parametrize("iteration, upper", [(0, 10), (99, 10), (100, 11), (500, 15), (999, 19), (1000, 20),
                                              (5000, 20)])
def test_window_upper_grows_linearly_then_stays(iteration, upper):
    # T = 10, T+ = 20, expansion over 1000 iterations: 10 + floor(10 * it / 1000), capped at 20
    assert window_upper(iteration, 20, 10, 1000) == upper


def test_window_upper_without_sequential_generation_is_the_max():
    assert [window_upper(it, 20, None, 1000) for it in (0, 500, 5000)] == [20, 20, 20]


def test_start_epoch_is_drawn_from_the_window():
    method = DATM(SimpleNamespace(config=DATMConfig(min_start_epoch=2, current_max_start_epoch=4,
                                                       max_start_epoch=8, expansion_end=100)))
    early = {method.start_epoch(0, make_generator(s)) for s in range(60)}
    late = {method.start_epoch(100, make_generator(s)) for s in range(60)}
    assert early == {2, 3} and late == set(range(2, 8))


@pytest.mark.parametrize("extra, message", [
    ({"current_max_start_epoch": 0}, "--min-start-epoch < --current-max-start-epoch"),
    ({"current_max_start_epoch": 30}, "<= --max-start-epoch"),
    ({"current_max_start_epoch": 5, "expansion_end": 0}, "--expansion-end must be positive"),
    ({"lr_y": -1.0}, "--lr-y must be >= 0"),
    ({"threshold": 0.0}, "--threshold must be positive"),
])
def test_bad_datm_settings(extra, message):
    with pytest.raises(DDError, match=message):
        validate(DATMConfig(**extra))


# -- soft labels ----------------------------------------------------------------------------------------
def test_masked_mean_logits_by_hand():
    logits = torch.tensor([
        [[2.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]],  # expert 0: image 0 right, image 1 wrong, image 2 wrong
        [[0.0, 3.0, 0.0], [1.0, 2.0, 0.0], [0.0, 1.0, 0.0]],  # expert 1: wrong, right, wrong
        [[4.0, 0.0, 1.0], [3.0, 0.0, 0.0], [2.0, 2.5, 0.0]],  # expert 2: right, wrong, wrong
    ])
    soft = masked_mean_logits(logits, torch.tensor([0, 1, 2]))
    assert torch.allclose(soft[0], torch.tensor([3.0, 0.5, 0.5]))  # mean of experts 0 and 2
    assert torch.allclose(soft[1], torch.tensor([1.0, 2.0, 0.0]))  # expert 1 alone
    assert torch.allclose(soft[2], torch.tensor([1.0, 3.5 / 3, 0.0]))  # nobody right: mean of all three


# -- initialisation from correctly classified images ---------------------------------------------------
def test_select_correct_by_hand():
    order = torch.tensor([5, 3, 8, 1, 9])
    first = torch.tensor([False, True, False, False, False])
    second = torch.tensor([True, True, False, False, True])
    picks, short = select_correct(order, iter([first, second]), 3)
    assert picks.tolist() == [3, 5, 9] and not short
    picks, short = select_correct(order, iter([first]), 3)
    assert picks.tolist() == [3, 5, 8] and short


def test_select_correct_consults_later_experts_only_when_needed():
    def masks():
        yield torch.tensor([True, True, False])
        raise AssertionError("the second expert was evaluated although the first one sufficed")

    picks, short = select_correct(torch.tensor([7, 4, 2]), masks(), 2)
    assert picks.tolist() == [7, 4] and not short


class ListStore:
    """Stand-in store holding given trajectories [E+1, P] as experts 0, 1, ..."""

    root = "list-store"

    def __init__(self, trajectories):
        self.trajectories = trajectories

    def completed(self):
        return list(range(len(self.trajectories)))

    def read_expert(self, index):
        return self.trajectories[index]


@pytest.fixture(scope="module")
def digits_setup(digits_buffer):
    (root,) = digits_buffer.glob("digits/ConvNet/*")
    store = TrajectoryStore.open(root)
    full = prepare_data("digits", torch.device("cpu"))
    data = SimpleNamespace(spec=full.spec, train_images=full.train_images[:300], train_labels=full.train_labels[:300])
    net = create_model("ConvNet", 1, 10, (8, 8), seed=0).eval()
    return store, data, net


def predictions(net, flat, images):
    load_flat_(net, flat)
    with torch.no_grad():
        return net(images).argmax(1)


def real_rows(images, data):
    """The training-set row of each image (each must be exactly one real training image)."""
    rows = (images.flatten(1)[:, None] == data.train_images.flatten(1)[None]).all(2)
    assert (rows.sum(1) == 1).all(), "each picked image is one real training image"
    return rows.float().argmax(1)


@pytest.mark.e2e
def test_correct_init_takes_correct_images_of_the_first_expert_then_the_next(digits_setup):
    store, data, net = digits_setup
    trained = store.read_expert(store.completed()[1])
    blind = torch.zeros(1, trained.shape[1])  # all-zero weights: logits all 0, argmax 0, so only class 0 is right
    ctx = SimpleNamespace(config=DATMConfig(ipc=3), data=data, device=torch.device("cpu"),
                          store=ListStore([blind, trained]))
    images = correct_init(ctx, make_generator(0))

    assert images.shape == (30, 1, 8, 8)
    picked = real_rows(images, data)
    assert len(set(picked.tolist())) == 30
    classes = torch.arange(10).repeat_interleave(3)
    assert torch.equal(data.train_labels[picked], classes)
    predicted = predictions(net, trained[-1], data.train_images)
    g = make_generator(0)
    for c in range(10):
        idx = (data.train_labels == c).nonzero().flatten()
        order = idx[torch.randperm(len(idx), generator=g)].tolist()
        expected = order[:3] if c == 0 else [i for i in order if predicted[i] == c][:3]
        assert picked[3 * c:3 * c + 3].tolist() == expected
    assert (predicted[picked[3:]] == classes[3:]).all()


@pytest.mark.e2e
def test_correct_init_tops_up_a_class_no_expert_can_fill(digits_setup):
    store, data, _ = digits_setup
    blind = torch.zeros(1, store.read_expert(store.completed()[0]).shape[1])
    ctx = SimpleNamespace(config=DATMConfig(ipc=2), data=data, device=torch.device("cpu"),
                          store=ListStore([blind]))
    with pytest.warns(UserWarning, match="2 images of class\\(es\\) 1, 2, 3, 4, 5, 6, 7, 8, 9 correctly; topped up"):
        images = correct_init(ctx, make_generator(0))
    assert images.shape == (20, 1, 8, 8)
    assert torch.equal(data.train_labels[real_rows(images, data)], torch.arange(10).repeat_interleave(2))


# -- the engine with DATM: soft-label init, threshold skip, end to end ---------------------------------
def datm_config(buffer_root, run_dir, **extra) -> DATMConfig:
    values = dict(method="datm", buffer_dir=str(buffer_root), run_dir=str(run_dir), syn_steps=5, expert_epochs=2,
                  max_start_epoch=2, lr_img=100.0, device="cpu", pix_init="correct", soft_labels=True, lr_y=2.0)
    return DATMConfig(**{**values, **extra})


@pytest.mark.e2e
def test_soft_labels_start_as_masked_mean_expert_logits(tmp_path, digits_buffer, digits_setup):
    store, _, net = digits_setup
    distiller = Distiller(datm_config(digits_buffer, tmp_path / "r"))
    logits = []
    for index in store.completed():
        load_flat_(net, store.read_expert(index)[-1])
        with torch.no_grad():
            logits.append(net(distiller.images.detach()))
    classes = torch.arange(10)
    expected = masked_mean_logits(torch.stack(logits), classes)
    assert distiller.labels.shape == (10, 10) and distiller.labels.requires_grad
    assert torch.allclose(distiller.labels.detach(), expected, atol=1e-5)
    assert torch.equal(distiller.labels.detach().argmax(1), classes)
    before = distiller.labels.detach().clone()
    distiller.step()
    assert not torch.equal(distiller.labels.detach(), before), "soft labels are learned with lr_y > 0"
    fixed = Distiller(datm_config(digits_buffer, tmp_path / "f", lr_y=0.0, pix_init="real"))
    assert not fixed.labels.requires_grad and "y" not in fixed.optimizers


@pytest.mark.e2e
def test_soft_labels_first_expert_are_its_raw_logits(tmp_path, digits_buffer, digits_setup):
    """DATM.py l.309-319 (pix_init real): the logits of one expert's final epoch, no mask, no mean."""
    store, _, net = digits_setup
    distiller = Distiller(datm_config(digits_buffer, tmp_path / "r", pix_init="real", soft_label_init="first_expert"))
    load_flat_(net, store.read_expert(store.completed()[0])[-1])
    with torch.no_grad():
        expected = net(distiller.images.detach())
    assert torch.allclose(distiller.labels.detach(), expected, atol=1e-5) and distiller.labels.requires_grad
    mean = Distiller(datm_config(digits_buffer, tmp_path / "m", pix_init="real"))
    assert not torch.allclose(mean.labels.detach(), expected, atol=1e-3), "the default averages the experts"


@pytest.mark.e2e
def test_threshold_skip_leaves_the_state_untouched(tmp_path, digits_buffer):
    distiller = Distiller(datm_config(digits_buffer, tmp_path / "r", threshold=1e-9, pix_init="real"))
    state = [distiller.images.detach().clone(), distiller.labels.detach().clone(), distiller.syn_lr.item()]
    loss = distiller.step()
    assert loss > 1e-9 and distiller.method.skipped == 1
    assert torch.equal(distiller.images.detach(), state[0]) and torch.equal(distiller.labels.detach(), state[1])
    assert distiller.syn_lr.item() == state[2]
    assert all(not opt.state for opt in distiller.optimizers.values()), "no momentum buffer after a skip"
    distiller.config.threshold = None
    distiller.step()
    assert not torch.equal(distiller.images.detach(), state[0]) and distiller.method.skipped == 1


@pytest.mark.e2e
def test_datm_runs_end_to_end_and_logs_its_skips(tmp_path, digits_buffer):
    run = tmp_path / "run"
    run_distill(**tiny_mtt(digits_buffer, run, **DATM_SETTINGS, threshold=1.0, eval_epochs=5))
    synset = dd.load_synset(run / "synset")
    assert synset.meta["method"] == "datm" and synset.labels.shape == (10, 10) and synset.labels.is_floating_point()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [m for m in metrics if "loss" in m]
    assert [m["skipped"] for m in losses] == [sum(n["loss"] > 1.0 for n in losses[:i + 1]) for i in range(4)]
    assert any("val/ConvNet" in m for m in metrics)


def test_presets_load_and_follow_the_config_table():
    from pathlib import Path

    from dd.config import load_yaml, make_config

    folder = Path(__file__).parents[1] / "experiments" / "datm"
    presets = {p.stem: make_config(DATMConfig, load_yaml(p), str(p)) for p in folder.glob("*.yaml")}
    assert set(presets) >= {"cifar10_ipc1", "cifar10_ipc10", "cifar10_ipc50", "cifar10_ipc500", "cifar10_ipc1000",
                            "cifar100_ipc1", "cifar100_ipc10", "cifar100_ipc50", "cifar100_ipc100", "tiny_ipc1",
                            "tiny_ipc10", "tiny_ipc50", "digits_ipc1", "digits_ipc10"}
    for config in presets.values():
        validate(config)
        DATM(SimpleNamespace(config=config))
        assert config.method == "datm" and config.soft_labels and config.threshold is not None
    c10 = presets["cifar10_ipc10"]
    assert (c10.current_max_start_epoch, c10.max_start_epoch, c10.expansion_end, c10.batch_syn) == (10, 20, 1000, 100)
    assert presets["cifar10_ipc1"].threshold == 1.1 and presets["cifar10_ipc1"].current_max_start_epoch is None
    assert presets["cifar100_ipc50"].pix_init == "real" and presets["tiny_ipc1"].model == "ConvNetD4"
    assert presets["cifar100_ipc50"].soft_label_init == "first_expert"
