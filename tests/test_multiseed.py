"""dd.multiseed: each batched seed follows its sequential run (weights, accuracy); the fallback; errors."""

import pytest
import torch
from torch import nn

import dd.multiseed as multiseed
from dd.data import load_dataset
from dd.errors import DDError
from dd.functional import flatten_params
from dd.models import create_model
from dd.multiseed import can_batch, train_and_test_seeds, train_seeds
from dd.training import Protocol, train_and_test, train_model

# mtt with 4 epochs: 5 run, lr x0.1 and a fresh optimiser after epoch 3 (momentum reset); each epoch has
# 3 batches (the last one ragged: 40 = 16 + 16 + 8), full DSA
PROTOCOL = Protocol(epochs=4, batch_size=16)
ARGS = ("ConvNetW32", 1, 10, (8, 8))


@pytest.fixture(scope="module")
def digits():
    raw = load_dataset("digits")
    return (raw.train_images[:40], raw.train_labels[:40]), (raw.test_images[:200], raw.test_labels[:200])


@pytest.fixture
def no_fallback(monkeypatch):
    """Fail if dd.multiseed trains a seed on its own, so the batched path is what gets checked."""
    def sequential(*args, **kwargs):
        raise AssertionError("fell back to sequential training")
    monkeypatch.setattr(multiseed, "train_model", sequential)


def assert_follows_sequential(models, seeds, train, atol=1e-6):
    for model, seed in zip(models, seeds, strict=True):
        alone = train_model(*ARGS, train, 0.01, PROTOCOL, seed)
        assert torch.allclose(flatten_params(model), flatten_params(alone), rtol=0, atol=atol)


def test_one_batched_seed_equals_its_sequential_run(digits, no_fallback):
    train, test = digits
    (model,) = train_seeds(*ARGS, train, 0.01, PROTOCOL, [3])
    start = flatten_params(create_model(*ARGS, seed=3))
    assert (flatten_params(model) - start).abs().max() > 1e-2  # it trained
    assert_follows_sequential([model], [3], train)
    assert train_and_test_seeds(*ARGS, train, test, 0.01, PROTOCOL, [3]) == [
        train_and_test(*ARGS, train, test, 0.01, PROTOCOL, seed=3)]


def test_several_batched_seeds_each_equal_their_sequential_run(digits, no_fallback):
    train, test = digits
    seeds = [0, 1, 7]
    models = train_seeds(*ARGS, train, 0.01, PROTOCOL, seeds)
    assert_follows_sequential(models, seeds, train)
    assert not torch.allclose(flatten_params(models[0]), flatten_params(models[1]))
    accuracies = [train_and_test(*ARGS, train, test, 0.01, PROTOCOL, seed=s) for s in seeds]
    assert train_and_test_seeds(*ARGS, train, test, 0.01, PROTOCOL, seeds) == accuracies


def test_soft_labels_batched(digits, no_fallback):
    (images, labels), _ = digits
    noise = torch.rand(40, 10, generator=torch.Generator().manual_seed(0))
    soft = 3.0 * nn.functional.one_hot(labels, 10).float() + noise
    models = train_seeds(*ARGS, (images, soft), 0.01, PROTOCOL, [0, 1])
    assert_follows_sequential(models, [0, 1], (images, soft))


def test_batchnorm_falls_back_to_the_sequential_runs(digits):
    train, _ = digits
    models = train_seeds("ConvNetBN", 1, 10, (8, 8), train, 0.01, Protocol(epochs=2, batch_size=16), [0, 1])
    for model, seed in zip(models, [0, 1], strict=True):
        alone = train_model("ConvNetBN", 1, 10, (8, 8), train, 0.01, Protocol(epochs=2, batch_size=16), seed)
        for a, b in zip(model.state_dict().values(), alone.state_dict().values(), strict=True):
            assert torch.equal(a, b)


def test_can_batch_rule():
    assert can_batch(create_model("ConvNet", 1, 10, (8, 8)))
    assert can_batch(create_model("MLP", 1, 10, (8, 8)))
    assert not can_batch(create_model("ConvNetBN", 1, 10, (8, 8)))  # running statistics
    assert not can_batch(nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 10)))


def test_unbatched_request_runs_sequentially(digits, monkeypatch):
    train, _ = digits
    calls = []
    monkeypatch.setattr(multiseed, "train_model", lambda *args: calls.append(args[7]) or nn.Identity())
    train_seeds(*ARGS, train, 0.01, PROTOCOL, [4, 5], batched=False)
    assert calls == [4, 5]


def test_no_seeds_is_an_error(digits):
    train, test = digits
    with pytest.raises(DDError, match="no seeds"):
        train_and_test_seeds(*ARGS, train, test, 0.01, PROTOCOL, [])


def epoch_counts(err: str, desc: str) -> list[str]:
    """The ``done/total`` of every redraw of the epoch bar labelled ``desc`` in captured stderr."""
    return [part.split("|")[2].split()[0] for part in err.replace("\r", "\n").split("\n") if part.startswith(desc)]


@pytest.mark.parametrize("batched", [False, True])
def test_a_long_training_reports_its_epochs(batched, digits, capsys, monkeypatch):
    import dd.training as training

    monkeypatch.setattr(training, "PROGRESS_DELAY_S", 0.0)  # every training counts as long here
    monkeypatch.setattr(training, "PROGRESS_EVERY_S", 0.0)
    train, _ = digits
    train_seeds(*ARGS, train, 0.01, PROTOCOL, [0, 1], batched=batched)
    err = capsys.readouterr().err
    if batched:
        assert epoch_counts(err, "ConvNetW32 seeds 0, 1:") == [f"{n}/5" for n in range(6)]
    else:
        for seed in (0, 1):
            assert epoch_counts(err, f"ConvNetW32 seed {seed}:") == [f"{n}/5" for n in range(6)]


def test_a_short_training_prints_no_bar(digits, capsys):
    train, _ = digits
    train_model(*ARGS, train, 0.01, PROTOCOL, 0)  # far shorter than PROGRESS_DELAY_S
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("batched", [True, False])
def test_final_accuracies_skip_the_periodic_tests_and_equal_the_scored_run(digits, batched, monkeypatch):
    """AST's protocol tests every k epochs for a maximum reported beside; a caller that wants the final accuracy
    only (in-run validation) gets the same number without those tests."""
    train, test = digits
    periodic = Protocol(epochs=4, batch_size=16, max_over_test_every=2)
    scores = multiseed.train_and_score_seeds(*ARGS, train, test, 0.01, periodic, [0, 1], batched=batched)
    assert all(s.max_over_epochs is not None for s in scores)
    monkeypatch.setattr(multiseed.PeriodicTests, "record", lambda self, model: pytest.fail("a periodic test ran"))
    finals = train_and_test_seeds(*ARGS, train, test, 0.01, periodic, [0, 1], batched=batched)
    assert finals == [s.final for s in scores]
