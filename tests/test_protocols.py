"""Named evaluation protocols (dd.protocols): epochs run, the lr and momentum of every epoch, optimiser
resets, describe(), the reference loop of MTT's evaluate_synset written out by hand, batched seeds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import dd.multiseed as multiseed
import dd.training as training
from dd.data import load_dataset
from dd.errors import DDError
from dd.functional import flatten_params
from dd.multiseed import train_and_score_seeds
from dd.protocols import Protocol, for_data, get_protocol, legacy_name, list_protocols
from dd.training import PeriodicTests, train_and_score, train_and_test, train_model
from tests.helpers import MLP, reference_evaluate_synset


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    raw = load_dataset("digits")
    return (raw.train_images[:20], raw.train_labels[:20]), (raw.test_images[:100], raw.test_labels[:100])


def record_epochs(monkeypatch) -> list[dict]:
    """What the optimiser of each epoch of ``dd.training.fit`` holds when the epoch starts."""
    seen: list[dict] = []
    real = training.train_epoch

    def recording(model, images, labels, optimizer, batch_size, *args, **kwargs):
        (group,) = optimizer.param_groups
        seen.append({"lr": group["lr"], "momentum": group["momentum"], "weight_decay": group["weight_decay"],
                     "batch_size": batch_size, "optimizer": id(optimizer), "buffers": len(optimizer.state)})
        real(model, images, labels, optimizer, batch_size, *args, **kwargs)

    monkeypatch.setattr(training, "train_epoch", recording)
    return seen


# name -> (lr factor, momentum after the decay, weight decay, batch size); epochs=6 for all: 7 run, decay after 4
EXPECTED = {"mtt": (0.1, 0.9, 5e-4, 256), "datm": (0.1, 0.9, 5e-4, 128), "ast": (0.5, 0.8, 1e-3, 256),
            "dc": (0.1, 0.9, 5e-4, 256), "dsa": (0.1, 0.9, 5e-4, 256), "dm": (0.1, 0.9, 5e-4, 256)}


def test_the_registry():
    assert list_protocols() == sorted([*EXPECTED, "dd0"])
    assert Protocol() == get_protocol("mtt")  # the class defaults are the mtt protocol
    assert all(get_protocol(name).source for name in list_protocols())
    assert [get_protocol(name).epochs for name in ("mtt", "datm", "ast", "dc", "dsa", "dm")] == [
        1000, 1000, 1000, 300, 1000, 1000]
    assert get_protocol("ast").max_over_test_every == 20 and get_protocol("mtt").max_over_test_every == 0
    with pytest.raises(DDError, match="unknown evaluation protocol 'nope'"):
        get_protocol("nope")
    with pytest.raises(DDError, match="unknown setting"):
        get_protocol("mtt", epoch=3)
    with pytest.raises(DDError, match="epochs must be positive"):
        get_protocol("mtt", epochs=0)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_epochs_lr_momentum_and_reset_of_every_epoch(name, digits, monkeypatch):
    train, _ = digits
    factor, momentum_after, weight_decay, batch_size = EXPECTED[name]
    protocol = get_protocol(name, epochs=6, dsa_strategy="none")
    seen = record_epochs(monkeypatch)
    train_model(*MLP, train, 0.05, protocol, seed=0)
    assert len(seen) == 7 == protocol.epochs_run  # range(Epoch + 1)
    assert [e["lr"] for e in seen] == pytest.approx([0.05] * 5 + [0.05 * factor] * 2)  # decay after epoch 6//2+1
    assert [e["momentum"] for e in seen] == [0.9] * 5 + [momentum_after] * 2
    assert {e["weight_decay"] for e in seen} == {weight_decay} and {e["batch_size"] for e in seen} == {batch_size}
    optimizers = [e["optimizer"] for e in seen]
    assert len(set(optimizers[:5])) == 1 and len(set(optimizers[5:])) == 1 and optimizers[4] != optimizers[5]
    assert [e["buffers"] > 0 for e in seen] == [False, True, True, True, True, False, True]  # momentum reset


def test_without_reset_the_optimiser_and_its_momentum_are_kept(digits, monkeypatch):
    train, _ = digits
    seen = record_epochs(monkeypatch)
    train_model(*MLP, train, 0.05, get_protocol("mtt", epochs=6, dsa_strategy="none", reset_at_decay=False), seed=0)
    assert len({e["optimizer"] for e in seen}) == 1
    assert all(e["buffers"] > 0 for e in seen[1:])
    assert [e["lr"] for e in seen] == pytest.approx([0.05] * 5 + [0.005] * 2)


def test_dd0_is_the_earlier_protocol_epochs_epochs_and_decay_at_half_with_momentum_kept(digits, monkeypatch):
    train, _ = digits
    seen = record_epochs(monkeypatch)
    train_model(*MLP, train, 0.05, get_protocol("dd0", epochs=6, dsa_strategy="none"), seed=0)
    assert [e["lr"] for e in seen] == pytest.approx([0.05] * 3 + [0.005] * 3)  # a6fb579: epoch >= epochs // 2
    assert len({e["optimizer"] for e in seen}) == 1 and all(e["buffers"] > 0 for e in seen[1:])
    assert {e["momentum"] for e in seen} == {0.9} and {e["weight_decay"] for e in seen} == {5e-4}


def test_mtt_equals_the_reference_loop_written_out(digits):
    train, _ = digits
    protocol = get_protocol("mtt", epochs=6, batch_size=8, dsa_strategy="none")  # 3 batches: 8 + 8 + 4
    reference = flatten_params(reference_evaluate_synset(*train, 0.05, 6, 8, seed=2))
    assert torch.equal(flatten_params(train_model(*MLP, train, 0.05, protocol, seed=2)), reference)
    kept = train_model(*MLP, train, 0.05, dataclasses.replace(protocol, reset_at_decay=False), seed=2)
    assert not torch.equal(flatten_params(kept), reference)  # the comparison sees the momentum reset


def test_mtt_describe():
    assert get_protocol("mtt").describe(0.01) == {
        "name": "mtt", "epochs": 1000, "epochs_run": 1001, "optimizer": "sgd", "lr": 0.01,
        "lr_decay_after_epoch": 501, "lr_decay_factor": 0.1, "reset_at_decay": True, "momentum": 0.9,
        "momentum_after_decay": 0.9, "weight_decay": 5e-4, "batch_size": 256,
        "augment": "color_crop_cutout_flip_scale_rotate", "soft_label_loss": "soft_ce", "max_over_test_every": 0}


def test_describe_tells_every_protocol_and_every_setting_apart():
    described = [repr(get_protocol(name).describe(0.01)) for name in list_protocols()]
    assert len(set(described)) == len(described)
    base = get_protocol("mtt")
    changed = {"name": "other", "epochs": 300, "extra_epochs": 0, "decay_after": 3, "decay_offset": 0,
               "decay_factor": 0.5,
               "reset_at_decay": False, "momentum": 0.5, "momentum_after_decay": 0.8, "weight_decay": 1e-3,
               "batch_size": 128, "dsa_strategy": "none", "dsa_align_corners": False, "max_over_test_every": 20,
               "amp": "bf16", "dc_augment": "crop"}
    assert set(changed) == {f.name for f in dataclasses.fields(Protocol)} - {"source"}  # every result-changing field
    for field, value in changed.items():
        extra = {"dsa_strategy": "none"} if field == "dc_augment" else {}  # DC's augmentation replaces DSA
        other = dataclasses.replace(base, **extra)
        assert dataclasses.replace(other, **{field: value}).describe(0.01) != other.describe(0.01), field
    assert base.describe(0.01) != base.describe(0.02)


def test_periodic_tests_of_ast():
    tests = PeriodicTests(get_protocol("ast"), (torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long)))
    due = [e for e in range(get_protocol("ast").epochs_run) if tests.due(e)]
    assert due == list(range(0, 1001, 20))  # AST's ep % 20 == 0 over range(1001): 0, 20, ..., 1000 (the last)
    assert not any(PeriodicTests(get_protocol("mtt"), tests.test).due(e) for e in range(1001))


def test_ast_records_name_their_test_epochs_so_earlier_ones_never_merge_with_them():
    """Records before this semantics tested after epochs 19, 39, ... with the same max_over_test_every: the key
    max_over_test_epochs (only where max_over_test_every > 0) keeps them apart; mtt's records keep theirs."""
    assert get_protocol("ast").describe(0.01)["max_over_test_epochs"] == "0,20,40,..."
    assert "max_over_test_epochs" not in get_protocol("mtt").describe(0.01)


def test_ast_score_keeps_the_final_accuracy_as_headline(digits):
    train, test = digits
    ast = get_protocol("ast", epochs=6, max_over_test_every=2, dsa_strategy="none")
    score = train_and_score(*MLP, train, test, 0.05, ast, seed=0)
    assert score.final == train_and_test(*MLP, train, test, 0.05, ast, seed=0)
    assert score.max_over_epochs is not None and score.max_over_epochs >= score.final
    assert train_and_score(*MLP, train, test, 0.05, get_protocol("mtt", epochs=6), seed=0).max_over_epochs is None


def test_batched_seeds_follow_the_sequential_runs_under_ast(digits, monkeypatch):
    """A reset, a momentum change and periodic tests: the vmapped seeds match their sequential runs."""
    train, test = digits
    ast = get_protocol("ast", epochs=4, batch_size=8, max_over_test_every=2)
    args = ("ConvNetW32", 1, 10, (8, 8))
    sequential = [train_and_score(*args, train, test, 0.01, ast, seed=s) for s in (0, 1)]

    def no_fallback(*a, **k):
        raise AssertionError("fell back to sequential training")

    monkeypatch.setattr(multiseed, "train_model", no_fallback)
    assert train_and_score_seeds(*args, train, test, 0.01, ast, [0, 1]) == sequential


def test_each_method_names_the_protocol_its_sets_expect():
    from dd.distill.methods import METHODS
    trajectory = {name: spec.hooks.protocol for name, spec in METHODS.items() if spec.hooks}
    assert trajectory == {"mtt": "mtt", "ftd": "mtt", "datm": "datm", "ast": "ast", "tesla": "mtt"}


# name -> (epochs run, 0-based epoch after which the lr decays, augmentation, align_corners in the record), by hand
# from the DC code: main.py epoch_eval_train 300 for DC without augmentation, 1000 with DSA (DSA, main_DM.py).
DC_FAMILY = {"dc": (301, 151, "none", None), "dsa": (1001, 501, "color_crop_cutout_flip_scale_rotate", False),
             "dm": (1001, 501, "color_crop_cutout_flip_scale_rotate", False)}


@pytest.mark.parametrize("name", sorted(DC_FAMILY))
def test_dc_dsa_dm_protocols_pin_epochs_augmentation_and_schedule(name):
    epochs_run, decay, augment, align = DC_FAMILY[name]
    described = get_protocol(name).describe(0.01)
    assert described == {
        "name": name, "epochs": epochs_run - 1, "epochs_run": epochs_run, "optimizer": "sgd", "lr": 0.01,
        "lr_decay_after_epoch": decay, "lr_decay_factor": 0.1, "reset_at_decay": True, "momentum": 0.9,
        "momentum_after_decay": 0.9, "weight_decay": 5e-4, "batch_size": 256, "augment": augment,
        "soft_label_loss": "soft_ce", "max_over_test_every": 0,
        **({} if align is None else {"dsa_align_corners": align})}
    dsa = get_protocol(name).augmentation()
    assert (dsa is None) == (augment == "none")
    assert dsa is None or (dsa.strategy == augment and dsa.params.align_corners is False)
    assert get_protocol("mtt").augmentation().params.align_corners is True  # MTT's DiffAugment passes True


# (dataset, model) -> (epochs run, DC augmentation) of protocol dc, by hand from the DC code's get_daparam (MNIST:
# crop_scale_rotate; the model ConvNetBN: crop_noise, which wins) and main.py (1000 epochs with it, else 300).
DC_BY_DATA = {("fashionmnist", "ConvNet"): (301, ""), ("mnist", "ConvNet"): (1001, "crop_scale_rotate"),
              ("cifar10", "ConvNetBN"): (1001, "crop_noise"), ("mnist", "ConvNetBN"): (1001, "crop_noise")}


@pytest.mark.parametrize("data", sorted(DC_BY_DATA))
def test_protocol_dc_takes_the_dc_codes_augmentation_where_it_gave_one(data):
    epochs_run, strategy = DC_BY_DATA[data]
    protocol = for_data(get_protocol("dc"), *data)
    assert (protocol.epochs_run, protocol.dc_augment, protocol.dsa_strategy) == (epochs_run, strategy, "none")
    assert protocol.decay_epoch == (epochs_run - 1) // 2 + 1
    assert protocol.augmentation_name == ("dc" if strategy else "none")
    assert (protocol.describe(0.01).get("dc_augment"), protocol.describe(0.01)["augment"]) == (strategy or None, "none")
    if strategy:
        assert protocol.augmentation().strategy == strategy
        assert for_data(get_protocol("dc", epochs=50), *data, epochs_given=True).epochs == 50  # --epochs stays
    for name in ("dsa", "dm", "mtt"):  # only dc follows get_daparam; a --dsa-strategy given to dc wins too
        assert for_data(get_protocol(name), *data) == get_protocol(name)
    assert for_data(get_protocol("dc", dsa_strategy="crop"), *data).dc_augment == ""


def test_dc_augmentation_replaces_dsa_and_names_its_ops():
    with pytest.raises(DDError, match="replaces DSA"):
        get_protocol("mtt", dc_augment="crop")
    with pytest.raises(DDError, match="unknown DC augmentation op"):
        get_protocol("dc", dc_augment="crop_flip")


def test_a_dc_augmented_protocol_trains(digits):
    """DC's augmentation runs inside the protocol's training loop: the network differs from the un-augmented one,
    and the same seed gives the same network."""
    train, _ = digits
    plain = get_protocol("dc", epochs=2)
    augmented = dataclasses.replace(plain, dc_augment="crop_scale_rotate_noise")
    nets = [flatten_params(train_model(*MLP, train, 0.01, p, seed=1)) for p in (plain, augmented, augmented)]
    assert not torch.equal(nets[0], nets[1]) and torch.equal(nets[1], nets[2])


def test_a_dsa_or_dm_set_that_names_dc_means_its_methods_protocol():
    """Sets written before dsa and dm had protocols named dc for all three methods."""
    assert [legacy_name("dc", m) for m in ("dc", "dsa", "dm", None)] == ["dc", "dsa", "dm", "dc"]
    assert legacy_name("mtt", "dsa") == "mtt" and legacy_name("dsa", "dsa") == "dsa"


def test_datm_and_mtt_train_the_same_network_on_sets_of_at_most_128_images():
    """Their only difference is the batch (128 vs 256): a set of 100 images (digits at IPC 10) is one batch in both,
    so a DATM set scores the same under either protocol; at 129+ images the batches, and the networks, differ."""
    raw = load_dataset("digits")
    for n, same in ((100, True), (200, False)):
        train = (raw.train_images[:n], raw.train_labels[:n])
        nets = [flatten_params(train_model(*MLP, train, 0.01, get_protocol(name, epochs=2), seed=1))
                for name in ("mtt", "datm")]
        assert torch.equal(*nets) is same


@pytest.mark.parametrize("name", list_protocols())
def test_small_epochs_train_at_the_given_lr_or_are_refused_with_the_smallest_valid_count(name):
    """A schedule whose decay falls before the first epoch would train every epoch at lr x factor while the record
    says lr: such an epoch count is refused, naming the smallest one that works; every other one starts at lr."""
    for epochs in range(1, 5):
        try:
            protocol = get_protocol(name, epochs=epochs)
        except DDError as e:
            smallest = int(str(e).split("--epochs ")[1].split()[0])
            assert epochs < smallest and f"epochs {epochs}" in str(e)
            assert get_protocol(name, epochs=smallest).schedule(0.01).lr_at(0) == 0.01
            continue
        assert protocol.schedule(0.01).lr_at(0) == 0.01 and protocol.decay_epoch >= 0


def test_dd0_with_one_epoch_is_refused_and_two_decay_after_the_first():
    with pytest.raises(DDError, match=r"dd0 with epochs 1 would decay the lr after epoch -1.*pass --epochs 2 or more"):
        get_protocol("dd0", epochs=1)
    assert [get_protocol("dd0", epochs=2).schedule(0.01).lr_at(e) for e in range(2)] == pytest.approx([0.01, 0.001])
    with pytest.raises(DDError, match="set decay_after >= 0"):
        get_protocol("mtt", decay_after=-1)
